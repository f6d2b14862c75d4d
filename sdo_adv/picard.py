"""Picard (parallel-in-time) sampling with a warm start, for any gradient estimator.

The deterministic DDIM sampler maps state ``x_k`` to ``x_{k+1}`` with the scheduler's own
``step``. Given a guess of the whole trajectory ``x_0..x_n``, one sweep evaluates the network
on all states in one batched call and rebuilds the trajectory from the start latent with
the step, holding one quantity of each step's prediction fixed:

- ``hold="output"``: the network output (the noise prediction of an epsilon model), so the
  rebuild is the sampler's linear path ``x_{k+1} = a_k x_k + b_k out_k``, the same path SDO's
  gradient follows. A start-latent change propagates with ``prod a_k`` (``a_k =
  sqrt(abar_{k+1} / abar_k) > 1``), which overshoots the exact change, and more sweeps
  overshoot more before they converge.
- ``hold="clean"``: the clean-image prediction ``x0_k``, so ``x_{k+1} = c_k x_k + d_k x0_k``
  with ``c_k = sqrt((1 - abar_{k+1}) / (1 - abar_k)) < 1``: the sweeps converge monotonically,
  but a start-latent change reaches the late states only one step per sweep, so they lag.

Either way the trajectory is exact after ``n`` sweeps (bitwise: the step that makes a state
exact uses the network output as it is). In an attack the warm start is the previous
iteration's trajectory (the start latent moves little). On the embedded digit model, one
``output`` sweep per iteration attacks as well as sequential sampling although its images
are further from the exact ones than ``clean``'s: its images respond to the latent the way
the SDO gradient predicts (README, Picard).

Gradients: the output is rebuilt once more from the start latent, in the graph, with the
estimator's plan, and each state's value is replaced by the refined one (a straight-through
step), so ``GRAPH`` / ``CHECKPOINT`` calls are evaluated at the refined states and the
gradient follows the estimator exactly as in the sequential sampler. For ``sdo`` (first step
retained) that call is at the start latent itself. Sequential network depth per iteration:
sweeps + retained calls, instead of ``n``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .arguments import choice
from .estimators import CallMode, Estimator, parse_estimator
from .generator import Condition, DiffusionGenerator

HOLDS = ("output", "clean")


@dataclass
class Trajectory:
    """Detached states ``(n + 1, B, C, h, w)`` of a trajectory from schedule index ``start``,
    and ``sweeps``: the number of sweeps run, ``residual``: the last sweep's largest relative
    update (``inf`` before the first)."""

    states: Tensor
    start: int
    sweeps: int = 0
    residual: float = float("inf")

    @classmethod
    def constant(cls, latent: Tensor, n: int, start: int) -> "Trajectory":
        """A cold-start guess: all ``n + 1`` states equal to ``latent``."""
        return cls(latent.detach().expand(n + 1, *latent.shape).clone(), start)

    def select(self, index: Tensor) -> "Trajectory":
        return Trajectory(self.states[:, index], self.start, self.sweeps, self.residual)


class PicardSampler:
    """Parallel sampling for a :class:`DiffusionGenerator` with a DDIM scheduler.

    ``sweeps``: at most this many sweeps per call; ``tol``: stop earlier once the largest
    relative update of any state falls below it; ``max_batch``: most images per network call
    (a sliding window over the steps, ParaDiGMS-style, when ``n x B`` exceeds it); ``hold``:
    what a sweep holds fixed, ``"output"`` or ``"clean"`` (see the module's docstring).
    """

    def __init__(self, generator: DiffusionGenerator, sweeps: int = 1, tol: float | None = None,
                 max_batch: int | None = None, hold: str = "output") -> None:
        from diffusers import DDIMScheduler

        if not isinstance(generator.scheduler, DDIMScheduler):
            raise ValueError(f"Picard sampling needs the ddim sampler, not {type(generator.scheduler).__name__}")
        if sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, got {sweeps}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        choice("hold", hold, HOLDS)
        self.generator, self.sweeps, self.tol, self.max_batch = generator, int(sweeps), tol, max_batch
        self.hold = hold

    def init_trajectory(self, latent: Tensor, start: int, cond: Condition | None) -> Trajectory:
        """The exact trajectory from ``latent``: windows of one step, i.e. ``n`` sequential
        network calls of ``B`` images, the cost of one sequential sampling pass."""
        n = self.generator.num_inference_steps - start
        return self._sweep(latent, Trajectory.constant(latent, n, start), cond, sweeps=n, window=1, tol=None)

    def refine(self, latent: Tensor, trajectory: Trajectory, cond: Condition | None) -> Trajectory:
        """Run the sampler's sweeps from ``trajectory`` with the new start ``latent``.

        After a sweep whose window starts at step ``first``, states up to ``first + 1`` are
        exact; with ``tol``, the following states whose update fell below it count as
        converged too, and the next window starts after them. With a window shorter than the
        remaining steps (``max_batch``), the states beyond it keep their values until a sweep
        reaches them."""
        n = len(trajectory.states) - 1
        window = n if self.max_batch is None else max(1, min(n, self.max_batch // latent.shape[0]))
        return self._sweep(latent, trajectory, cond, self.sweeps, window, self.tol)

    @torch.no_grad()
    def _sweep(self, latent: Tensor, trajectory: Trajectory, cond: Condition | None, sweeps: int,
               window: int, tol: float | None) -> Trajectory:
        sched = self.generator.trajectory_scheduler(latent.device)
        ts = sched.timesteps[trajectory.start:]
        n = len(ts)
        states = trajectory.states.clone()
        states[0] = latent.detach()
        first, residual, done = 0, float("inf"), 0
        while done < sweeps and first < n:
            last = min(n, first + window)
            outputs = self._batched_outputs(states[first:last], ts[first:last], cond)
            new = rebuild(sched, ts[first:last], states[first:last], outputs, self.hold)
            old = states[first:last + 1]
            change = (new - old).flatten(2).norm(dim=2) / old.flatten(2).norm(dim=2).clamp_min(1e-12)
            per_state = change.amax(1)
            residual, done = per_state.max().item(), done + 1
            states[first:last + 1] = new
            converged = per_state[2:] <= tol if tol is not None else per_state[2:] < 0
            first += 1 + int(converged.long().cumprod(0).sum())
            if tol is not None and residual <= tol and last == n:
                break
        return Trajectory(states, trajectory.start, done, residual)

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
        to ``estimator``, and the refined trajectory to warm-start the next call with. Without
        a usable ``trajectory`` the exact one is computed (:meth:`init_trajectory`)."""
        estimator = parse_estimator(estimator)
        if trajectory is None or trajectory.states.shape[1:] != latent.shape or trajectory.start != start:
            trajectory = self.init_trajectory(latent, start, cond)
        else:
            trajectory = self.refine(latent, trajectory, cond)
        sched = self.generator.trajectory_scheduler(latent.device)
        ts = sched.timesteps[start:]
        x = latent
        for k, mode in enumerate(estimator.plan(len(ts))):
            # a detached output sets only the value, which the refined state replaces below
            out = torch.zeros_like(x) if mode is CallMode.DETACHED else \
                self.generator.network_call(x, ts[k], cond, mode)
            x = sched.step(out, ts[k], x).prev_sample
            x = x + (trajectory.states[k + 1] - x).detach()
        return self.generator.decode(x), trajectory


def output_for(sched, clean: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """The network output (in the scheduler's ``prediction_type``) that predicts the clean
    image ``clean`` from state ``x`` at timestep ``t``."""
    abar = sched.alphas_cumprod[t]
    # the scheduler's own arithmetic (its dtype), so that its step recovers ``clean`` exactly
    signal, noise = (abar ** 0.5).to(x.device), ((1 - abar) ** 0.5).to(x.device)
    if sched.config.prediction_type == "sample":
        return clean
    eps = (x - signal * clean) / noise
    if sched.config.prediction_type == "epsilon":
        return eps
    if sched.config.prediction_type == "v_prediction":
        return signal * eps - noise * clean
    raise NotImplementedError(f"prediction_type {sched.config.prediction_type!r} is not supported")


def rebuild(sched, ts: Tensor, at: Tensor, outputs: Tensor, hold: str = "output") -> Tensor:
    """States from ``at[0]`` over the steps ``ts`` ``(m,)``, given the network ``outputs``
    ``(m, B, ...)`` evaluated at the states ``at`` ``(m, B, ...)``, through the scheduler's own
    step: ``(m + 1, B, ...)``. Each later step holds its output (``hold="output"``) or its
    output's clean-image prediction (``"clean"``) fixed; the first, at the very state its
    output was evaluated at, uses the output as it is."""
    states = [at[0]]
    for k in range(len(ts)):
        out = outputs[k]
        if k and hold == "clean":
            clean = sched.step(out, ts[k], at[k]).pred_original_sample
            out = output_for(sched, clean, states[-1], ts[k])
        states.append(sched.step(out, ts[k], states[-1]).prev_sample)
    return torch.stack(states)
