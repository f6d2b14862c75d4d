"""Per-sample attack losses on classifier logits ``(B, K)``; lower is better for the attacker."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("cw", "ce")
FIDELITY_NORMS = ("l2", "l1")


def attack_loss(logits: Tensor, labels: Tensor, kind: str = "cw", targeted: bool = False,
                kappa: float = 0.0) -> Tensor:
    """``(B,)`` loss to minimize. ``labels`` are the true classes, or the targets when ``targeted``.

    ``cw``: Carlini-Wagner margin, clamped below at ``-kappa`` (untargeted:
    ``z_y - max_{j != y} z_j``; targeted: ``max_{j != t} z_j - z_t``).
    ``ce``: cross-entropy (negated when untargeted).
    """
    if kind == "ce":
        ce = F.cross_entropy(logits, labels, reduction="none")
        return ce if targeted else -ce
    if kind == "cw":
        return cw_margin(logits, labels, targeted).clamp(min=-kappa)
    raise ValueError(f"unknown loss {kind!r}; accepted: {', '.join(LOSSES)}")


def cw_margin(logits: Tensor, labels: Tensor, targeted: bool = False) -> Tensor:
    """``(B,)`` Carlini-Wagner margin, negative once the attack has its way: untargeted
    ``z_y - max_{j != y} z_j``, targeted ``max_{j != t} z_j - z_t``."""
    onehot = F.one_hot(labels, logits.shape[1]).bool()
    own = logits[onehot]
    other = logits.masked_fill(onehot, float("-inf")).amax(1)
    return other - own if targeted else own - other


def keep_loss(logits: Tensor, labels: Tensor, kappa: float = 0.0) -> Tensor:
    """``(B,)`` hinge ``max(0, kappa - (z_y - max_{j != y} z_j))``: zero while the classifier
    reads ``labels`` with a margin of at least ``kappa`` (a guard keeping the true class)."""
    return (kappa - cw_margin(logits, labels)).clamp(min=0)


def success(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """``(B,)`` bool: prediction equals the target (targeted) or differs from the label; never
    for logits with a NaN or inf."""
    pred = logits.argmax(1)
    return (pred == labels if targeted else pred != labels) & torch.isfinite(logits).all(1)


def reached(logits: Tensor, labels: Tensor, targeted: bool, kind: str = "cw", kappa: float = 0.0) -> Tensor:
    """``(B,)`` bool: :func:`success`, and for the ``cw`` loss with ``kappa`` > 0 a margin of
    at least ``kappa`` (the loss's clamp), so that the attack keeps going until it holds."""
    ok = success(logits, labels, targeted)
    if kind == "cw" and kappa > 0:
        ok &= cw_margin(logits, labels, targeted) <= -kappa
    return ok


def fidelity_error(images: Tensor, originals: Tensor, norm: str = "l2") -> Tensor:
    """``(B,)`` pixel error of [0, 1] ``images`` to ``originals``: the mean squared (``l2``)
    or mean absolute (``l1``, which favours few changed pixels over a faint change of many)."""
    diff = (images - originals).flatten(1)
    if norm == "l2":
        return diff.pow(2).mean(1)
    if norm == "l1":
        return diff.abs().mean(1)
    raise ValueError(f"unknown fidelity_norm {norm!r}; accepted: {', '.join(FIDELITY_NORMS)}")
