"""Helpers shared by the commands (click only, so that ``sdo-adv --help`` stays fast)."""
from __future__ import annotations

from collections.abc import Mapping

import click

# The command line's own words for the remedies a RunError names (sdo_adv.runs.errors.FIXES).
FIXES = {
    "trust_pickle": "pass --trust-pickle, only for files you trust",
    "merge": "run `sdo-adv merge {folder}` first",
}


def click_error(err: ValueError, flags: Mapping[str, str] | None = None, **context: str) -> click.ClickException:
    """A click error for a :class:`sdo_adv.runs.RunError`: the option at fault is the flag
    ``flags`` gives for its parameter (else ``--<parameter>``); its remedy in command-line
    words, formatted with ``context``."""
    problem, parameter, fix = getattr(err, "problem", str(err)), getattr(err, "parameter", None), getattr(err, "fix", None)
    message = problem + (f"; {FIXES[fix].format(**context)}" if fix else "")
    if parameter:
        flag = (flags or {}).get(parameter, f"--{parameter.replace('_', '-')}")
        return click.BadParameter(message, param_hint=f"'{flag}'")
    return click.ClickException(message)
