"""Picard (parallel-in-time) sampling with a warm start, for any gradient estimator.

The deterministic DDIM sampler is the linear recurrence ``x_{k+1} = a_k x_k + b_k out(x_k, t_k)``
(the scheduler's own ``step``). Given a guess of the whole trajectory ``x_0..x_n``, one sweep
evaluates the network on all states in one batched call and rebuilds the trajectory from the
start latent with the recurrence. After ``n`` sweeps the
trajectory is exact; warm-started from the previous attack iteration's trajectory (the start
latent moves little), one or two sweeps track it closely.

Gradients: after the sweeps, the output is rebuilt once more from the start latent, in the
graph, with the estimator's plan: ``GRAPH`` / ``CHECKPOINT`` calls are re-evaluated at the
rebuilt (differentiable) state, ``DETACHED`` calls use the last sweep's outputs. For ``sdo``
(first step retained) that call is at the start latent itself, exactly as in the sequential
sampler. Sequential network depth: sweeps + retained calls, instead of ``n``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .estimators import CallMode, Estimator, parse_estimator
from .generator import Condition, Generator


@dataclass
class Trajectory:
    """Detached states ``(n + 1, B, C, h, w)`` of a trajectory from schedule index ``start``,
    and ``sweeps``: the number of sweeps run, ``residual``: the last sweep's largest relative
    update (``inf`` before the first)."""

    states: Tensor
    start: int
    sweeps: int = 0
    residual: float = float("inf")

    def select(self, index: Tensor) -> "Trajectory":
        return Trajectory(self.states[:, index], self.start, self.sweeps, self.residual)


class PicardSampler:
    """Parallel sampling for a :class:`Generator` with a DDIM scheduler.

    ``sweeps``: at most this many sweeps per call; ``tol``: stop earlier once the largest
    relative update of any state falls below it; ``max_batch``: most images per network call
    (a sliding window over the steps, ParaDiGMS-style, when ``n x B`` exceeds it).
    """

    def __init__(self, generator: Generator, sweeps: int = 1, tol: float | None = None,
                 max_batch: int | None = None) -> None:
        from diffusers import DDIMScheduler

        if not isinstance(generator.scheduler, DDIMScheduler):
            raise ValueError(f"Picard sampling needs the ddim sampler, not {type(generator.scheduler).__name__}")
        if sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, got {sweeps}")
        self.generator, self.sweeps, self.tol, self.max_batch = generator, int(sweeps), tol, max_batch

    def init_trajectory(self, latent: Tensor, start: int) -> Trajectory:
        """The cold-start guess: every state equal to the start latent."""
        n = self.generator.num_inference_steps - start
        return Trajectory(latent.detach().expand(n + 1, *latent.shape).clone(), start)

    @torch.no_grad()
    def refine(self, latent: Tensor, trajectory: Trajectory, cond: Condition | None) -> tuple[Trajectory, Tensor]:
        """Run the sweeps from ``trajectory`` with the new start ``latent``; return the refined
        trajectory and the network outputs ``(n, B, C, h, w)`` of the last sweep.

        After a sweep whose window starts at step ``first``, states up to ``first + 1`` are
        exact; with ``tol``, the following states whose update fell below it count as
        converged too, and the next window starts after them."""
        sched = self.generator.trajectory_scheduler(latent.device)
        ts = sched.timesteps[trajectory.start:]
        n, batch = len(ts), latent.shape[0]
        states = trajectory.states.clone()
        states[0] = latent.detach()
        outputs = torch.zeros_like(states[:-1])
        window = n if self.max_batch is None else max(1, min(n, self.max_batch // batch))
        first, residual, sweeps = 0, float("inf"), 0
        while sweeps < self.sweeps and first < n:
            last = min(n, first + window)
            outputs[first:last] = self._batched_outputs(states[first:last], ts[first:last], cond)
            new = rebuild(sched, ts, states[first], outputs, first)
            change = (new - states[first:]).flatten(2).norm(dim=2) / states[first:].flatten(2).norm(dim=2).clamp_min(1e-12)
            per_state = change.amax(1)
            residual, sweeps = per_state.max().item(), sweeps + 1
            states[first:] = new
            converged = per_state[2:] <= self.tol if self.tol is not None else per_state[2:] < 0
            first += 1 + int(converged.long().cumprod(0).sum())
            if self.tol is not None and residual <= self.tol:
                break
        return Trajectory(states, trajectory.start, sweeps, residual), outputs

    def _batched_outputs(self, states: Tensor, ts: Tensor, cond: Condition | None) -> Tensor:
        """Network outputs for ``states`` ``(m, B, ...)`` at timesteps ``ts`` ``(m,)`` in one call."""
        m, batch = states.shape[:2]
        x = states.reshape(m * batch, *states.shape[2:])
        t = ts.repeat_interleave(batch)
        if cond is not None:
            cond = cond.replace(cond.embeds.detach().repeat(m, *([1] * (cond.embeds.dim() - 1))))
        return self.generator.denoise(x, t, cond).reshape(states.shape)

    def sample(self, latent: Tensor, *, cond: Condition | None = None, estimator: str | Estimator = "sdo",
               start: int = 0, trajectory: Trajectory | None = None) -> tuple[Tensor, Trajectory]:
        """Images in [0, 1] from ``latent`` at schedule index ``start``, differentiable according
        to ``estimator``, and the refined trajectory to warm-start the next call with."""
        estimator = parse_estimator(estimator)
        if trajectory is None or trajectory.states.shape[1:] != latent.shape or trajectory.start != start:
            trajectory = self.init_trajectory(latent, start)
        trajectory, outputs = self.refine(latent, trajectory, cond)
        sched = self.generator.trajectory_scheduler(latent.device)
        ts = sched.timesteps[start:]
        x = latent
        for k, mode in enumerate(estimator.plan(len(ts))):
            out = outputs[k] if mode is CallMode.DETACHED else self.generator._network_call(x, ts[k], cond, mode)
            x = sched.step(out, ts[k], x).prev_sample
        return self.generator.decode(x), trajectory


def rebuild(sched, ts: Tensor, x: Tensor, outputs: Tensor, first: int) -> Tensor:
    """States ``first..n`` from state ``x`` at step ``first`` and fixed network ``outputs``,
    with the scheduler's own (linear) step: ``(n - first + 1, B, ...)``."""
    states = [x]
    for k in range(first, len(ts)):
        states.append(sched.step(outputs[k], ts[k], states[-1]).prev_sample)
    return torch.stack(states)
