"""The end-to-end demo on the embedded models: attack held-out digits, report, draw a grid."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..attacks import SDOAttack
from ..data import load_digits
from ..files import atomic_write, write_text
from ..judging import judge_agreement, judge_predictions, natural_success
from ..loading import load_classifier, load_generator
from .figures import save_grid

GENERATOR = "sdo-adv:digits"
CLASSIFIER = "sdo-adv:digits-resnet18"
JUDGES = ("sdo-adv:digits-judge", "sdo-adv:digits-resnet18-pgd")


def run_demo(out: str | Path = "demo", n: int = 16, seed: int = 0, progress: bool = True,
             **attack_kwargs: Any) -> dict[str, Any]:
    """Attack the first ``n`` shipped held-out digits against the standard embedded classifier
    with SDOAttack's defaults (overridable by ``attack_kwargs``), judged by the embedded judges
    (never attacked, never in the loss); write ``grid.png``, ``report.json`` and
    ``adversarial.npz`` (float32 images, labels) to ``out``; return the report. Its figures
    have the keys and definitions of ``summary.json`` of ``sdo-adv attack`` (``n``,
    ``clean_accuracy``, ``success_rate``, ``judge_agreement``, ``natural_success_rate``,
    ``mean_l2``, ``mean_linf``, ``mean_ssim``, ``mean_psnr``; :mod:`sdo_adv.judging`), beside
    the demo's own (settings, per-judge agreement, seconds, items)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    images, labels = load_digits(n)
    classifier = load_classifier(CLASSIFIER)
    judges = {spec: load_classifier(spec) for spec in JUDGES}
    attack = SDOAttack(classifier, load_generator(GENERATOR), progress=progress, **attack_kwargs)
    start = time.perf_counter()
    adv = attack(images, labels)
    seconds = time.perf_counter() - start
    r = attack.last_result
    judged = judge_predictions(judges, adv)
    correct, ok = r.clean_pred == labels, r.success
    natural = natural_success(ok, labels, judged)
    per_judge = {spec: (pred == labels)[ok].float().mean().item() if ok.any() else None
                 for spec, pred in judged.items()}
    report = {
        "generator": GENERATOR, "classifier": CLASSIFIER, "judges": list(JUDGES),
        "n": n, "seed": seed, "attack": {k: v for k, v in attack_kwargs.items()},
        "estimator": attack.estimator, "steps": attack.steps, "depth": attack.depth, "lr": attack.lr,
        "fidelity": attack.fidelity, "fidelity_norm": attack.fidelity_norm, "fidelity_halflife": attack.fidelity_halflife,
        "bystanders": [getattr(b, "name", type(b).__name__) for b in attack.bystanders],
        "clean_accuracy": correct.float().mean().item(),
        "success_rate": ok.sum().item() / correct.sum().item() if correct.any() else None,
        "judge_agreement": judge_agreement(ok, labels, judged),
        "natural_success_rate": natural.sum().item() / correct.sum().item() if correct.any() else None,
        "judge_keeps_label": per_judge,
        "definitions": "sdo_adv.judging: success over the clean-correct digits (untargeted); judge agreement = "
                       "share of successes that every judge still reads as the true label",
        "mean_l2": metrics.l2(adv, images)[ok].mean().item() if ok.any() else None,
        "mean_ssim": metrics.ssim(adv, images)[ok].mean().item() if ok.any() else None,
        "mean_linf": metrics.linf(adv, images)[ok].mean().item() if ok.any() else None,
        "mean_psnr": metrics.psnr(adv, images)[ok].mean().item() if ok.any() else None,
        "mean_iterations": r.iterations[ok].float().mean().item() if ok.any() else None,
        "reconstruction_mse": r.reconstruction_error.mean().item(),
        "seconds_total": seconds, "seconds_per_image": seconds / n,
        "items": [{"label": int(labels[i]), "clean_pred": int(r.clean_pred[i]), "adv_pred": int(r.adv_pred[i]),
                   "judge_preds": {spec: int(pred[i]) for spec, pred in judged.items()},
                   "success": bool(ok[i]), "natural": bool(natural[i]),
                   "iterations": int(r.iterations[i]), "l2": float(r.l2[i])} for i in range(n)],
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
    }
    save_grid(images, adv, labels.tolist(), r.adv_pred.tolist(), out / "grid.png",
              title=f"SDOAttack on {CLASSIFIER}: {report['success_rate'] or 0:.0%} success, "
                    f"the judges keep the label on {report['judge_agreement'] or 0:.0%}")
    with atomic_write(out / "adversarial.npz") as f:
        np.savez_compressed(f, images=adv.numpy(), labels=labels.numpy())
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report
