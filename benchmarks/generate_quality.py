"""Adversarial generation from class labels: success, judge agreement and Frechet distance per victim.

For each victim, ``--per-class`` samples of each digit class are drawn from seeded noise by the
embedded generator and attacked by :class:`sdo_adv.attacks.SDOGenerate`. Success is untargeted
and counted over the draws the victim reads as their class; the judge (never attacked, never
in any loss) must still read the intended class for a success to be natural (definitions in
:mod:`sdo_adv.judging`). Frechet distances are to the 1000 held-out digits of the seeded split
(``training/digits_data.py``, needs the ``train`` extra) in the 128-d penultimate features of
``sdo-adv:digits-guard`` (adversarially trained; never a victim, a judge or in a loss here):
of the successful adversarial images, and of the plain draws of the same seeds.

    python benchmarks/generate_quality.py --per-class 20 --out benchmarks/results/generate_quality_cpu.json

``--split report`` uses seeds 100000 + i (never used for tuning), ``--split tune`` seeds 1000 + i.
An attack is ``default`` (SDOGenerate's defaults) or ``key=value,...`` overriding them
(``num_inference_steps`` and ``solver`` set the generator's).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from natural_quality import JUDGE, VICTIMS, parse_attack, save
from sdo_adv import load_classifier, load_generator
from sdo_adv.attacks import AttackStep, SDOGenerate
from sdo_adv.frechet import frechet_distance, penultimate_features
from sdo_adv.judging import judge_predictions
from sdo_adv.runs.report import fmt

FEATURES = "sdo-adv:digits-guard"
SEEDS = {"report": 100_000, "tune": 1000}


def heldout_features() -> torch.Tensor:
    """Features of the 1000 held-out digits of the seeded split."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from digits_data import load_split, to_unit

    return penultimate_features(load_classifier(FEATURES).eval(), to_unit(load_split()["x_held"]))


def run(victim: str, spec: str, per_class: int, seed: int, batch: int, reference: torch.Tensor) -> dict:
    model, judge = load_classifier(victim).eval(), {JUDGE: load_classifier(JUDGE).eval()}
    kwargs, work = parse_attack(spec), [0]
    settings = {k: kwargs.pop(k) for k in ("num_inference_steps", "solver") if k in kwargs}

    def count(step: AttackStep) -> None:
        work[0] += step.network_images

    attack = SDOGenerate(model, load_generator("sdo-adv:digits", **settings), callback=count, **kwargs)
    labels = torch.arange(10 * per_class) % 10
    seeds = [seed + i for i in range(len(labels))]
    adv, draws, results, started = [], [], [], time.perf_counter()
    for i in range(0, len(labels), batch):
        adv.append(attack.generate(labels[i:i + batch], seeds[i:i + batch]))
        draws.append(attack.last_draws)
        results.append(attack.last_result)
    seconds = time.perf_counter() - started
    adv, draws = torch.cat(adv), torch.cat(draws)
    clean_pred = torch.cat([r.clean_pred for r in results])
    success = torch.cat([r.success for r in results])
    judged, judged_draws = judge_predictions(judge, adv)[JUDGE], judge_predictions(judge, draws)[JUDGE]
    natural = success & (judged == labels)
    correct = clean_pred == labels
    n_ok = int(success.sum())
    features = load_classifier(FEATURES).eval()
    fd = lambda x: frechet_distance(penultimate_features(features, x), reference) if len(x) > 1 else None  # noqa: E731
    fd_adv, fd_draws = fd(adv[success]), fd(draws[success])
    return {"victim": victim, "attack": spec, "n": len(labels), "clean_accuracy": correct.float().mean().item(),
            "judge_draw_accuracy": (judged_draws == labels).float().mean().item(),
            "success_rate": n_ok / max(1, int(correct.sum())),
            "judge_agreement": natural[success].float().mean().item() if n_ok else None,
            "natural_success_rate": int(natural.sum()) / max(1, int(correct.sum())),
            "mean_l2": (adv - draws).flatten(1).norm(dim=1)[success].mean().item() if n_ok else None,
            "frechet_adversarial": fd_adv, "frechet_draws": fd_draws,
            "frechet_ratio": fd_adv / fd_draws if fd_adv is not None else None,
            "frechet_all_draws": fd(draws), "seconds_per_image": seconds / len(labels),
            "network_images_per_image": work[0] / len(labels)}


def markdown(rows: list[dict]) -> str:
    pct = lambda v: fmt(None if v is None else 100 * v, ".1f")  # noqa: E731
    lines = ["| victim | attack | victim reads draws | success | judge agreement | natural success | mean L2 to draw "
             "| Frechet adv. / draws | UNet images / sample | s / sample |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['victim'].removeprefix('sdo-adv:')}` | `{r['attack']}` | {pct(r['clean_accuracy'])} "
                     f"| {pct(r['success_rate'])} | {pct(r['judge_agreement'])} | {pct(r['natural_success_rate'])} "
                     f"| {fmt(r['mean_l2'], '.2f')} | {fmt(r['frechet_adversarial'], '.2f')} / "
                     f"{fmt(r['frechet_draws'], '.2f')} ({fmt(r['frechet_ratio'], '.2f')}x) "
                     f"| {r['network_images_per_image']:.0f} | {r['seconds_per_image']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=tuple(SEEDS), default="report")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--victims", default=",".join(VICTIMS))
    p.add_argument("--attacks", default="default", help="semicolon-separated attacks")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--out", type=Path)
    p.add_argument("--markdown", action="store_true", help="print --out's rows as a markdown table and exit")
    a = p.parse_args()
    if a.markdown:
        print(markdown(json.loads(a.out.read_text())["rows"]))
        return
    torch.set_num_threads(a.threads)
    settings = {"split": a.split, "per_class": a.per_class, "batch": a.batch, "judge": JUDGE, "features": FEATURES}
    rows = []
    if a.out and a.out.exists() and json.loads(a.out.read_text()).get("settings") == settings:
        rows = json.loads(a.out.read_text())["rows"]
    reference = heldout_features()
    for victim in a.victims.split(","):
        for spec in a.attacks.split(";"):
            if any(r["victim"] == victim and r["attack"] == spec for r in rows):
                continue
            row = {**run(victim, spec, a.per_class, SEEDS[a.split], a.batch, reference), "command": " ".join(sys.argv)}
            rows.append(row)
            print(f"{victim:34s} {spec:30s} success {row['success_rate']:.3f} judge keeps "
                  f"{fmt(row['judge_agreement'], '.3f')} Frechet {fmt(row['frechet_adversarial'], '.2f')} / "
                  f"{fmt(row['frechet_draws'], '.2f')} {row['seconds_per_image']:.2f} s/img", flush=True)
            if a.out:
                rows = save(a.out, settings, row, a.threads)


if __name__ == "__main__":
    main()
