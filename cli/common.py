"""Helpers shared by the commands (click only, so that ``sdo-adv --help`` stays fast)."""
from __future__ import annotations

import click


def click_error(err: ValueError) -> click.ClickException:
    """A click error for a :class:`sdo_adv.runs.RunError`, naming the option at fault."""
    option = getattr(err, "option", None)
    if option:
        return click.BadParameter(str(err), param_hint=f"'--{option.replace('_', '-')}'")
    return click.ClickException(str(err))
