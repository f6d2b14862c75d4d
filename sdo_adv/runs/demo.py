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
from ..loading import load_classifier, load_generator
from .figures import save_grid
from .io import atomic_write, write_text

GENERATOR = "sdo-adv:digits"
CLASSIFIER = "sdo-adv:digits-resnet18"
ROBUST_CLASSIFIER = "sdo-adv:digits-resnet18-pgd"


def run_demo(out: str | Path = "demo", n: int = 16, seed: int = 0, progress: bool = True,
             **attack_kwargs: Any) -> dict[str, Any]:
    """Attack the first ``n`` shipped held-out digits against the standard embedded classifier
    with SDOAttack's defaults (overridable by ``attack_kwargs``); write ``grid.png``,
    ``report.json`` and ``adversarial.npz`` (float32 images, labels) to ``out``; return the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    images, labels = load_digits(n)
    classifier = load_classifier(CLASSIFIER)
    robust = load_classifier(ROBUST_CLASSIFIER)
    attack = SDOAttack(classifier, load_generator(GENERATOR), progress=progress, **attack_kwargs)
    start = time.perf_counter()
    adv = attack(images, labels)
    seconds = time.perf_counter() - start
    r = attack.last_result
    with torch.no_grad():
        robust_pred = robust(adv).argmax(1)
    correct = r.clean_pred == labels
    fooled = r.success & correct
    report = {
        "generator": GENERATOR, "classifier": CLASSIFIER, "robust_classifier": ROBUST_CLASSIFIER,
        "n_images": n, "seed": seed, "attack": {k: v for k, v in attack_kwargs.items()},
        "estimator": attack.estimator.name, "steps": attack.steps, "depth": attack.depth,
        "clean_accuracy": correct.float().mean().item(),
        "success_rate": fooled.sum().item() / max(1, correct.sum().item()),
        "success_rate_definition": "fooled / clean-correct images, untargeted",
        "mean_l2": metrics.l2(adv, images)[fooled].mean().item() if fooled.any() else None,
        "mean_ssim": metrics.ssim(adv, images)[fooled].mean().item() if fooled.any() else None,
        "mean_psnr_db": metrics.psnr(adv, images)[fooled].mean().item() if fooled.any() else None,
        "mean_iterations": r.iterations[fooled].float().mean().item() if fooled.any() else None,
        "robust_keeps_label": (robust_pred == labels)[fooled].float().mean().item() if fooled.any() else None,
        "robust_keeps_label_definition": "share of successful adversarial digits that the never-attacked "
                                         "adversarially trained classifier still reads as the true label",
        "reconstruction_mse": r.reconstruction_error.mean().item(),
        "seconds_total": seconds, "seconds_per_image": seconds / n,
        "items": [{"label": int(labels[i]), "clean_pred": int(r.clean_pred[i]), "adv_pred": int(r.adv_pred[i]),
                   "robust_pred": int(robust_pred[i]), "success": bool(r.success[i]),
                   "iterations": int(r.iterations[i]), "l2": float(r.l2[i])} for i in range(n)],
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
    }
    save_grid(images, adv, labels.tolist(), r.adv_pred.tolist(), out / "grid.png",
              title=f"SDOAttack on {CLASSIFIER}: {report['success_rate']:.0%} success, "
                    f"robust classifier keeps the label for {report['robust_keeps_label'] or 0:.0%}")
    with atomic_write(out / "adversarial.npz") as f:
        np.savez_compressed(f, images=adv.numpy(), labels=labels.numpy())
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report
