"""Memory options of a :class:`~sdo_adv.DiffusionGenerator`: activation checkpointing of the
network's and the VAE decoder's units, and (inexact, opt-in) tiled decoding.

``"checkpoint"`` (exact; the generator's default ``"auto"`` picks it when there is a VAE,
``"none"`` for pixel generators): every resnet, attention / transformer, up- and
down-sampler of the UNet and of the VAE decoder that runs with grad keeps only its inputs and
recomputes its activations during backward. The gradient does not change; one attack
iteration's extra memory becomes about one unit's activations plus the units' inputs instead
of a whole network call's and a whole decoder's graph (measured in docs/benchmarks.md).
Calls checkpointed as a whole (the ``checkpoint`` estimator) run their units plainly.
``"tiled"``: the same, and the VAE decodes overlapping latent tiles of half the image's
side, blended (diffusers' tiled decoding): tiles are normalized apart, so images and gradients
differ from an untiled decode, and at 512x512 it measured no saving (all tiles' checkpointed
inputs stay alive until backward; docs/benchmarks.md). ``"none"``: plain autograd.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

MEMORY_MODES = ("checkpoint", "tiled", "none")
UNITS = frozenset({"ResnetBlock2D", "Transformer2DModel", "Attention", "Upsample2D", "Downsample2D"})


class CheckpointedForward:
    """A unit's ``forward``: its class's forward, under non-reentrant activation checkpointing
    when grad is enabled and the owning :class:`MemoryPlan` is on."""

    def __init__(self, module: nn.Module, plan: "MemoryPlan") -> None:
        self.module, self.plan = module, plan

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forward = type(self.module).forward.__get__(self.module)
        if self.plan.on and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)


class MemoryPlan:
    """One generator's memory option (see the module docstring): patches the units of
    ``networks`` (the UNet and the VAE decoder) in place, so the last generator built on a
    network decides for it, and decodes latents."""

    def __init__(self, mode: str, networks: list[nn.Module]) -> None:
        if mode not in MEMORY_MODES:
            raise ValueError(f"unknown memory option {mode!r}; accepted: {', '.join(MEMORY_MODES)}")
        self.mode, self.on = mode, mode != "none"
        for unit in (unit for net in networks for unit in _topmost_units(net)):
            if self.on:
                unit.forward = CheckpointedForward(unit, self)
            elif isinstance(unit.__dict__.get("forward"), CheckpointedForward):
                del unit.forward

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run the units plainly inside (for a call checkpointed as a whole)."""
        on, self.on = self.on, False
        try:
            yield
        finally:
            self.on = on

    def whole(self, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``fn`` with the units paused, in its forward and in its recomputation alike."""
        def run(*args: Any) -> Tensor:
            with self.paused():
                return fn(*args)
        return run

    def decode(self, vae: nn.Module, z: Tensor) -> Tensor:
        """The VAE's decoding of ``z`` (unscaled latents) to [-1, 1] images, tiled for ``"tiled"``."""
        if self.mode != "tiled":
            return vae.decode(z).sample
        saved = vae.tile_latent_min_size, vae.tile_sample_min_size
        vae.tile_latent_min_size = max(1, z.shape[-1] // 2)
        vae.tile_sample_min_size = vae.tile_latent_min_size * 2 ** (len(vae.config.block_out_channels) - 1)
        try:
            return vae.tiled_decode(z).sample
        finally:
            vae.tile_latent_min_size, vae.tile_sample_min_size = saved


def _topmost_units(root: nn.Module) -> Iterator[nn.Module]:
    """The modules under ``root`` whose class is one of :data:`UNITS`, none inside another."""
    for child in root.children():
        if type(child).__name__ in UNITS:
            yield child
        else:
            yield from _topmost_units(child)
