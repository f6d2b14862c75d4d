"""The depths an attack tries in turn, and the learning rate at each."""
from __future__ import annotations

from collections.abc import Sequence

from sdo_adv.generator import DiffusionGenerator
from sdo_adv.rates import rates_per_depth


def depth_schedule(generator: DiffusionGenerator, depth: float | int | Sequence[float | int],
                   lr: float | Sequence[float]) -> tuple[tuple[float | int, ...], tuple[float, ...]]:
    """``(depths, rates)``: the increasing inversion depths (fractions in (0, 1] or start
    indices) and the learning rate at each. A sequence of rates is taken in turn, its last
    rate serving further depths; depths that start at the same step of ``generator``'s
    schedule are one depth, at the first one's rate. Raises ValueError on anything else."""
    depths = tuple(depth) if isinstance(depth, (tuple, list)) else (depth,)
    starts = [generator.start_index(d) for d in depths]
    fractions = [d for d in depths if isinstance(d, float)]
    if not depths or any(a < b for a, b in zip(starts, starts[1:])) or \
            any(a >= b for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"depth must be one depth or a sequence of increasing depths, got {depth!r}")
    rates = rates_per_depth(lr, len(depths))
    kept = [i for i in range(len(depths)) if i == 0 or starts[i] != starts[i - 1]]
    return tuple(depths[i] for i in kept), tuple(rates[i] for i in kept)
