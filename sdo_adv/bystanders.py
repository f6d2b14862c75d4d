"""Changes that other classifiers do not see: the victim's input gradient with the bystanders'
margin gradients projected out.

A change that fools one classifier often moves every classifier of the pixels the same way, and
then an independent judge reads another class too. Given bystanders (classifiers that are not
the victim and not a judge), :func:`project_out` leaves images unchanged on the forward pass
and, on the backward pass, removes from the gradient reaching them, per sample, its components
along each bystander's margin gradient (for the class the bystander reads there): a small step
along what remains moves the victim and, to first order, none of the bystanders.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .loading import load_classifier


def margin_gradients(images: Tensor, bystanders: Sequence[nn.Module]) -> list[Tensor]:
    """``(N, C*H*W)`` gradients, one per bystander, of its margin (the logit of the class it
    reads at ``images`` over the largest other) with respect to ``images`` ``(N, C, H, W)``."""
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        grads = []
        for model in bystanders:
            logits = model(x)
            read = logits.argmax(1, keepdim=True).detach()
            others = logits.scatter(1, read, float("-inf"))
            margin = logits.gather(1, read)[:, 0] - others.max(1).values
            grads.append(torch.autograd.grad(margin.sum(), x)[0].flatten(1))
    return grads


def remove_span(gradient: Tensor, directions: Sequence[Tensor]) -> Tensor:
    """``gradient`` ``(N, D)`` minus its projection, per row, onto the span of ``directions``
    (each ``(N, D)``; Gram-Schmidt, zero rows skipped)."""
    basis: list[Tensor] = []
    for d in directions:
        v = d.to(gradient.dtype)
        for q in basis:
            v = v - (v * q).sum(1, keepdim=True) * q
        norm = v.norm(dim=1, keepdim=True)
        independent = norm > 1e-6 * d.norm(dim=1, keepdim=True)
        basis.append(torch.where(independent, v / norm.clamp_min(1e-30), 0.0))
    for q in basis:
        gradient = gradient - (gradient * q).sum(1, keepdim=True) * q
    return gradient


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


def other_classifier(spec: str | nn.Module, victim: nn.Module, device: torch.device | str, role: str) -> nn.Module:
    """``spec`` (a module, or a spec for :func:`load_classifier`) in eval mode on ``device``, to
    serve as a ``role`` (guard, bystander) beside ``victim``; ValueError if it is the victim."""
    if spec is victim or (isinstance(spec, str) and spec == getattr(victim, "name", None)):
        name = f" {spec}" if isinstance(spec, str) else ""
        raise ValueError(f"the {role}{name} is the victim: a {role} must be another classifier")
    return load_classifier(spec).to(device).eval() if isinstance(spec, str) else spec
