"""The typed settings of an attack run, checked on construction (no model is loaded)."""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..attacks.sdo import OPTIMIZE, SAMPLERS
from ..class_names import NAMED_SETS
from ..estimators import per_depth
from ..generator_settings import SOLVERS
from ..losses import FIDELITY_NORMS, LOSSES
from ..masks import MASK_MODES
from ..picard import HOLDS
from ..rates import learning_rate, rates_per_depth
from .errors import RunError

TARGET_MODES = ("random", "least-likely", "next")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
# Settings that may differ when a run is resumed: they change no item's result.
RESUME_FREE = ("batch_size", "device", "trust_pickle", "out")
# Keys of run.json written by earlier versions, and their fields now.
LEGACY_KEYS = {"gradient": "estimator"}
# The fields that are SDOAttack's arguments of the same name.
ATTACK_FIELDS = ("steps", "lr", "estimator", "depth", "loss", "kappa", "fidelity", "fidelity_norm", "fidelity_halflife",
                 "latent_bound", "optimize", "early_stop", "sampler", "sweeps", "tol", "hold", "guard_weight",
                 "guard_kappa", "mask_mode")
# Fields absent from the run.json of earlier versions whose values then were not today's defaults.
EARLIER = {"judges": [], "fidelity": 50.0, "fidelity_halflife": None,  # before 0.2
           "guard": "none",  # before the guard, SDOAttack had none
           "fidelity_norm": "l2",  # before the option, the error was the squared one
           "bystanders": []}


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
    estimator: str = "auto"
    """Gradient estimator, or one per depth joined by commas, or ``auto`` (``skip`` at the first
    of several depths, ``sdo`` at the others; see :func:`sdo_adv.estimators.per_depth`)."""
    steps: int = 50
    """Attack iterations."""
    lr: float | tuple[float, ...] = 0.05
    """Adam learning rate on the latent, or the rate at each depth in turn (the last one serving
    further depths)."""
    depth: tuple[float, ...] = (0.2, 0.25, 0.5)
    """Inversion depths, increasing fractions of the sampling schedule in (0, 1]: images not
    yet fooled at one depth start again at the next (a single number is one depth)."""
    fidelity: float = 40.0
    """Weight of the pixel error to the original in the attack loss."""
    fidelity_norm: str = "l1"
    """That error: ``l2`` (mean squared) or ``l1`` (mean absolute: fewer changed pixels)."""
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
    bystanders: tuple[str, ...] | str = "auto"
    """Classifier specs the change should not move: the victim's gradient loses its components
    along their margin gradients (:mod:`sdo_adv.bystanders`); never the victim or a judge.
    ``auto``: the first three of the generator's recommended ones that are not the classifier,
    the guard or a judge; ``none`` or ``()``: none."""
    loss: str = "cw"
    """Attack loss: ``cw`` margin or ``ce``."""
    kappa: float = 0.0
    """Confidence margin of the ``cw`` loss."""
    latent_bound: float | None = 1.0
    """L-inf bound on the change of the start latent (and conditioning); None: unbounded."""
    optimize: str = "latent"
    """What is optimized: ``latent``, ``cond`` (the conditioning embedding) or ``both``."""
    early_stop: bool = True
    """Stop a sample at its first success; else run every step and keep the smallest L2."""
    sampler: str = "sequential"
    """``sequential`` or ``picard`` (DDIM only)."""
    sweeps: int = 1
    """Picard sweeps per iteration."""
    tol: float | None = None
    """Picard: stop the sweeps once the largest relative update falls below it."""
    hold: str = "output"
    """Picard: what a sweep holds fixed, ``output`` or ``clean``."""
    guard: str = "auto"
    """A classifier spec that must keep reading the true class (it joins the loss and gates
    success), ``none``, or ``auto``: the generator's recommended guard, if it names one."""
    guard_weight: float = 1.0
    """Weight of the guard's hinge in the loss."""
    guard_kappa: float = 0.0
    """The guard's margin (true-class logit over the largest other) that its hinge asks for and
    success requires."""
    solver: str | None = None
    """Sampling scheduler: ``ddim`` or ``dpm++``; None keeps the generator's stored value."""
    dtype: str = "float32"
    """The generator's weights: ``float32``, ``float16`` or ``bfloat16`` (the latent, the
    optimizer state and the loss stay float32)."""
    class_names: str | None = None
    """Class names for prompts: ``imagenet``, ``cifar10``, ``cifar100``, an ImageNet subset
    (``imagenet-22k``) or a file of one name per line; None: the classifier's, else the
    generator's stored ones."""
    prompt_template: str | None = None
    """Prompt of a class, ``{}`` standing for its name; None: the generator's stored one, else
    ``a photo of a {}``."""
    negative_prompt: str | None = None
    """Prompt of the unconditional branch of classifier-free guidance (guidance_scale != 1)."""
    mask_dir: str | None = None
    """A folder of one grayscale PNG mask per input, named as the input (see
    :mod:`sdo_adv.runs.masks`): white may change, black is kept; None changes whole images."""
    mask_mode: str = "composite"
    """How masks are kept: ``composite`` (in pixel space) or ``blend`` (also in the latent at
    every sampling step; sequential sampler only); see :mod:`sdo_adv.masks`."""

    def __post_init__(self) -> None:
        for name in ("classifier", "generator", "input", "out"):
            value = getattr(self, name)
            blank = not str(value).strip() if name in ("classifier", "generator") else not str(value)  # " " is a path
            if not isinstance(value, (str, Path)) or blank:
                raise RunError(f"{name} is required: a non-empty string, got {value!r}", name)
        _integer(self, "steps", 1)
        _integer(self, "batch_size", 1)
        _integer(self, "seed", None)
        if self.num_inference_steps is not None:
            _integer(self, "num_inference_steps", 1)
        depths = (self.depth,) if isinstance(self.depth, (int, float)) else self.depth
        if not isinstance(depths, (tuple, list)) or not depths or not all(
                isinstance(d, (int, float)) and not isinstance(d, bool) and 0 < d <= 1 for d in depths) \
                or any(a >= b for a, b in zip(depths, depths[1:])):
            raise RunError(f"depth must be a fraction in (0, 1] or increasing fractions, got {self.depth!r}", "depth")
        object.__setattr__(self, "depth", tuple(float(d) for d in depths))
        try:
            object.__setattr__(self, "lr", learning_rate(self.lr))
        except ValueError as error:
            raise RunError(str(error), "lr") from None
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
        for name in ("trust_pickle", "early_stop"):
            if not isinstance(getattr(self, name), bool):
                raise RunError(f"{name} must be a bool, got {getattr(self, name)!r}", name)
        if not isinstance(self.judges, (list, tuple)) or not all(isinstance(j, str) and j.strip() for j in self.judges):
            raise RunError(f"judges must be a sequence of classifier specs, got {self.judges!r}", "judges")
        object.__setattr__(self, "judges", tuple(j.strip() for j in self.judges))
        if self.classifier in self.judges:
            raise RunError(f"the attacked classifier {self.classifier} cannot judge its own attack", "judges")
        bystanders = (self.bystanders,) if isinstance(self.bystanders, str) else self.bystanders
        if not isinstance(bystanders, (list, tuple)) or not all(isinstance(b, str) and b.strip() for b in bystanders):
            raise RunError(f"bystanders must be 'auto', 'none' or classifier specs, got {self.bystanders!r}",
                           "bystanders")
        bystanders = tuple(b.strip() for b in bystanders)
        if len(bystanders) > 1 and {"auto", "none"} & set(bystanders):
            raise RunError(f"bystanders 'auto' and 'none' stand alone, got {', '.join(bystanders)}", "bystanders")
        object.__setattr__(self, "bystanders", "auto" if bystanders == ("auto",) else
                           () if bystanders == ("none",) else bystanders)
        for b in () if self.bystanders == "auto" else self.bystanders:
            if b == self.classifier or b in self.judges:
                raise RunError(f"{b} cannot be a bystander: it is the attacked classifier or a judge (a judge is "
                               "never in the loss)", "bystanders")
        self._check_attack_settings()
        self._check_generator_settings()
        if not Path(self.input).exists():
            raise RunError(f"input {self.input} does not exist", "input")
        source, out = Path(self.input).resolve(), Path(self.out).resolve()
        if source.is_dir() and (out == source or (self.labels is None and out.is_relative_to(source))):
            raise RunError(f"out {self.out} is the input folder" + ("" if out == source else " or inside it")
                           + ": its images would overwrite or join the inputs; use another output folder", "out")
        if self.mask_dir is not None and not (isinstance(self.mask_dir, (str, Path)) and Path(self.mask_dir).is_dir()):
            raise RunError(f"mask_dir {self.mask_dir} is not a folder", "mask_dir")
        if self.labels is not None and not Path(self.labels).is_file():
            raise RunError(f"labels file {self.labels} does not exist", "labels")
        if self.targeted is not None and self.targeted not in TARGET_MODES and not Path(self.targeted).is_file():
            raise RunError(f"targeted {self.targeted!r} is neither {', '.join(TARGET_MODES)} nor an existing CSV "
                           "file with columns file,target", "targeted")

    def _check_attack_settings(self) -> None:
        for name, accepted in (("loss", LOSSES), ("fidelity_norm", FIDELITY_NORMS), ("optimize", OPTIMIZE),
                               ("sampler", SAMPLERS), ("hold", HOLDS), ("mask_mode", MASK_MODES)):
            _choice(self, name, accepted)
        if self.mask_mode == "blend" and self.sampler != "sequential":
            raise RunError(f"mask_mode blend needs the sequential sampler, not {self.sampler}", "mask_mode")
        for name in ("kappa", "guard_weight", "guard_kappa"):
            _number(self, name)
        if self.kappa < 0:
            raise RunError(f"kappa must be >= 0, got {self.kappa}", "kappa")
        _integer(self, "sweeps", 1)
        for name in ("latent_bound", "tol"):
            if getattr(self, name) is not None:
                _number(self, name)
                if getattr(self, name) <= 0:
                    raise RunError(f"{name} must be > 0 or None, got {getattr(self, name)}", name)
        if self.guard_weight < 0:
            raise RunError(f"guard_weight must be >= 0, got {self.guard_weight}", "guard_weight")
        if not isinstance(self.guard, str) or not self.guard.strip():
            raise RunError(f"guard must be a classifier spec, 'auto' or 'none', got {self.guard!r}", "guard")
        if self.guard == self.classifier:
            raise RunError(f"the attacked classifier {self.classifier} cannot guard its own attack", "guard")
        if self.guard in self.judges:
            raise RunError(f"{self.guard} cannot both guard (in the loss) and judge (never in the loss)", "guard")
        if not isinstance(self.estimator, str):
            raise RunError(f"estimator must be a name or names joined by commas, got {self.estimator!r}", "estimator")
        try:
            estimators = per_depth(self.estimator, len(self.depth), self.optimize != "latent")
        except ValueError as err:
            raise RunError(str(err), "estimator") from err
        if self.optimize != "latent" and not all(e.reaches_condition for e in estimators):
            raise RunError(f"estimator {self.estimator!r} gives the conditioning no gradient: optimize "
                           f"{self.optimize!r} needs another estimator", "optimize")

    def _check_generator_settings(self) -> None:
        if self.solver is not None:
            _choice(self, "solver", SOLVERS)
        _choice(self, "dtype", DTYPES)
        for name in ("class_names", "prompt_template", "negative_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise RunError(f"{name} must be a string, got {value!r}", name)
        if self.class_names is not None and not self.class_names.strip():
            raise RunError("class_names must name a set or a file, got an empty string", "class_names")
        if self.prompt_template is not None:
            try:
                ok = "{}" in self.prompt_template and self.prompt_template.format("x") is not None
            except (IndexError, KeyError, ValueError):
                ok = False
            if not ok:
                raise RunError(f"prompt_template must hold one {{}} for the class name (and no other braces), "
                               f"got {self.prompt_template!r}", "prompt_template")

    @property
    def targets_csv(self) -> str | None:
        """The targets CSV, when ``targeted`` names one."""
        return self.targeted if self.targeted is not None and self.targeted not in TARGET_MODES else None

    def resolved(self) -> AttackRunConfig:
        """A copy with the input, output, labels, mask-folder, targets-CSV and class-names paths made absolute."""
        absolute = {k: str(Path(getattr(self, k)).resolve()) for k in ("input", "out", "labels", "mask_dir")
                    if getattr(self, k) is not None}
        if self.class_names is not None and self.class_names.lower() not in NAMED_SETS \
                and Path(self.class_names).is_file():
            absolute["class_names"] = str(Path(self.class_names).resolve())
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
        defaults = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                    for f in fields(cls) if f.default is not MISSING}  # as to_dict writes them
        renamed = {**defaults, **EARLIER, **{LEGACY_KEYS.get(k, k): v for k, v in data.items()}}
        depth = renamed["depth"]
        renamed["depth"] = [depth] if isinstance(depth, (int, float)) else list(depth)  # one depth before 0.3
        return {k: v for k, v in renamed.items() if k in {f.name for f in fields(cls)}}

    def changes_from(self, recorded: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{field: (recorded value, this value)}`` for each setting that differs from
        ``recorded`` (a run.json's settings) and would change results (all but :data:`RESUME_FREE`)."""
        old, new = self.recorded(recorded), self.to_dict()
        same = {k: old.get(k) == v for k, v in new.items()}
        try:  # the rates as run, one per depth: 0.05 is (0.05, 0.05) at two depths
            same["lr"] = rates_per_depth(old["lr"], len(old["depth"])) == rates_per_depth(self.lr, len(self.depth))
        except (KeyError, TypeError, ValueError):
            pass
        return {k: (old.get(k), v) for k, v in new.items() if k not in RESUME_FREE and not same[k]}


def refused_resume(out: Path, changes: dict[str, tuple[Any, Any]]) -> RunError:
    """The error for a folder ``out`` whose run had other settings: ``changes`` maps each
    field to its (recorded, requested) values; the remedy names the recorded ones."""
    listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    return RunError(f"{out} holds a run with other settings ({listed})", "out", fix="resume",
                    values={k: old for k, (old, _) in changes.items()})


def _integer(config: AttackRunConfig, name: str, minimum: int | None) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RunError(f"{name} must be an integer, got {value!r}", name)
    if minimum is not None and value < minimum:
        raise RunError(f"{name} must be >= {minimum}, got {value}", name)


def _choice(config: AttackRunConfig, name: str, accepted: tuple[str, ...]) -> None:
    if getattr(config, name) not in accepted:
        raise RunError(f"{name} must be one of {', '.join(accepted)}, got {getattr(config, name)!r}", name)


def _number(config: AttackRunConfig, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RunError(f"{name} must be a finite number, got {value!r}", name)
