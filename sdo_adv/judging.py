"""Judges: classifiers that are never attacked and never in a loss, asked whether an
adversarial image still shows its true class.

Definitions used everywhere (attack results, runs, demo, benchmarks):
- untargeted success: the victim read the clean image correctly and reads the adversarial
  image as another class; targeted success: the victim reads the target;
- natural success: success and every judge reads the adversarial image as the true class;
- judge agreement: the share of successes that are natural.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def attack_success(clean_pred: Tensor, adv_pred: Tensor, labels: Tensor, target: Tensor | None = None) -> Tensor:
    """``(B,)`` bool success from the victim's predictions (see the module's definitions)."""
    if target is not None:
        return adv_pred == target
    return (clean_pred == labels) & (adv_pred != labels)


@torch.no_grad()
def judge_predictions(judges: Mapping[str, nn.Module], images: Tensor, batch: int = 256) -> dict[str, Tensor]:
    """Each judge's predicted classes ``(B,)``, on the CPU, for [0, 1] ``images`` ``(B, C, H, W)``
    on any device, computed without a graph on detached images (a judge can never pass a
    gradient to an attack)."""
    images = images.detach()
    preds = {}
    for name, judge in judges.items():
        device = next(judge.parameters(), next(judge.buffers(), images)).device
        preds[name] = torch.cat([judge(images[i:i + batch].to(device)).argmax(1).cpu()
                                 for i in range(0, len(images), batch)])
    return preds


def natural_success(success: Tensor, labels: Tensor, judge_preds: Mapping[str, Tensor]) -> Tensor:
    """``(B,)`` bool: success and every judge reads the true label."""
    keep = success.clone()
    for pred in judge_preds.values():
        keep &= pred.to(labels.device) == labels
    return keep


def judge_agreement(success: Tensor, labels: Tensor, judge_preds: Mapping[str, Tensor]) -> float | None:
    """Share of the successes that every judge still reads as the true label (None without
    successes or without judges)."""
    if not judge_preds or not success.any():
        return None
    return natural_success(success, labels, judge_preds)[success].float().mean().item()
