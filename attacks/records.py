"""What :class:`~sdo_adv.attacks.SDOAttack` reports: per iteration to its callback, per call in ``last_result``."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class AttackStep:
    """What :class:`SDOAttack` passes to its ``callback`` once per iteration (the last call,
    ``iteration == steps``, only evaluates: it takes no optimizer step).

    ``active``: indices ``(A,)`` into the batch of the samples evaluated in this iteration;
    ``images``: their generated images ``(A, C, H, W)`` in [0, 1] (detached, at the input's
    size); ``success``: ``(B,)`` bool, every sample successful so far; ``loss``: the active
    samples' objective ``(A,)`` (None in the last call); ``seconds``: since the attack
    started; ``network_calls`` / ``network_images``: UNet calls made by the sampler in this
    iteration and the images they evaluated (its sequential depth and its work; guidance
    doubles the images).
    """

    iteration: int
    active: Tensor
    images: Tensor
    success: Tensor
    loss: Tensor | None
    seconds: float
    network_calls: int
    network_images: int


@contextmanager
def counting_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Count ``module``'s forward calls and the batch entries they took: ``[calls, images]``."""
    counts = [0, 0]

    def hook(_module: torch.nn.Module, inputs: tuple, _output: object) -> None:
        counts[0] += 1
        counts[1] += inputs[0].shape[0]

    handle = module.register_forward_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()


@dataclass
class AttackResult:
    """Per-sample record of the last :class:`SDOAttack` call (all tensors ``(B,)``, on CPU).

    ``success`` (definitions in :mod:`sdo_adv.judging`): untargeted, the victim read the clean
    image correctly and reads the returned one as another class; targeted, it reads the target.
    ``iterations``: iteration at which the returned image was found (-1 if never successful);
    ``failure``: None, or why optimizing the sample stopped early (a NaN or inf loss or
    gradient; the sample keeps its last finite image and counts as unsuccessful);
    ``history``: fraction of the batch successful (as ``success``) after each iteration, ``seconds``: wall-clock
    seconds since the attack started at each of those points; ``latent``: the start
    latents ``(B, C, h, w)`` at schedule index ``start`` whose exact sequential samples are
    the returned images (before conversion to the input's size and channels), under the
    conditioning embeddings ``cond_embeds`` when the attack optimized them (``optimize`` of
    ``"cond"`` or ``"both"``; None otherwise: the labels' own conditioning).
    """

    success: Tensor
    iterations: Tensor
    l2: Tensor
    linf: Tensor
    clean_pred: Tensor
    adv_pred: Tensor
    target: Tensor | None
    reconstruction_error: Tensor
    latent: Tensor
    start: int
    cond_embeds: Tensor | None = None
    failure: list[str | None] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
