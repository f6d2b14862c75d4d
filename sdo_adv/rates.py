"""Learning-rate arguments: one rate, or one per depth (no torch, so the command line can check them)."""
from __future__ import annotations

import math
from numbers import Real


def learning_rates(lr: object) -> tuple[float, ...]:
    """``lr`` (a finite number > 0, or a non-empty sequence or array of them) as a tuple of
    floats; ValueError naming the value for anything else (booleans and strings included)."""
    values = lr.tolist() if hasattr(lr, "tolist") else lr
    values = list(values) if isinstance(values, (tuple, list)) else [values]
    if not values or not all(isinstance(r, Real) and not isinstance(r, bool) and 0 < r < math.inf for r in values):
        raise ValueError(f"lr must be a number > 0 or a sequence of them (one per depth), got {lr!r}")
    return tuple(float(r) for r in values)


def learning_rate(lr: object) -> float | tuple[float, ...]:
    """:func:`learning_rates` as a setting: one rate as a float, several as a tuple."""
    rates = learning_rates(lr)
    return rates[0] if len(rates) == 1 else rates


def rates_per_depth(lr: object, depths: int) -> tuple[float, ...]:
    """The rate each of ``depths`` depths runs at: ``lr``'s rates in turn, the last serving
    further depths, rates beyond the number of depths unused."""
    rates = learning_rates(lr)
    return tuple(rates[min(i, len(rates) - 1)] for i in range(depths))
