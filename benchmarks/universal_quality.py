"""Universal adversarial changes (UniversalSDO) per victim: fooling rate on fresh seeds, judge
agreement, Frechet distance, sampling speed, transfer to the other victims; a trade-off over
the size of the change.

For each victim and each ``--bounds`` value, UniversalSDO learns one change per digit class
(``--train-steps`` steps, training trajectories of its own seeds), then samples
``--per-class`` fresh seeds per class never used in training (``100000 + i``, the seeds of
``generate_quality.py``). Fooling is counted over the plain draws the victim reads as their
class; the judge (never attacked, never in the loss) must still read the class; Frechet
distances as in ``generate_quality.py``. Transfer: the share of the victim's successes that
each other embedded victim also misreads.

    python benchmarks/universal_quality.py --victims sdo-adv:digits-mlp --bounds 0.25,0.5,1.0 \
        --out benchmarks/results/universal_quality_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from generate_quality import FEATURES, heldout_features
from natural_quality import JUDGE, VICTIMS, save
from sdo_adv import load_classifier
from sdo_adv.attacks import UniversalSDO
from sdo_adv.frechet import frechet_distance, penultimate_features
from sdo_adv.judging import attack_success, judge_predictions
from sdo_adv.runs.report import fmt

SEED = 100_000


def fresh_samples(model: torch.nn.Module, universal: UniversalSDO, per_class: int, first_seed: int,
                  judge: torch.nn.Module, batch: int = 100) -> dict[str, Any]:
    """``per_class`` samples of each of ``universal``'s classes from seeds ``first_seed + i``
    (never training seeds): labels, the adversarial and plain draws ([0, 1], on the CPU), which
    plain draws the victim reads as their class (``correct``), which of those the change fools
    (``success``), which successes the judge still reads as the class (``natural``), and the
    sampling's ``seconds``."""
    labels = torch.tensor(universal.classes).repeat_interleave(per_class)
    seeds = [first_seed + i for i in range(len(labels))]
    started, adv, draws = time.perf_counter(), [], []
    for i in range(0, len(labels), batch):
        x, d = universal.sample(labels[i:i + batch], seeds[i:i + batch])
        adv.append(x.cpu())
        draws.append(d.cpu())
    seconds = time.perf_counter() - started
    adv, draws = torch.cat(adv), torch.cat(draws)
    device = next(model.parameters()).device
    with torch.no_grad():
        before, after = model(draws.to(device)).argmax(1).cpu(), model(adv.to(device)).argmax(1).cpu()
    success = attack_success(before, after, labels)
    return {"labels": labels, "adv": adv, "draws": draws, "correct": before == labels, "success": success,
            "natural": success & (judge_predictions({JUDGE: judge}, adv)[JUDGE] == labels),
            "seconds": seconds}


def figures(fresh: dict[str, Any]) -> dict[str, float | None]:
    """:func:`fresh_samples`' figures: the plain draws the victim reads as their class
    (``clean_accuracy``), the share of those the change fools (``fooling_rate``), the share of the
    fooled the judge still reads as the class (``judge_agreement``), natural fooling over the
    correct draws, and the mean L2 of the fooled to their plain draws."""
    correct, success, natural = fresh["correct"], fresh["success"], fresh["natural"]
    fooled = bool(success.any())
    return {"clean_accuracy": correct.float().mean().item(),
            "fooling_rate": (success.sum() / correct.sum().clamp(min=1)).item(),
            "judge_agreement": natural[success].float().mean().item() if fooled else None,
            "natural_fooling_rate": (natural.sum() / correct.sum().clamp(min=1)).item(),
            "mean_l2": (fresh["adv"] - fresh["draws"]).flatten(1).norm(dim=1)[success].mean().item() if fooled else None}


def run(victim: str, bound: float, a: argparse.Namespace, reference: torch.Tensor) -> dict:
    model, judge = load_classifier(victim).eval(), load_classifier(JUDGE).eval()
    universal = UniversalSDO(model, "sdo-adv:digits", range(10), variable=a.variable, depth=a.depth, bound=bound,
                             batch_size=a.batch_size, pool=a.pool, fidelity=a.fidelity, lr=a.lr)
    started = time.perf_counter()
    losses = universal.train(a.train_steps)
    train_seconds = time.perf_counter() - started
    fresh = fresh_samples(model, universal, a.per_class, SEED, judge)
    labels, adv, success = fresh["labels"], fresh["adv"], fresh["success"]
    features = load_classifier(FEATURES).eval()
    fd = lambda x: frechet_distance(penultimate_features(features, x), reference) if len(x) > 1 else None  # noqa: E731
    transfer = {}
    for other in VICTIMS:
        if other != victim and success.any():
            with torch.no_grad():
                transfer[other] = (load_classifier(other).eval()(adv[success]).argmax(1) != labels[success]).float().mean().item()
    return {"victim": victim, "attack": f"{a.variable} bound={bound}", "bound": bound, "n": len(labels),
            **figures(fresh),
            "frechet_adversarial": fd(adv), "frechet_draws": fd(fresh["draws"]), "transfer": transfer,
            "train_seconds": train_seconds, "loss_first_last": [losses[0], sum(losses[-5:]) / len(losses[-5:])],
            "images_per_second": len(labels) / fresh["seconds"],
            "settings": {**universal.settings, "train_steps": a.train_steps}}


def markdown(rows: list[dict]) -> str:
    pct = lambda v: fmt(None if v is None else 100 * v, ".1f")  # noqa: E731
    lines = ["| victim | bound | fooling rate | judge agreement | natural fooling | mean L2 to draw "
             "| Frechet adv. / draws | train s | images / s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['victim'].removeprefix('sdo-adv:')}` | {r['bound']} | {pct(r['fooling_rate'])} "
                     f"| {pct(r['judge_agreement'])} | {pct(r['natural_fooling_rate'])} | {fmt(r['mean_l2'], '.2f')} "
                     f"| {fmt(r['frechet_adversarial'], '.2f')} / {fmt(r['frechet_draws'], '.2f')} "
                     f"| {r['train_seconds']:.0f} | {r['images_per_second']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Fooling rate and judge agreement against the size of the change, one colour per victim."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, victim in enumerate(sorted({r["victim"] for r in rows})):
        mine = sorted((r for r in rows if r["victim"] == victim), key=lambda r: r["bound"])
        bounds = [r["bound"] for r in mine]
        ax.plot(bounds, [r["fooling_rate"] for r in mine], "o-", color=f"C{k}", label=f"{victim} fooling")
        ax.plot(bounds, [r["judge_agreement"] if r["judge_agreement"] is not None else float("nan") for r in mine],
                "s--", color=f"C{k}", label=f"{victim} judge agreement")
    ax.set(xlabel="bound (size of the change)", ylabel="share", ylim=(0, 1.02), xscale="log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victims", default=",".join(VICTIMS))
    p.add_argument("--bounds", default="0.35")
    p.add_argument("--variable", default="both")
    p.add_argument("--depth", type=float, default=0.3)
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--pool", type=int, default=16)
    p.add_argument("--fidelity", type=float, default=10.0)
    p.add_argument("--lr", type=float, default=None, help="default: UniversalSDO's for the variable")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--out", type=Path)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--plot", type=Path, help="write the trade-off figure of --out's rows here and exit")
    a = p.parse_args()
    if a.markdown or a.plot:
        rows = json.loads(a.out.read_text())["rows"]
        print(markdown(rows)) if a.markdown else plot(rows, a.plot)
        return
    torch.set_num_threads(a.threads)
    settings = {"per_class": a.per_class, "judge": JUDGE, "features": FEATURES}
    rows = json.loads(a.out.read_text())["rows"] if a.out and a.out.exists() and \
        json.loads(a.out.read_text()).get("settings") == settings else []
    reference = heldout_features()
    for victim in a.victims.split(","):
        for bound in (float(b) for b in a.bounds.split(",")):
            if any((r["victim"], r["attack"]) == (victim, f"{a.variable} bound={bound}") for r in rows):
                continue
            row = {**run(victim, bound, a, reference), "command": " ".join(sys.argv)}
            rows.append(row)
            print(f"{victim:34s} {row['attack']:20s} fooling {row['fooling_rate']:.3f} judge keeps "
                  f"{fmt(row['judge_agreement'], '.3f')} train {row['train_seconds']:.0f}s "
                  f"{row['images_per_second']:.1f} img/s", flush=True)
            if a.out:
                rows = save(a.out, settings, row, a.threads)


if __name__ == "__main__":
    main()
