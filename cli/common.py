"""Helpers shared by the commands (click only, so that ``sdo-adv --help`` stays fast)."""
from __future__ import annotations

from collections.abc import Mapping

import click

# The command line's own words for the remedies a RunError names (sdo_adv.runs.errors.FIXES).
FIXES = {
    "trust_pickle": "pass --trust-pickle, only for files you trust",
    "merge": "run `sdo-adv merge {folder}` first",
}


class OptionalNumber(click.ParamType):
    """A number, or ``none`` (any case) for None."""

    name = "number|none"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float | None:
        if value is None or str(value).strip().lower() == "none":
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number nor 'none'", param, ctx)


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
