"""The error every run function raises for bad input, before any model compute."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Remedies an error can name, phrased for Python callers; the command line phrases its own.
FIXES = {
    "trust_pickle": "pass trust_pickle=True, only for files you trust",
    "merge": "merge the parts first: sdo_adv.runs.RunOutputs.from_folder(folder).merge()",
    "resume": "resume with the settings it was run with ({arguments}) or use another output folder",
}


class RunError(ValueError):
    """A problem with a run's inputs. ``problem``: what is wrong; ``parameter``: the
    :class:`~sdo_adv.runs.AttackRunConfig` field (or function parameter) at fault, if one is;
    ``fix``: a key of :data:`FIXES` naming the remedy, if there is one; ``values``: settings by
    field name that the remedy names (``resume``: the values the folder's run was run with)."""

    def __init__(self, problem: str, parameter: str | None = None, fix: str | None = None,
                 values: Mapping[str, Any] | None = None) -> None:
        self.problem, self.parameter, self.fix, self.values = problem, parameter, fix, dict(values or {})
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        super().__init__(problem + (f"; {FIXES[fix].format(arguments=arguments)}" if fix else ""))
