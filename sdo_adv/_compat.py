"""Workarounds for known breakages between the libraries this package builds on."""
from __future__ import annotations

import importlib
import sys


def import_robustbench_utils():
    """Import ``robustbench.utils``.

    robustbench 1.1.1 imports ``autoattack``, but the PyPI distribution of AutoAttack
    (``pyautoattack``) installs the same code as ``pyautoattack``; register it under the name
    robustbench expects when the original package is absent.
    """
    if importlib.util.find_spec("autoattack") is None:
        import pyautoattack
        import pyautoattack.state

        sys.modules.setdefault("autoattack", pyautoattack)
        sys.modules.setdefault("autoattack.state", pyautoattack.state)
    return importlib.import_module("robustbench.utils")
