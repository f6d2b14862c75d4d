"""The typed settings of an attack run, checked on construction (no model is loaded)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..estimators import parse_estimator
from .errors import RunError

TARGET_MODES = ("random", "least-likely", "next")
DEVICES = ("cpu", "cuda")
# Settings that may differ when a run is resumed: they change no item's result.
RESUME_FREE = ("batch_size", "device", "trust_pickle")
# Keys of run.json written by earlier versions, and their fields now.
LEGACY_KEYS = {"gradient": "estimator"}


@dataclass(frozen=True)
class AttackRunConfig:
    """Settings of an :class:`~sdo_adv.runs.AttackRun`. Construction checks every value and
    raises :class:`~sdo_adv.runs.RunError` naming the field at fault; models are not loaded."""

    classifier: str
    """Classifier to attack: a spec for :func:`sdo_adv.load_classifier`."""
    generator: str
    """Diffusion model: a spec for :func:`sdo_adv.load_generator`."""
    input: str
    """An ImageFolder tree, a flat folder (with ``labels``) or an ``.npz`` of images and labels."""
    out: str
    """Output folder; a run with the same folder and settings resumes."""
    labels: str | None = None
    """CSV with columns ``file,label`` for a flat folder."""
    targeted: str | None = None
    """None (untargeted), ``random``, ``least-likely``, ``next`` (label + 1) or a CSV with
    columns ``file,target``."""
    estimator: str = "sdo"
    """Gradient estimator (see :mod:`sdo_adv.estimators`)."""
    steps: int = 50
    """Attack iterations."""
    lr: float = 0.05
    """Adam learning rate on the latent."""
    depth: float = 0.3
    """Inversion depth, a fraction of the sampling schedule in (0, 1]."""
    fidelity: float = 200.0
    """Weight of the mean squared pixel error to the original in the attack loss."""
    fidelity_halflife: float | None = 10.0
    """Iterations over which the fidelity weight halves; None keeps it constant."""
    num_inference_steps: int | None = None
    """Sampling steps; None keeps the generator's stored value."""
    guidance_scale: float | None = None
    """Classifier-free guidance; None keeps the generator's stored value."""
    batch_size: int = 8
    """Images per attack batch (halved on a CUDA out-of-memory error)."""
    seed: int = 0
    """Per-image seeds derive from it and the image's source."""
    device: str | None = None
    """``cpu`` or ``cuda``; None: cuda when available."""
    trust_pickle: bool = False
    """Load checkpoints that need arbitrary unpickling (it can run code): trusted files only."""
    judges: tuple[str, ...] = ()
    """Classifier specs that read every adversarial image and are never attacked nor in the
    loss; the share of successes they all still read as the true class is the judge agreement."""

    def __post_init__(self) -> None:
        for name in ("classifier", "generator", "input", "out"):
            value = getattr(self, name)
            if not isinstance(value, (str, Path)) or not str(value).strip():
                raise RunError(f"{name} is required: a non-empty string, got {value!r}", name)
        _integer(self, "steps", 1)
        _integer(self, "batch_size", 1)
        _integer(self, "seed", None)
        if self.num_inference_steps is not None:
            _integer(self, "num_inference_steps", 1)
        _number(self, "lr")
        if self.lr <= 0:
            raise RunError(f"lr must be > 0, got {self.lr}", "lr")
        _number(self, "depth")
        if not 0 < self.depth <= 1:
            raise RunError(f"depth must be a fraction in (0, 1], got {self.depth}", "depth")
        if self.guidance_scale is not None:
            _number(self, "guidance_scale")
        _number(self, "fidelity")
        if self.fidelity < 0:
            raise RunError(f"fidelity must be >= 0, got {self.fidelity}", "fidelity")
        if self.fidelity_halflife is not None:
            _number(self, "fidelity_halflife")
            if self.fidelity_halflife <= 0:
                raise RunError(f"fidelity_halflife must be > 0, got {self.fidelity_halflife}", "fidelity_halflife")
        if self.device not in (None, *DEVICES):
            raise RunError(f"device must be one of {', '.join(DEVICES)} or None, got {self.device!r}", "device")
        if not isinstance(self.trust_pickle, bool):
            raise RunError(f"trust_pickle must be a bool, got {self.trust_pickle!r}", "trust_pickle")
        if not isinstance(self.judges, (list, tuple)) or not all(isinstance(j, str) and j.strip() for j in self.judges):
            raise RunError(f"judges must be a sequence of classifier specs, got {self.judges!r}", "judges")
        object.__setattr__(self, "judges", tuple(j.strip() for j in self.judges))
        if self.classifier in self.judges:
            raise RunError(f"the attacked classifier {self.classifier} cannot judge its own attack", "judges")
        try:
            parse_estimator(self.estimator)
        except (ValueError, TypeError) as err:
            raise RunError(str(err), "estimator") from err
        if not Path(self.input).exists():
            raise RunError(f"input {self.input} does not exist", "input")
        if self.labels is not None and not Path(self.labels).is_file():
            raise RunError(f"labels file {self.labels} does not exist", "labels")
        if self.targeted is not None and self.targeted not in TARGET_MODES and not Path(self.targeted).is_file():
            raise RunError(f"targeted {self.targeted!r} is neither {', '.join(TARGET_MODES)} nor an existing CSV "
                           "file with columns file,target", "targeted")

    @property
    def targets_csv(self) -> str | None:
        """The targets CSV, when ``targeted`` names one."""
        return self.targeted if self.targeted is not None and self.targeted not in TARGET_MODES else None

    def resolved(self) -> AttackRunConfig:
        """A copy with the input, output, labels and targets-CSV paths made absolute."""
        absolute = {k: str(Path(getattr(self, k)).resolve()) for k in ("input", "out", "labels")
                    if getattr(self, k) is not None}
        if self.targets_csv is not None:
            absolute["targeted"] = str(Path(self.targets_csv).resolve())
        return replace(self, **absolute)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (paths as strings, judges as a list)."""
        return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
                for k, v in asdict(self).items()}

    @classmethod
    def recorded(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The settings recorded in a run.json (of this or an earlier version), by field name,
        without checking them (the files they name may be gone)."""
        names = {f.name for f in fields(cls)}
        renamed = {"judges": [], "fidelity": 50.0, "fidelity_halflife": None,  # absent before 0.2: their values then
                   **{LEGACY_KEYS.get(k, k): v for k, v in data.items()}}
        return {k: v for k, v in renamed.items() if k in names}

    def changes_from(self, recorded: dict[str, Any]) -> list[str]:
        """``field: old -> new`` for each setting that differs from ``recorded`` and would change
        results (all but :data:`RESUME_FREE`)."""
        old = self.recorded(recorded)
        return [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in self.to_dict().items()
                if k not in RESUME_FREE and old.get(k) != v]


def _integer(config: AttackRunConfig, name: str, minimum: int | None) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RunError(f"{name} must be an integer, got {value!r}", name)
    if minimum is not None and value < minimum:
        raise RunError(f"{name} must be >= {minimum}, got {value}", name)


def _number(config: AttackRunConfig, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RunError(f"{name} must be a finite number, got {value!r}", name)
