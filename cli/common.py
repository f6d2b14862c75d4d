"""Helpers shared by the commands (click only, so that ``sdo-adv --help`` stays fast)."""
from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

import click

from sdo_adv.rates import learning_rate

# The command line's own words for the remedies a RunError names (sdo_adv.runs.errors.FIXES).
FIXES = {
    "trust_pickle": "pass --trust-pickle, only for files you trust",
    "merge": "run `sdo-adv merge {folder}` first",
    "resume": "resume with the options it was run with ({options}) or use another output folder",
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


class Depths(click.ParamType):
    """One inversion depth or increasing depths, comma-separated fractions in (0, 1]."""

    name = "depth[,depth...]"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[float, ...]:
        parts = value if isinstance(value, (tuple, list)) else str(value).split(",")
        try:
            depths = tuple(float(p) for p in parts)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not depths or not all(0 < d <= 1 for d in depths) or any(a >= b for a, b in zip(depths, depths[1:])):
            self.fail(f"{value!r}: depths must be increasing fractions in (0, 1]", param, ctx)
        return depths


class Rates(click.ParamType):
    """One learning rate, or the rate at each depth in turn: comma-separated numbers > 0."""

    name = "lr[,lr...]"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float | tuple[float, ...]:
        parts = value if isinstance(value, (tuple, list)) else str(value).split(",")
        try:
            rates = tuple(float(p) for p in parts)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        try:
            return learning_rate(rates)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def click_error(err: ValueError, flags: Mapping[str, str] | None = None, **context: str) -> click.ClickException:
    """A click error for a :class:`sdo_adv.runs.RunError`: the option at fault is the flag
    ``flags`` gives for its parameter (else ``--<parameter>``); its remedy in command-line
    words, formatted with ``context``."""
    problem, parameter, fix = getattr(err, "problem", str(err)), getattr(err, "parameter", None), getattr(err, "fix", None)
    message = problem + (f"; {FIXES[fix].format(options=as_options(getattr(err, 'values', {})), **context)}"
                         if fix else "")
    if parameter:
        flag = (flags or {}).get(parameter, f"--{parameter.replace('_', '-')}")
        return click.BadParameter(message, param_hint=f"'{flag}'")
    return click.ClickException(message)


def as_options(values: Mapping[str, Any]) -> str:
    """Settings by field name as the running command's options: ``{"depth": [0.2, 0.5],
    "tol": None, "early_stop": False}`` -> ``--depth 0.2,0.5 --tol none --no-early-stop``; a
    None that the option cannot take reads ``without --<option>``."""
    ctx = click.get_current_context(silent=True)
    params = {p.name: p for p in ctx.command.params} if ctx is not None else {}
    options = []
    for name, value in values.items():
        param = params.get(name)
        flag = param.opts[0] if param is not None else "--" + name.replace("_", "-")
        if isinstance(value, bool):
            off = param.secondary_opts[0] if param is not None and param.secondary_opts else f"without {flag}"
            options.append(flag if value else off)
        elif value is None:
            options.append(f"{flag} none" if param is not None and isinstance(param.type, OptionalNumber)
                           else f"without {flag}")
        elif isinstance(value, (list, tuple)):
            options.append(f"{flag} {shlex.quote(','.join(str(v) for v in value))}")
        else:
            options.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(options)
