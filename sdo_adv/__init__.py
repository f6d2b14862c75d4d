"""sdo-adv: natural adversarial images from diffusion models with shortcut (SDO) gradients.

Attributes load lazily (PEP 562) so that the command line starts without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {
    "Condition": "generator", "DiffusionGenerator": "generator", "Generator": "generator",
    "Inversion": "generator",
    "Estimator": "estimators", "parse_estimator": "estimators",
    "ImageClassifier": "classifier",
    "embedded_models": "loading", "load_classifier": "loading", "load_generator": "loading",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
