"""Checks of numeric, boolean and named-choice arguments that name the argument at fault (no torch)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real


def number(name: str, value: object, low: float = -math.inf, strict: bool = False,
           optional: bool = False) -> float | None:
    """``value`` as a float; ValueError naming ``name`` unless it is a finite number >= ``low``
    (> with ``strict``), or None where ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
            or value < low or (strict and value == low):
        bound = f" {'>' if strict else '>='} {low:g}" if low > -math.inf else ""
        raise ValueError(f"{name} must be a finite number{bound}{' or None' if optional else ''}, got {value!r}")
    return float(value)


def count(name: str, value: object, low: int = 1) -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def flag(name: str, value: object) -> bool:
    """``value``; ValueError naming ``name`` unless it is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def choice(name: str, value: object, accepted: Sequence[str]) -> str:
    """``value``; ValueError naming ``name`` and the accepted values unless it is one of them."""
    if value not in accepted:
        raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")
    return value
