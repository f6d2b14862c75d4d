"""The settings a :class:`~sdo_adv.generator.DiffusionGenerator` takes, checked without
building anything, and the sampling scheduler its ``solver`` setting gives."""
from __future__ import annotations

import warnings
from typing import Any

from .memory import MEMORY_MODES

SOLVERS = ("ddim", "dpm++")
INPUT_MAPPINGS = ("resize", "pad")
SETTINGS = ("num_inference_steps", "guidance_scale", "null_class", "solver", "class_names", "prompt_template",
            "input_mapping", "guard", "bystanders", "memory")  # DiffusionGenerator's keyword settings


def check_settings(**settings: Any) -> None:
    """ValueError naming the first of ``settings`` (DiffusionGenerator's keyword settings) that
    is unknown or out of range, without building anything."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown generator settings {unknown}; accepted: {', '.join(SETTINGS)}")
    steps = settings.get("num_inference_steps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {steps!r}")
    if settings.get("solver") not in (*SOLVERS, None):
        raise ValueError(f"unknown solver {settings['solver']!r}; accepted: {', '.join(SOLVERS)} or None")
    if settings.get("input_mapping", "resize") not in INPUT_MAPPINGS:
        raise ValueError(f"unknown input_mapping {settings['input_mapping']!r}; accepted: {', '.join(INPUT_MAPPINGS)}")
    bystanders = settings.get("bystanders") or ()
    if not isinstance(bystanders, (list, tuple)) or not all(isinstance(b, str) and b.strip() for b in bystanders):
        raise ValueError(f"bystanders must be a list of classifier specs, got {bystanders!r}")
    if settings.get("memory", "auto") not in ("auto", *MEMORY_MODES):
        raise ValueError(f"unknown memory option {settings['memory']!r}; accepted: auto, {', '.join(MEMORY_MODES)}")


def sampling_scheduler(scheduler: Any, solver: str | None) -> Any:
    """A copy of ``scheduler`` converted for deterministic sampling, with sample clipping and
    thresholding switched off (their clamps zero the gradient of clipped elements)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    config = dict(scheduler.config)
    overrides = {k: False for k in ("clip_sample", "thresholding") if config.get(k)}
    if overrides:
        warnings.warn(f"scheduler options {sorted(overrides)} clamp samples and kill their gradients; "
                      "they are switched off for differentiable sampling", stacklevel=3)
    if solver is None:
        return type(scheduler).from_config(config, **overrides)
    if solver == "ddim":
        return DDIMScheduler.from_config(config, **overrides)
    if solver == "dpm++":
        return DPMSolverMultistepScheduler.from_config(
            config, **overrides, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown solver {solver!r}; accepted: {', '.join(SOLVERS)} or None")
