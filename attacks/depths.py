"""The depths an attack tries in turn, and the learning rate and gradient estimator at each."""
from __future__ import annotations

from collections.abc import Sequence

from sdo_adv.estimators import Estimator, parse_estimators, per_depth
from sdo_adv.generator import start_index
from sdo_adv.rates import rates_per_depth


def depth_schedule(num_inference_steps: int, depth: float | int | Sequence[float | int],
                   lr: float | Sequence[float], estimator: str | Estimator | Sequence[str] = "auto",
                   conditioning: bool = False, seed: int | None = None,
                   ) -> tuple[tuple[float | int, ...], tuple[float, ...], tuple[Estimator, ...]]:
    """``(depths, rates, estimators)``: the increasing inversion depths (fractions in (0, 1] or
    start indices), the learning rate and the estimator at each. Sequences of rates and of
    estimators are taken over the depths as given, in turn, the last serving further depths;
    depths that start at the same step of the schedule are one depth, with the first
    one's rate and estimator; ``"auto"`` is planned over the depths kept (see
    :func:`sdo_adv.estimators.per_depth`; ``conditioning``: the conditioning is optimized, so
    every estimator must reach it; ``seed`` seeds ``sdo:random``). Each estimator is checked
    against its depth's sampled steps. ``num_inference_steps``: the length of the generator's
    sampling schedule. Raises ValueError on anything else."""
    depths = tuple(depth) if isinstance(depth, (tuple, list)) else (depth,)
    starts = [start_index(d, num_inference_steps) for d in depths]
    fractions = [d for d in depths if isinstance(d, float)]
    if not depths or any(a < b for a, b in zip(starts, starts[1:])) or \
            any(a >= b for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"depth must be one depth or a sequence of increasing depths, got {depth!r}")
    rates = rates_per_depth(lr, len(depths))
    kept = [i for i in range(len(depths)) if i == 0 or starts[i] != starts[i - 1]]
    if parse_estimators(estimator) is None:
        estimators = per_depth(estimator, len(kept), conditioning, seed)
    else:
        planned = per_depth(estimator, len(depths), conditioning, seed)
        estimators = tuple(planned[i] for i in kept)
    for e, i in zip(estimators, kept):
        if conditioning and not e.reaches_condition:
            raise ValueError(f"estimator {e.name!r} gives the conditioning no gradient; use optimize='latent'")
        e.check(num_inference_steps - starts[i])
    return tuple(depths[i] for i in kept), tuple(rates[i] for i in kept), estimators
