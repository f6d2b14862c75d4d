"""Changes that other classifiers do not see: the victim's input gradient with the bystanders'
margin gradients projected out.

A change that fools one classifier often moves every classifier of the pixels the same way, and
then an independent judge reads another class too. Given bystanders (classifiers that are not
the victim and not a judge), :func:`project_out` leaves images unchanged on the forward pass
and, on the backward pass, removes from the gradient reaching them, per sample, its components
along each bystander's margin gradient (for the class the bystander reads there): a small image
step along what remains moves the victim and, to first order, none of the bystanders. (The
attack steps the latent, through the generator, and its fidelity term is not projected, so
this holds of the victim's loss gradient, not exactly of the change.)
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .loading import load_classifier
from .losses import cw_margin

AUTO_COUNT = 3  # how many of a generator's recommended bystanders "auto" takes


def _logits(model: nn.Module, images: Tensor) -> Tensor:
    """``model``'s logits at ``images``, given in its parameters' dtype (a float32 bystander
    reads float64 images)."""
    weight = next(model.parameters(), None)
    return model(images if weight is None else images.to(weight.dtype))


def margin_gradients(images: Tensor, bystanders: Sequence[nn.Module]) -> list[Tensor]:
    """``(N, C*H*W)`` gradients, one per bystander, of its margin (the logit of the class it
    reads at ``images`` over the largest other) with respect to ``images`` ``(N, C, H, W)``."""
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        grads = []
        for model in bystanders:
            logits = _logits(model, x)
            margin = cw_margin(logits, logits.argmax(1))
            grads.append(torch.autograd.grad(margin.sum(), x)[0].flatten(1))
    return grads


def remove_span(gradient: Tensor, directions: Sequence[Tensor]) -> Tensor:
    """``gradient`` ``(N, D)`` minus its projection, per row, onto the span of ``directions``
    (each ``(N, D)``; Gram-Schmidt, zero rows skipped)."""
    dtype, work = gradient.dtype, torch.promote_types(gradient.dtype, torch.float32)
    gradient, basis = gradient.to(work), []
    for d in directions:
        v = d.to(work)
        for q in basis:
            v = v - (v * q).sum(1, keepdim=True) * q
        norm = v.norm(dim=1, keepdim=True)
        independent = norm > 1e-6 * d.norm(dim=1, keepdim=True)
        basis.append(torch.where(independent, v / norm.clamp_min(1e-30), 0.0))
    for q in basis:
        gradient = gradient - (gradient * q).sum(1, keepdim=True) * q
    return gradient.to(dtype)


class _ProjectOut(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, images: Tensor, bystanders: tuple[nn.Module, ...]) -> Tensor:
        ctx.save_for_backward(images)
        ctx.bystanders = bystanders
        return images.view_as(images)

    @staticmethod
    def backward(ctx: Any, gradient: Tensor) -> tuple[Tensor, None]:
        (images,) = ctx.saved_tensors
        directions = margin_gradients(images, ctx.bystanders)
        return remove_span(gradient.flatten(1), directions).view_as(gradient), None


def project_out(images: Tensor, bystanders: Sequence[nn.Module]) -> Tensor:
    """``images`` ``(N, C, H, W)`` in [0, 1] as they are; the gradient that reaches them
    backward loses, per sample, its components along the bystanders' margin gradients (see the
    module). The bystanders get no parameter gradients."""
    return _ProjectOut.apply(images, tuple(bystanders)) if bystanders else images


def other_classifier(spec: str | os.PathLike | nn.Module, victim: nn.Module, device: torch.device | str,
                     role: str) -> nn.Module:
    """``spec`` (a module, or a spec for :func:`load_classifier`) in eval mode on ``device``
    (a module is moved and set so in place), to serve as a ``role`` (guard, bystander) beside
    ``victim``; ValueError if it is the victim."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if spec is victim or (isinstance(spec, str) and spec == getattr(victim, "name", None)):
        name = f" {spec}" if isinstance(spec, str) else ""
        raise ValueError(f"the {role}{name} is the victim: a {role} must be another classifier")
    return (load_classifier(spec) if isinstance(spec, str) else spec).to(device).eval()


def other_classifiers(specs: str | os.PathLike | nn.Module | Sequence[str | os.PathLike | nn.Module],
                      victim: nn.Module, device: torch.device | str, role: str) -> list[nn.Module]:
    """:func:`other_classifier` of one spec or of each of a sequence (an ``nn.ModuleList`` is one)."""
    one = isinstance(specs, (str, os.PathLike, nn.Module)) and not isinstance(specs, nn.ModuleList)
    return [other_classifier(s, victim, device, role) for s in ((specs,) if one else specs)]


def chosen_bystanders(specs: str | Sequence[str | nn.Module] | None, victim: nn.Module, generator: Any,
                      guard: nn.Module | None) -> list[nn.Module]:
    """SDOAttack's bystanders: :func:`other_classifiers` of ``specs`` on ``generator``'s device
    (none for None or ``"none"``), or for ``"auto"`` of the first :data:`AUTO_COUNT` of
    ``generator.bystanders`` (its recommended specs) that are neither the victim nor the
    ``guard`` by name (a victim under another name is left out later, by :func:`distinct`,
    leaving one fewer)."""
    if specs is None or (isinstance(specs, str) and specs == "none"):
        specs = ()
    if isinstance(specs, str) and specs == "auto":
        specs = recommended(generator.bystanders, (getattr(victim, "name", None), getattr(guard, "name", None)))
    return other_classifiers(specs, victim, generator.device, "bystander")


def recommended(candidates: Sequence[str], excluded: Sequence[str | None] = (), count: int = AUTO_COUNT) -> list[str]:
    """The first ``count`` of a generator's recommended bystander specs that are not
    ``excluded`` (the victim's, the guard's and the judges' specs)."""
    return [c for c in candidates if c not in excluded][:count]


def distinct(bystanders: Sequence[nn.Module], images: Tensor, victim_logits: Tensor) -> list[nn.Module]:
    """The ``bystanders`` whose logits at ``images`` differ from the victim's ``victim_logits``.
    One that reads as the victim (within 1e-4) is the victim under another name (projecting out
    its gradient would leave the victim nothing to follow): it is left out, with a warning."""
    kept = []
    for model in bystanders:
        with torch.no_grad():
            logits = _logits(model, images)
        if logits.shape == victim_logits.shape and torch.allclose(logits.to(victim_logits.dtype), victim_logits,
                                                                  rtol=1e-4, atol=1e-4):
            warnings.warn(f"bystander {getattr(model, 'name', type(model).__name__)} gives the victim's logits: "
                          "it is the victim, and is left out", stacklevel=4)
        else:
            kept.append(model)
    return kept
