"""Masked (regional) attacks: which pixels an attack may change, and how the rest is kept.

A mask is ``(N, 1, H, W)`` in [0, 1] at the images' size: 1 (white) may change, 0 is kept.
Every image an attack sees and returns is the pixel-space composite
``mask * generated + (1 - mask) * input`` (exactly the input where the mask is 0; the gradient
flows through the masked region only). ``"blend"`` also replaces, after every sampling step,
the kept region of the latent by the input's latent re-noised to that step (RePaint-style), the
mask brought to the generator's image and averaged down to the latent's size, so that the
generated region agrees with its surroundings.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .generator import DiffusionGenerator

MASK_MODES = ("composite", "blend")
Mask = Tensor | Callable[[Tensor], Tensor]


def check_mask_mode(mode: str, sampler: str) -> str:
    """``mode`` after checking it is one of :data:`MASK_MODES` that ``sampler`` supports."""
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask_mode {mode!r}; accepted: {', '.join(MASK_MODES)}")
    if mode == "blend" and sampler != "sequential":
        raise ValueError(f"mask_mode='blend' needs the sequential sampler, not {sampler!r}")
    return mode


def check_mask(mask: Any, images: Tensor) -> Tensor:
    """``mask`` as ``images``' dtype and device, after checking that it is a finite tensor
    ``(N, 1, H, W)`` in [0, 1] for ``images`` ``(N, C, H, W)``; ValueError naming the problem."""
    if not isinstance(mask, Tensor):
        raise ValueError("mask must be a tensor (N, 1, H, W) in [0, 1] or a function of the images "
                         f"returning one, got {type(mask).__name__}")
    n, _, h, w = images.shape
    if tuple(mask.shape) != (n, 1, h, w):
        raise ValueError(f"mask must have shape (N, 1, H, W) = {(n, 1, h, w)} for images of shape "
                         f"{tuple(images.shape)}, got {tuple(mask.shape)}")
    if mask.is_complex():
        raise ValueError(f"mask must be real, got {mask.dtype}")
    mask = mask.detach().to(device=images.device, dtype=images.dtype)
    if not torch.isfinite(mask).all():
        raise ValueError("mask holds NaN or infinite values")
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError(f"mask values must be in [0, 1], got [{mask.min().item():g}, {mask.max().item():g}]")
    return mask


class Region:
    """The region of a batch of ``images`` ``(N, C, H, W)`` in [0, 1] that an attack may change:
    the whole images when ``mask`` is None, else ``mask`` (or ``mask(images)``), checked."""

    def __init__(self, mask: Mask | None, images: Tensor, mode: str = "composite") -> None:
        self.images, self.mode = images, mode
        self.mask = None if mask is None else check_mask(mask(images) if callable(mask) else mask, images)
        self._known: tuple[Tensor, Tensor, Tensor] | None = None

    def paste(self, generated: Tensor, index: Tensor) -> Tensor:
        """``(len(index), C, H, W)`` composite of ``generated`` (the ``index`` samples' images)
        with their inputs: ``mask * generated + (1 - mask) * input``."""
        if self.mask is None:
            return generated
        m = self.mask[index]
        return m * generated + (1 - m) * self.images[index]

    @torch.no_grad()
    def begin(self, generator: DiffusionGenerator, latents: Tensor, start: int) -> None:
        """Blend: the inputs' inversions ``latents`` ``(N, c, h, w)`` at schedule index
        ``start`` fix the noise with which their clean latents are re-noised at later steps."""
        if self.mask is None or self.mode != "blend":
            return
        clean = generator.encode(generator.to_generator(self.images)).to(latents.dtype)
        abar = generator.scheduler.alphas_cumprod.double()[generator.timesteps()[start]]  # as the inversion took it
        noise = (latents - abar.sqrt() * clean) / (1 - abar).sqrt()
        mask = F.interpolate(generator.fit(self.mask), size=latents.shape[-2:], mode="area")
        self._known = (clean, noise, mask)

    def hook(self, generator: DiffusionGenerator, index: Tensor,
             start: int) -> Callable[[dict[str, Any]], None] | None:
        """Blend: a :meth:`DiffusionGenerator.sample` callback for the ``index`` samples,
        sampled from schedule index ``start``, that overwrites (in place) the kept region of
        each new state with the inputs' latents re-noised to its step; else None."""
        if self._known is None:
            return None
        clean, noise, mask = (v[index] for v in self._known)
        abar = generator.state_alphas().to(clean.device)

        def blend(step: dict[str, Any]) -> None:
            a = abar[start + step["i"] + 1].to(clean.dtype)
            known = a.sqrt() * clean + (1 - a).sqrt() * noise
            step["x"].mul_(mask.to(step["x"].dtype)).add_(((1 - mask) * known).to(step["x"].dtype))

        return blend

