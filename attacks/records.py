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
    the returned images (before conversion to the input's size and channels, and before
    compositing with the input outside a ``mask``, which ``"blend"`` also applies while sampling), under the
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
    start: int | Tensor
    cond_embeds: Tensor | None = None
    failure: list[str | None] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


@dataclass
class Search:
    """Per-sample state of one :class:`SDOAttack` call over all its depths: the image to return
    (the successful one with the smallest L2, else the last the victim was not fooled by, else
    the input), the latent, schedule index and conditioning that gave it, the iteration it was
    found at, and which samples are done (successful) or failed (non-finite)."""

    best: Tensor
    best_l2: Tensor
    found_at: Tensor
    done: Tensor
    failed: Tensor
    starts: Tensor
    failure: list[str | None]
    best_z: Tensor | None = None
    best_cond: Tensor | None = None
    history: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @classmethod
    def begin(cls, images: Tensor) -> "Search":
        n, device = images.shape[0], images.device
        flags = torch.zeros(n, dtype=torch.bool, device=device)
        return cls(images.clone(), torch.full((n,), float("inf"), device=device, dtype=images.dtype),
                   torch.full((n,), -1, dtype=torch.long, device=device), flags, flags.clone(),
                   torch.zeros(n, dtype=torch.long, device=device), [None] * n)

    def record(self, active: Tensor, images: Tensor, ok: Tensor, fooled: Tensor, l2: Tensor, z: Tensor,
               embeds: Tensor | None, iteration: int, start: int) -> None:
        """Take the ``active`` samples' new ``images`` (latents ``z`` at ``start``): a success
        (``ok``) closer than the best so far, or, for a sample never successful, a finite image
        that does not fool the victim."""
        improved = ok & (l2 < self.best_l2[active])
        fallback = ~self.done[active] & ~fooled & torch.isfinite(images).flatten(1).all(1)
        take = active[improved | fallback]
        self.best[take], self.best_z[take] = images[improved | fallback], z[improved | fallback]
        self.starts[take] = start
        if self.best_cond is not None:
            self.best_cond[take] = embeds[improved | fallback]
        self.best_l2[active[improved]] = l2[improved]
        self.found_at[active[improved]] = iteration
        self.done[active[ok]] = True

    def fail(self, index: Tensor, reason: str) -> None:
        """Stop optimizing the samples at ``index``; record why for those not yet successful."""
        for i in index.tolist():
            if not self.done[i]:
                self.failure[i] = reason
        self.failed[index] = True


def finite_gradients(active: Tensor, *variables: Tensor | None) -> Tensor:
    """``(len(active),)`` bool: every gradient entry of the ``active`` samples is finite."""
    ok = torch.ones(active.numel(), dtype=torch.bool, device=active.device)
    for v in variables:
        if v is not None and v.grad is not None:
            ok &= torch.isfinite(v.grad[active].flatten(1)).all(1)
    return ok
