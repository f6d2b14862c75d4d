"""``sdo-adv``: natural adversarial images from diffusion models. Heavy libraries load lazily."""
from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sdo-adv")
def main() -> None:
    """Natural adversarial images from diffusion models with shortcut (SDO) gradients."""


if __name__ == "__main__":
    main()
