"""The error every run function raises for bad input, before any model compute."""
from __future__ import annotations

# Remedies an error can name, phrased for Python callers; the command line phrases its own.
FIXES = {
    "trust_pickle": "pass trust_pickle=True, only for files you trust",
    "merge": "merge the parts first: sdo_adv.runs.RunOutputs.from_folder(folder).merge()",
}


class RunError(ValueError):
    """A problem with a run's inputs. ``problem``: what is wrong; ``parameter``: the
    :class:`~sdo_adv.runs.AttackRunConfig` field (or function parameter) at fault, if one is;
    ``fix``: a key of :data:`FIXES` naming the remedy, if there is one."""

    def __init__(self, problem: str, parameter: str | None = None, fix: str | None = None) -> None:
        super().__init__(problem + (f"; {FIXES[fix]}" if fix else ""))
        self.problem, self.parameter, self.fix = problem, parameter, fix
