"""Run every benchmark, merge the figures into ``results.json``, draw the plots, print a table.

The three parts are separate scripts in this folder (``iteration_cost.py``,
``gradient_fidelity.py``, ``attack_quality.py``), each run in its own process;
``sdo-adv bench`` is a thin wrapper around this file.

    python benchmarks/run_all.py [--quick] [--device cpu|cuda] [--out DIR]
    python benchmarks/run_all.py --collect benchmarks/results   # results.json, plots and table from committed parts

``--collect DIR`` runs nothing: it reads the parts committed in DIR
(``iteration_cost_embedded_cpu.json``, ``gradient_fidelity_cpu.json`` and every
``attack_quality*_cpu.json``, the first file holding a configuration winning).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from sdo_adv.runs.figures import save_figure
from sdo_adv.runs.report import versions

HERE = Path(__file__).resolve().parent
ESTIMATORS = "full,checkpoint,truncated:1,truncated:5,skip,sdo:first,sdo:last,sdo:random"
FULL = {
    "iteration_cost": ["--estimators", ESTIMATORS, "--steps", "10,20,50,100,200", "--batch", "8",
                       "--repeats", "5", "--embedded"],
    "gradient_fidelity": ["--n", "8", "--depths", "0.25,0.5,0.75,1.0"],
    "attack_quality": ["--configs", "sdo:first,sdo:last,sdo:random,skip,truncated:1,truncated:5,full,checkpoint,"
                       "sdo@picard:1,sdo@picard:2,sdo@picard:4,sdo@picard-clean:1", "--n", "200", "--batch", "50"],
}
QUICK = {
    "iteration_cost": ["--estimators", "sdo,full", "--steps", "10", "--batch", "2", "--repeats", "2",
                       "--embedded"],
    "gradient_fidelity": ["--n", "2", "--depths", "0.25", "--estimators", "full,skip,sdo:first"],
    "attack_quality": ["--configs", "sdo,sdo@picard:1", "--n", "4", "--batch", "4", "--steps", "3"],
}


def save(fig, path: Path) -> str:
    """Write and close a figure; return its file name."""

    fig.tight_layout()
    save_figure(fig, path)
    return path.name


def plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    cost = [r for r in results["iteration_cost"]["rows"] if "failed" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for est in dict.fromkeys(r["estimator"] for r in cost):
        rows = [r for r in cost if r["estimator"] == est]
        axes[0].plot([r["T"] for r in rows], [r["ratio_median"] for r in rows], "o-", label=est)
        axes[1].plot([r["T"] for r in rows], [r["extra_peak_bytes"] / 2**20 for r in rows], "o-", label=est)
    axes[0].set(xlabel="sampling steps T", ylabel="iteration / no-grad sampling", title="time")
    axes[1].set(xlabel="sampling steps T", ylabel="extra peak memory (MiB)", title="memory", yscale="symlog")
    axes[0].legend(fontsize=7)
    written.append(save(fig, out / "iteration_cost.png"))

    quality = results["attack_quality"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax in axes:  # more configurations than the default 10 colours
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for row in quality:
        curve = row["success_after_iteration"]
        axes[0].plot(range(len(curve)), curve, label=row["config"])
        axes[1].plot(row["seconds_at_iteration"], curve, label=row["config"])
    axes[0].set(xlabel="iteration", ylabel="success rate", title="success per iteration")
    axes[1].set(xlabel="wall-clock seconds", ylabel="success rate", title="success per second")
    axes[0].legend(fontsize=7)
    written.append(save(fig, out / "attack_quality.png"))

    fidelity = results["gradient_fidelity"]["rows"]
    fig, ax = plt.subplots(figsize=(5, 4))
    for est in dict.fromkeys(r["estimator"] for r in fidelity):
        rows = [r for r in fidelity if r["estimator"] == est]
        ax.plot([r["depth"] for r in rows], [r["latent"]["cosine"] for r in rows], "o-", label=est)
    ax.set(xlabel="inversion depth", ylabel="cosine to exact gradient (latent)", title="gradient fidelity")
    ax.legend(fontsize=7)
    written.append(save(fig, out / "gradient_fidelity.png"))
    return written


def table(results: dict) -> str:
    lines = ["iteration cost (median iteration / no-grad sampling, extra peak MiB):"]
    for r in results["iteration_cost"]["rows"]:
        if "failed" in r:
            lines.append(f"  T={r['T']:4d} {r['estimator']:12s} failed: {r['failed']}")
            continue
        lines.append(f"  T={r['T']:4d} {r['estimator']:12s} {r['ratio_median']:.3f} "
                     f"[{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]  {r['extra_peak_bytes'] / 2**20:9.1f} MiB")
    lines.append("gradient fidelity (latent cosine to exact):")
    for r in results["gradient_fidelity"]["rows"]:
        lines.append(f"  depth {r['depth']:.2f} {r['estimator']:12s} {r['latent']['cosine']:.4f}")
    lines.append("attack quality (final success, iterations / seconds to 90%, network calls / images per iteration):")
    for r in results["attack_quality"]["rows"]:
        lines.append(f"  {r['config']:16s} {r['final_success']:.3f}  {r['iterations_to_90']}  "
                     f"{r['seconds_to_90'] if r['seconds_to_90'] is None else round(r['seconds_to_90'], 1)}  "
                     + (f"{r['sampler_calls_per_iteration']:.1f} / {r['sampler_images_per_iteration']:.0f}"
                        if "sampler_calls_per_iteration" in r else "not counted"))
    return "\n".join(lines)


def collect(folder: Path) -> None:
    """Merge committed part results into ``results.json``, draw the plots, print the table."""
    results: dict = {"collected_from": folder.as_posix(), "versions": versions()}
    results["iteration_cost"] = json.loads((folder / "iteration_cost_embedded_cpu.json").read_text())
    results["gradient_fidelity"] = json.loads((folder / "gradient_fidelity_cpu.json").read_text())
    rows, sources = [], []
    for path in sorted(folder.glob("attack_quality*_cpu.json")):
        sources.append(path.name)
        rows += [r | {"source": path.name} for r in json.loads(path.read_text())["rows"]
                 if r["config"] not in {q["config"] for q in rows}]
    results["attack_quality"] = {"sources": sources, "rows": rows}
    results["plots"] = plots(results, folder)
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings, about a minute")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", type=Path, default=Path("bench"))
    p.add_argument("--collect", type=Path, default=None, help="build results from the parts in this folder")
    a = p.parse_args(argv)
    if a.collect:
        collect(a.collect)
        return
    a.out.mkdir(parents=True, exist_ok=True)
    settings = QUICK if a.quick else FULL
    results: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                 "cpu_count": os.cpu_count(), "python": platform.python_version(),
                                 "device": a.device},
                     "versions": versions(), "quick": a.quick}
    for name, args in settings.items():
        extra = ["--device", a.device] if name == "iteration_cost" else []
        part = a.out / f"{name}.json"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / f"{name}.py"), *args, *extra, "--out", str(part)], check=True)
        results[name] = json.loads(part.read_text()) | {"wall_s": time.perf_counter() - t0}
    results["plots"] = plots(results, a.out)
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"wrote {a.out / 'results.json'} and {', '.join(results['plots'])}")


if __name__ == "__main__":
    main()
