"""Gradient estimators: per-step policies that say how each network call joins the graph.

The sampling loop (:meth:`sdo_adv.DiffusionGenerator.sample`) never detaches the latent between
steps, so the scheduler's linear update always stays differentiable (the "shortcut").
An estimator only decides, for each of the ``n`` network calls of one trajectory, whether
the call keeps its autograd graph (``GRAPH``), keeps it through activation checkpointing
(``CHECKPOINT``), or runs under ``torch.no_grad()`` with its output used detached
(``DETACHED``).

Names: ``full``, ``checkpoint``, ``truncated:K``, ``skip``, ``sdo`` (= ``sdo:first``),
``sdo:last``, ``sdo:random``, ``sdo:<index>`` (index into the sampled steps; negative
indices count from the end). An attack that tries several depths takes one estimator per
depth (:func:`per_depth`): ``auto``, one name, or several (comma-separated or a sequence).
"""
from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field


class CallMode(enum.Enum):
    GRAPH = "graph"
    CHECKPOINT = "checkpoint"
    DETACHED = "detached"


ESTIMATOR_FORMS = ("full", "checkpoint", "truncated:K", "skip", "sdo", "sdo:first",
                   "sdo:last", "sdo:random", "sdo:<index>")
AUTO = "auto"


@dataclass
class Estimator:
    """A named per-step policy. ``plan(n)`` returns one :class:`CallMode` per network call.

    ``kind`` is one of full / checkpoint / truncated / skip / sdo; ``arg`` is K for
    ``truncated`` and first / last / random / an int for ``sdo``.
    """

    kind: str
    arg: int | str | None = None
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def name(self) -> str:
        return self.kind if self.arg is None else f"{self.kind}:{self.arg}"

    def check(self, n: int) -> None:
        """Raise a ValueError if this estimator cannot plan a trajectory of ``n`` calls (an
        ``sdo:<index>`` outside it); draws nothing."""
        if self.kind == "sdo" and isinstance(self.arg, int) and not -n <= self.arg < n:
            raise ValueError(f"estimator {self.name!r}: index {self.arg} is outside the {n} sampled steps")

    def retained_index(self, n: int) -> int:
        """Index of the one call an ``sdo`` estimator keeps, for a trajectory of ``n`` calls."""
        if self.arg == "first":
            return 0
        if self.arg == "last":
            return n - 1
        if self.arg == "random":
            return self._rng.randrange(n)
        self.check(n)
        return int(self.arg) % n

    def plan(self, n: int) -> list[CallMode]:
        if self.kind == "full":
            return [CallMode.GRAPH] * n
        if self.kind == "checkpoint":
            return [CallMode.CHECKPOINT] * n
        if self.kind == "skip":
            return [CallMode.DETACHED] * n
        if self.kind == "truncated":
            k = min(int(self.arg), n)
            return [CallMode.DETACHED] * (n - k) + [CallMode.GRAPH] * k
        keep = self.retained_index(n)
        return [CallMode.GRAPH if i == keep else CallMode.DETACHED for i in range(n)]

    @property
    def reaches_condition(self) -> bool:
        """Whether any network call keeps a graph, so a conditioning embedding gets a gradient."""
        return self.kind != "skip"


def parse_estimator(spec: str | Estimator, seed: int | None = None) -> Estimator:
    """Turn a name such as ``"sdo"``, ``"truncated:5"`` or ``"sdo:-2"`` into an :class:`Estimator`."""
    if isinstance(spec, Estimator):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"estimator must be a string, got {type(spec).__name__}")
    kind, sep, arg = spec.strip().lower().partition(":")
    error = ValueError(f"unknown gradient estimator {spec!r}; accepted forms: {', '.join(ESTIMATOR_FORMS)}")
    if sep and not arg:
        raise error
    if kind in ("full", "checkpoint", "skip"):
        if arg:
            raise error
        return Estimator(kind)
    if kind == "truncated":
        if not arg.isdigit() or int(arg) < 1:
            raise error
        return Estimator(kind, int(arg))
    if kind == "sdo":
        arg = arg or "first"
        if arg in ("first", "last", "random"):
            return Estimator(kind, arg, seed=seed)
        try:
            return Estimator(kind, int(arg))
        except ValueError:
            raise error from None
    raise error


def parse_estimators(spec: str | Estimator | Sequence[str | Estimator],
                     seed: int | None = None) -> tuple[Estimator, ...] | None:
    """The estimators of a per-depth ``spec``: None for ``"auto"`` (see :func:`per_depth`), else
    one or more :class:`Estimator` from a name, an :class:`Estimator`, a comma-separated string
    of names or a sequence of either. ValueError naming the spec for anything else."""
    if isinstance(spec, str) and spec.strip().lower() == AUTO:
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items or any(isinstance(s, str) and s.strip().lower() == AUTO for s in items):
        raise ValueError(f"estimator {spec!r}: give {AUTO!r}, one estimator, or one per depth "
                         f"({', '.join(ESTIMATOR_FORMS)})")
    return tuple(parse_estimator(s, seed=seed) for s in items)


def per_depth(spec: str | Estimator | Sequence[str | Estimator], depths: int, conditioning: bool = False,
              seed: int | None = None) -> tuple[Estimator, ...]:
    """The estimator at each of ``depths`` increasing depths. ``"auto"``: with several depths,
    ``skip`` at the first (the sampler's linear path alone: cheap, and its changes stay where
    the classifier's pixel gradient is) and ``sdo`` at the others, whose retries need its
    stronger gradient; ``sdo`` at a single depth, and at every depth when the ``conditioning``
    is optimized (it needs a network call with a graph). Given estimators serve the depths in
    turn, the last serving further depths."""
    given = parse_estimators(spec, seed)
    if given is None:
        skip_first = depths > 1 and not conditioning
        return tuple(Estimator("skip") if i == 0 and skip_first else Estimator("sdo", "first", seed=seed)
                     for i in range(depths))
    return tuple(given[min(i, len(given) - 1)] for i in range(depths))


def estimators_name(spec: str | Estimator | Sequence[str | Estimator]) -> str:
    """``spec`` as a name: ``auto``, one estimator's name, or the names comma-separated."""
    given = parse_estimators(spec)
    return AUTO if given is None else ",".join(e.name for e in given)
