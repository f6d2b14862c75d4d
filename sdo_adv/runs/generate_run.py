"""Adversarial images generated from class labels into an output folder: resumable, sharded.

Output folder: ``<class>_<index>.png`` per sample (index four digits) with its plain draw
under ``draws/``, ``manifest.jsonl`` (class, seed, success, predictions, judge predictions;
every figure measured on the PNGs as re-read), ``summary.json`` (the keys of ``sdo-adv
attack``'s; clean accuracy is the victim's on the plain draws, fidelity is to the draw),
``report.md``, ``grid.png`` (draws above, adversarial images below) and ``run.json``.
"""
from __future__ import annotations

import json
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import metrics
from ..attacks import SDOGenerate, UniversalSDO
from ..attacks.universal import SETTINGS
from ..distributed import Process, current_process
from ..estimators import parse_estimators
from ..files import write_text
from ..generator_settings import SOLVERS
from ..judging import attack_success, judge_predictions, natural_success
from ..loading import check_classifier_spec, generator_settings, load_generator
from ..rates import learning_rate
from .attack_run import _load, item_seed, one_at_a_time, run_classes, run_classifier
from .config import DEVICES, DTYPES, _choice, _integer, _number, refused_resume
from .dataset import Dataset, Item
from .errors import RunError
from .io import clear_stale, read_image, save_png, to_tensor
from .manifest import MANIFEST, Manifest, finished_rows, part_path, run_lock
from .prompts import label_classes, run_prompts
from .report import RUN, RunOutputs, versions

DRAWS = "draws"
# Settings that may differ when a run is resumed: they change no sample.
RESUME_FREE = ("batch_size", "device", "trust_pickle", "per_class", "classes", "out")


@dataclass(frozen=True)
class GenerateRunConfig:
    """Settings of a :class:`GenerateRun`, checked on construction (no model is loaded).
    The attack settings are :class:`~sdo_adv.attacks.SDOGenerate`'s arguments of the same name."""

    classifier: str
    generator: str
    out: str
    classes: tuple[int, ...] | None = None
    """Classes to generate; None: every class of the classifier."""
    per_class: int = 10
    judges: tuple[str, ...] = ()
    estimator: str = "sdo"
    steps: int = 50
    lr: float | tuple[float, ...] = 0.05
    depth: tuple[float, ...] = (0.3, 0.5)
    fidelity: float = 200.0
    fidelity_halflife: float | None = 10.0
    latent_bound: float | None = 1.0
    shell: bool = True
    guidance_scale: float | None = 2.0
    guard: str = "auto"
    num_inference_steps: int | None = None
    solver: str | None = None
    dtype: str = "float32"
    class_names: str | None = None
    prompt_template: str | None = None
    batch_size: int = 8
    seed: int = 0
    """A sample's seed derives from it, its class and its index (not its batch)."""
    device: str | None = None
    trust_pickle: bool = False
    universal: str | None = None
    """A folder of :class:`~sdo_adv.attacks.UniversalSDO` changes (``sdo-adv universal``): sample
    with them, one sampling pass per image, instead of optimizing each image."""

    def __post_init__(self) -> None:
        for name in ("classifier", "generator", "out"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise RunError(f"{name} is required: a non-empty string, got {getattr(self, name)!r}", name)
        for name, minimum in (("per_class", 1), ("steps", 1), ("batch_size", 1), ("seed", None)):
            _integer(self, name, minimum)
        if self.num_inference_steps is not None:
            _integer(self, "num_inference_steps", 1)
        if self.classes is not None:
            if not self.classes or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in self.classes):
                raise RunError(f"classes must be class indices >= 0, got {self.classes!r}", "classes")
            object.__setattr__(self, "classes", tuple(sorted(set(self.classes))))
        try:
            object.__setattr__(self, "lr", learning_rate(self.lr))
        except ValueError as error:
            raise RunError(str(error), "lr") from None
        _number(self, "fidelity")
        if self.fidelity < 0:
            raise RunError(f"fidelity must be >= 0, got {self.fidelity}", "fidelity")
        depths = (self.depth,) if isinstance(self.depth, (int, float)) else tuple(self.depth)
        if not depths or not all(isinstance(d, (int, float)) and 0 < d <= 1 for d in depths) or \
                any(a >= b for a, b in zip(depths, depths[1:])):
            raise RunError(f"depth must be a fraction in (0, 1] or increasing fractions, got {self.depth!r}", "depth")
        object.__setattr__(self, "depth", tuple(float(d) for d in depths))
        for name in ("fidelity_halflife", "latent_bound", "guidance_scale"):
            if getattr(self, name) is not None:
                _number(self, name)
        for name in ("fidelity_halflife", "latent_bound"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise RunError(f"{name} must be > 0 or None, got {getattr(self, name)}", name)
        if self.solver is not None:
            _choice(self, "solver", SOLVERS)
        _choice(self, "dtype", DTYPES)
        if self.device is not None:
            _choice(self, "device", DEVICES)
        object.__setattr__(self, "judges", tuple(self.judges))
        if self.universal is not None and not (Path(self.universal) / SETTINGS).is_file():
            raise RunError(f"{self.universal} holds no {SETTINGS}: not an `sdo-adv universal` folder", "universal")
        if self.classifier in self.judges or self.guard in (self.classifier, *self.judges):
            raise RunError("the attacked classifier, the guard and the judges must be different models", "judges")
        try:
            parse_estimators(self.estimator)
        except (ValueError, TypeError) as err:
            raise RunError(str(err), "estimator") from err

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class GenerateRun:
    """Adversarial samples of classes into an output folder, resumable from its manifest.

    Construction checks the settings and loads the models, raising :class:`RunError` before
    any sampling; :meth:`execute` generates. Under ``torchrun`` / ``accelerate launch`` every
    rank takes a fixed shard of the pending samples.
    """

    def __init__(self, config: GenerateRunConfig, notice: Callable[[str], None] = print,
                 process: Process | None = None) -> None:
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.process = process or current_process(device)
        self.out, self._notice, self.notices = Path(config.out).resolve(), notice, []
        stored = _load(lambda: generator_settings(config.generator), "generator")
        guard = (stored.get("guard") or "none") if config.guard == "auto" else config.guard
        for spec, field in [(config.classifier, "classifier"), (guard, "guard"), *[(j, "judges") for j in config.judges]]:
            if spec != "none":
                _load(lambda: check_classifier_spec(spec), field)
        self.device = torch.device(self.process.device if device == "cuda" else device)
        self.classifier = run_classifier(config.classifier, "classifier", self.device, config.trust_pickle)
        self.judges = {spec: run_classifier(spec, "judges", self.device, config.trust_pickle) for spec in config.judges}
        classes = run_classes(config.classes, self.classifier.num_classes)
        overrides = {k: getattr(config, k) for k in ("num_inference_steps", "solver") if getattr(config, k) is not None}
        generator = _load(lambda: load_generator(config.generator, torch_dtype=getattr(torch, config.dtype),
                                                 **overrides), "generator").to(self.device)
        if generator.class_conditional and generator.num_classes is not None and max(classes) >= generator.num_classes:
            raise RunError(f"class {max(classes)} is outside the generator's {generator.num_classes} classes", "classes")
        size = generator.image_size
        self.dataset = Dataset(self.out / DRAWS, "generated", [
            Item(f"{c}/{i}", c, f"{c}_{i:04d}.png", self.out / DRAWS / f"{c}_{i:04d}.png")
            for c in classes for i in range(config.per_class)], generator.image_channels, Counter({(size, size): 1}))
        self.prompts = run_prompts(config.generator, label_classes(config.classifier, config.class_names),
                                   self.dataset, stored, config.prompt_template, None, config.guidance_scale)
        self.universal = self._universal(config, generator, classes)
        self.config = replace(config, classes=tuple(classes), guard=guard,
                              universal=str(Path(config.universal).resolve()) if self.universal else None,
                              guidance_scale=self.universal.settings["guidance_scale"] if self.universal
                              else config.guidance_scale,
                              num_inference_steps=generator.num_inference_steps,
                              solver=config.solver or stored.get("solver", "ddim"))
        self._check_resume()
        if self.universal is None:
            self.config, self.random_estimator = one_at_a_time(self.config, self._say, "generating one sample")
        else:
            self.random_estimator = False  # the learned changes sample without an estimator
        try:
            self.attack = SDOGenerate(
                self.classifier, generator,
                guard=None if guard == "none" else run_classifier(guard, "guard", self.device, config.trust_pickle),
                **{k: getattr(config, k) for k in ("steps", "lr", "estimator", "depth", "fidelity", "fidelity_halflife",
                                                   "latent_bound", "shell", "guidance_scale")})
        except ValueError as err:
            raise RunError(str(err)) from err
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / DRAWS).mkdir(exist_ok=True)
        settings = {**self.config.to_dict(), "targeted": None}
        self.outputs = RunOutputs(self.out, self.dataset, settings, (size, size), self.notices, finished_rows(self.out),
                                  command="generate")
        self.manifest = Manifest(part_path(self.out, self.process.rank) if self.process.world > 1
                                 else self.out / MANIFEST)

    def _universal(self, config: GenerateRunConfig, generator: Any, classes: tuple[int, ...]) -> UniversalSDO | None:
        """The learned changes of ``config.universal`` (None without), checked to cover ``classes``."""
        if config.universal is None:
            return None
        try:
            universal = UniversalSDO.load(config.universal, self.classifier, generator)
        except ValueError as err:
            raise RunError(f"{config.universal}: {err}", "universal") from err
        missing = sorted(set(classes) - set(universal.classes))
        if missing:
            raise RunError(f"{config.universal} has no change for classes {missing} (it has {universal.classes})",
                           "classes")
        return universal

    def _check_resume(self) -> None:
        if not (self.out / RUN).exists():
            return
        recorded = json.loads((self.out / RUN).read_text())["config"]
        changed = {k: (recorded.get(k), v) for k, v in self.config.to_dict().items()
                   if k not in RESUME_FREE and recorded.get(k) != v}
        if changed:
            raise refused_resume(self.out, changed)

    def execute(self, progress: bool = True) -> dict[str, Any] | None:
        """Generate this process's share of the samples not yet finished, then (rank 0, once
        every rank is done) merge the manifests and write the outputs; return the summary on
        rank 0, None on the other ranks."""
        with run_lock(self.out):
            pending = [it for it in self.dataset.items if it.source not in self.outputs.rows]
            if len(pending) < len(self.dataset.items):
                self._say(f"resuming: {len(self.dataset.items) - len(pending)} of {len(self.dataset.items)} "
                          f"samples already in {MANIFEST}")
            if self.process.rank == 0:
                info = {"config": self.config.to_dict(), "versions": versions(), "command": "generate",
                        "notices": self.notices}
                write_text(self.out / RUN, json.dumps(info, indent=2) + "\n")
                clear_stale(self.out)
            self.process.barrier()
            mine, bs = self.process.shard(pending), self.config.batch_size
            with tqdm(total=len(mine), desc="sdo-adv generate", unit="img",
                      disable=not progress or self.process.rank != 0) as bar:
                for start in range(0, len(mine), bs):
                    for row in self._generate_batch(mine[start:start + bs]):
                        self.manifest.append(row)
                        bar.update()
            self.process.barrier()
            if self.process.rank != 0:
                return None
            self.outputs.fold()
            return self.outputs.write()

    def _generate_batch(self, batch: list[Item]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        labels = torch.tensor([it.label for it in batch])
        seeds = [item_seed(self.config.seed, it.source) for it in batch]
        prompts = self.prompts(batch) if self.prompts is not None else None
        self.attack.prompts = prompts
        if self.universal is not None:
            adv, draws = self.universal.sample(labels, seeds)
            iterations, failures = [0] * len(batch), [None] * len(batch)
        else:
            if self.random_estimator:
                self.attack.set_estimator(self.config.estimator, seed=seeds[0])
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*converting explicitly")
                adv = self.attack.generate(labels, seeds)
            draws, result = self.attack.last_draws, self.attack.last_result
            iterations, failures = result.iterations.tolist(), result.failure
        channels = self.dataset.channels
        for image, draw, item in zip(adv, draws, batch):
            save_png(draw, item.path)
            save_png(image, self.out / item.name)
        saved = torch.stack([to_tensor(read_image(self.out / it.name), channels) for it in batch])
        draws = self.dataset.load(batch)
        with torch.no_grad():
            pred_before = self.classifier(draws.to(self.device)).argmax(1).cpu()
            pred = self.classifier(saved.to(self.device)).argmax(1).cpu()
        success = attack_success(pred_before, pred, labels)
        judged = judge_predictions(self.judges, saved)
        natural = natural_success(success, labels, judged)
        measured = metrics.measure(saved, draws)
        seconds = (time.perf_counter() - start) / len(batch)
        return [{"source": it.source, "file": it.name, "draw": f"{DRAWS}/{it.name}", "label": it.label,
                 "seed": seeds[i], "prompt": prompts[i] if prompts else None, "target": None,
                 "pred_before": int(pred_before[i]), "pred_after": int(pred[i]), "success": bool(success[i]),
                 "judge_preds": {k: int(v[i]) for k, v in judged.items()}, "natural": bool(natural[i]),
                 **{k: v[i] for k, v in measured.items()}, "iterations": iterations[i],
                 "failure": failures[i], "seconds": seconds}
                for i, it in enumerate(batch)]

    def _say(self, message: str) -> None:
        self.notices.append(message)
        if self.process.rank == 0:
            self._notice(f"notice: {message}")
