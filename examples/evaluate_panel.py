"""Robustness evaluation: attack a set with SDO, then score it against a panel of classifiers.

Attacks held-out digits (or ``--input``) with :class:`sdo_adv.runs.AttackRun` into
``OUT/attack``, then scores the adversarial PNGs with :func:`sdo_adv.runs.evaluate_run`
against a panel: the three embedded digit classifiers, timm models with their pretrained
weights (default ``resnet18``) and RobustBench models (default ``cifar10/Linf/Wong2020Fast``).
A model whose weights are absent (timm weights not in the Hugging Face cache while offline, a
RobustBench checkpoint not in ``--robustbench-dir``) is skipped: one line says why, and its
record in evaluation.json carries the reason. On digits, the ImageNet and CIFAR-10 entries
only show the panel at work (their classes are not digits); give ``--input``,
``--classifier`` and ``--generator`` of one domain for a real evaluation.

Writes ``OUT/attack/`` (PNGs, manifest.jsonl, report.md, grid.png, run.json) and
``OUT/evaluation.json``, ``evaluation.md``, ``evaluation.png``; re-running with the same
settings resumes the attack. On 2 CPU cores ``--quick`` (4 digits, 2 iterations) takes about
15 seconds; the defaults (32 digits, up to 50 iterations) take several minutes.

    python examples/evaluate_panel.py --quick --out panel
    python examples/evaluate_panel.py --timm resnet18,convnext_tiny --robustbench-dir ./models
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from sdo_adv.data import load_digits
from sdo_adv.runs import AttackRun, AttackRunConfig, RunError, evaluate_run, model_line

EMBEDDED = ("sdo-adv:digits-resnet18", "sdo-adv:digits-test_efficientnet", "sdo-adv:digits-resnet18-pgd")


def write_digits(path: Path, n: int) -> Path:
    """The first ``n`` shipped held-out digits as an ``.npz`` with ``images`` (uint8) and ``labels``."""
    images, labels = load_digits(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images[:, 0].mul(255).round().to(torch.uint8).numpy(), labels=labels.numpy())
    return path


def names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 digits, 2 attack iterations")
    p.add_argument("--out", type=Path, default=Path("evaluate_panel"), help="output folder")
    p.add_argument("--input", help="ImageFolder or .npz to attack (default: the shipped held-out digits)")
    p.add_argument("--classifier", default="sdo-adv:digits-resnet18", help="classifier to attack")
    p.add_argument("--generator", default="sdo-adv:digits", help="diffusion model spec")
    p.add_argument("--n", type=int, default=32, help="held-out digits to attack (without --input)")
    p.add_argument("--steps", type=int, default=50, help="attack iterations")
    p.add_argument("--timm", default="resnet18", help="comma-separated timm models, with pretrained weights")
    p.add_argument("--robustbench", default="cifar10/Linf/Wong2020Fast",
                   help="comma-separated RobustBench models as <dataset>/<threat model>/<name>")
    p.add_argument("--robustbench-dir", default="./models", help="where RobustBench checkpoints are looked up")
    args = p.parse_args()
    n, steps = (4, 2) if args.quick else (args.n, args.steps)

    data = args.input or str(write_digits(args.out / "digits.npz", n))
    panel = [*EMBEDDED, *(f"timm:{m}" for m in names(args.timm)),
             *(f"robustbench:{m}" for m in names(args.robustbench))]
    try:
        run = AttackRun(AttackRunConfig(args.classifier, args.generator, data, str(args.out / "attack"), steps=steps))
        s = run.execute()
        print(f"attack: success {s['success_rate']:.0%} of {s['n']} images against {args.classifier}")
        result = evaluate_run(run.out, panel, args.robustbench_dir, args.out)
    except RunError as err:
        raise SystemExit(f"error: {err}") from err
    for record in result["models"]:
        print(model_line(record))
    print(f"wrote {args.out}/evaluation.json, evaluation.md and evaluation.png; attack outputs in {run.out}")


if __name__ == "__main__":
    main()
