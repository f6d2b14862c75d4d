"""Universal changes against per-image generation at equal wall-clock, from measured rows.

Reads the rows of ``universal_quality.py`` (training seconds, sampling images per second,
natural fooling rate over the draws the victim reads correctly, clean accuracy) and of
``generate_quality.py`` (seconds per image, natural success rate over the correctly read
draws, clean accuracy) for the same victims, and prints, per victim, the natural adversarial
digits (fooled, and kept by the judge) each way yields per second of all draws, the
wall-clock after which the universal change (training included) has produced more of them,
and the counts at a few time budgets. Nothing is
re-measured: every figure is a measured row's, on the machine those files name.

    python benchmarks/universal_vs_generate.py \
        --universal benchmarks/results/universal_quality_cpu.json \
        --generate benchmarks/results/generate_quality_cpu.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BUDGETS = (600, 1800, 3600)  # seconds


def rates(universal: dict, generate: dict) -> dict:
    """Natural adversarial digits per second: universal (after training) and per-image."""
    u = universal["images_per_second"] * universal["natural_fooling_rate"] * universal["clean_accuracy"]
    g = generate["natural_success_rate"] * generate["clean_accuracy"] / generate["seconds_per_image"]
    break_even = universal["train_seconds"] * u / (u - g) if u > g else None
    counts = {t: (max(0.0, t - universal["train_seconds"]) * u, t * g) for t in BUDGETS}
    return {"universal_per_s": u, "generate_per_s": g, "break_even_s": break_even, "counts": counts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--universal", type=Path, default=Path("benchmarks/results/universal_quality_cpu.json"))
    p.add_argument("--generate", type=Path, default=Path("benchmarks/results/generate_quality_cpu.json"))
    a = p.parse_args()
    universal = {r["victim"]: r for r in json.loads(a.universal.read_text())["rows"]}
    generate = {r["victim"]: r for r in json.loads(a.generate.read_text())["rows"] if r["attack"] == "default"}
    head = " | ".join(f"{t // 60} min: universal / generate" for t in BUDGETS)
    print(f"| victim | training s | universal natural / s | generate natural / s | break-even | {head} |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(BUDGETS))
    for victim in sorted(set(universal) & set(generate)):
        r = rates(universal[victim], generate[victim])
        even = "never" if r["break_even_s"] is None else f"{r['break_even_s'] / 60:.0f} min"
        cells = " | ".join(f"{u:.0f} / {g:.0f}" for u, g in r["counts"].values())
        print(f"| `{victim.removeprefix('sdo-adv:')}` | {universal[victim]['train_seconds']:.0f} "
              f"| {r['universal_per_s']:.3f} | {r['generate_per_s']:.3f} | {even} | {cells} |")


if __name__ == "__main__":
    main()
