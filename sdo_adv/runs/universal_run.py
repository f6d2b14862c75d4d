"""Training per-class universal changes into a folder (resumable from its checkpoint), then
measuring them on held-out seeds: the application layer of :class:`~sdo_adv.attacks.UniversalSDO`."""
from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..attacks import UniversalSDO
from ..attacks.universal import SETTINGS, check_pool
from ..judging import attack_success, judge_predictions, natural_success
from ..loading import check_classifier_spec, load_generator
from .attack_run import _load, item_seed, run_classes, run_classifier
from .config import refused_resume
from .errors import RunError

TRAINING = ("variable", "depth", "bound", "lr", "batch_size", "pool", "fidelity", "kappa", "estimator",
            "guidance_scale", "seed", "rank")


class UniversalRun:
    """``sdo-adv universal``: checks and loads (raising :class:`RunError` before any sampling),
    then :meth:`execute` trains to ``train_steps`` with a checkpoint every ``checkpoint_every``
    steps, with ``target_fooling`` scales the offsets down to fool that share of fresh
    calibration draws (:meth:`UniversalSDO.calibrate`; else sampling uses them whole), and
    evaluates ``eval_per_class`` held-out seeds per class (the seeds ``sdo-adv generate --seed
    <seed>`` gives its samples)."""

    def __init__(self, classifier: str, generator: str, out: str, classes: Sequence[int] | None = None,
                 train_steps: int = 100, checkpoint_every: int = 10, judges: Sequence[str] = (),
                 eval_per_class: int = 20, guard: str = "none", device: str | None = None, trust_pickle: bool = False,
                 target_fooling: float | None = None, notice: Callable[[str], None] = print, **training: Any) -> None:
        self.out, self.notice = Path(out).resolve(), notice
        if target_fooling is not None and not 0 < target_fooling <= 1:
            raise RunError(f"target_fooling must be in (0, 1], got {target_fooling}", "target_fooling")
        if target_fooling is not None and training.get("variable") == "lora":
            raise RunError("target_fooling scales the offsets; variable lora learns an adapter instead",
                           "target_fooling")
        self.target_fooling = target_fooling
        self.train_steps, self.checkpoint_every, self.eval_per_class = train_steps, checkpoint_every, eval_per_class
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        pool, batch = training.get("pool"), training.get("batch_size")
        if isinstance(pool, int) and isinstance(batch, int):  # before any model loads
            try:
                check_pool(pool, batch)
            except ValueError as err:
                raise RunError(str(err), "pool") from err
        specs = [(classifier, "classifier"), *[(j, "judges") for j in judges]] + ([(guard, "guard")] if guard != "none" else [])
        if len({s for s, _ in specs}) != len(specs):
            raise RunError("the classifier, the guard and the judges must be different models", "judges")
        for spec, field in specs:
            _load(lambda: check_classifier_spec(spec), field)
        self.classifier = run_classifier(classifier, "classifier", device, trust_pickle)
        self.judges = {spec: run_classifier(spec, "judges", device, trust_pickle) for spec in judges}
        gen = _load(lambda: load_generator(generator), "generator").to(device)
        classes = list(run_classes(classes, self.classifier.num_classes))
        guard_model = run_classifier(guard, "guard", device, trust_pickle) if guard != "none" else None
        try:
            asked = {k: v for k, v in training.items() if k in TRAINING}
            self.universal = UniversalSDO(self.classifier, gen, classes, guard=guard_model, **asked)
        except (ValueError, ImportError) as err:
            raise RunError(str(err), "variable" if isinstance(err, ImportError) else None) from err
        if (self.out / SETTINGS).is_file():
            try:
                saved = UniversalSDO.saved_settings(self.out)
            except (FileNotFoundError, ValueError, KeyError) as err:  # missing, not JSON, no settings
                raise RunError(f"{self.out} is not a readable UniversalSDO folder: {err}", "out") from err
            defaults = {k: p.default for k, p in inspect.signature(UniversalSDO).parameters.items()}
            saved = {**{k: defaults[k] for k in TRAINING if k not in saved}, **saved}  # older folders: defaults
            asked = self.universal.settings
            changed = {k: (saved[k], asked[k]) for k in (*TRAINING, "classes", "num_inference_steps")
                       if k in saved and saved[k] != asked[k]}
            models = {"classifier": classifier, "generator": generator, "guard": guard}
            trained_on = json.loads((self.out / SETTINGS).read_text()).get("figures", {})
            changed |= {k: (trained_on[k], v) for k, v in models.items() if trained_on.get(k, v) != v}
            if changed:
                raise refused_resume(self.out, changed)
            self.universal.restore(self.out)
            for figure in ("calibration", "scale"):  # the checkpoints sample with the whole offsets until calibrated
                self.universal.figures.pop(figure, None)
            self.notice(f"notice: resuming at step {self.universal.step} of {train_steps}")
        self.universal.figures.setdefault("train_seconds", 0.0)
        self.universal.figures.update({"classifier": classifier, "generator": generator, "guard": guard})

    def execute(self) -> dict[str, Any]:
        """Train, checkpointing, then evaluate; return the figures (also in ``universal.json``).
        ``train_seconds`` adds up the sessions' training time, the training pool included."""
        u, last = self.universal, [time.perf_counter()]

        def checkpoint(step: int, _loss: float) -> None:
            if step % self.checkpoint_every == 0 or step == self.train_steps:
                now = time.perf_counter()
                u.figures["train_seconds"] += now - last[0]
                last[0] = now
                u.save(self.out)

        if u.step < self.train_steps:
            u.train(self.train_steps, callback=checkpoint)
        elif u.step > self.train_steps:
            self.notice(f"notice: {self.out} was trained for {u.step} steps already, more than {self.train_steps}")
        if self.target_fooling is not None:
            try:
                calibration = u.calibrate(self.target_fooling)
            except ValueError as err:
                raise RunError(f"{err}; the trained offsets are saved in {self.out}", "target_fooling") from err
            scale, fooled = calibration["scale"], calibration["fooling"][f"{calibration['scale']:g}"]
            self.notice(f"notice: sampling applies {scale:g} of the offsets; they fool {fooled:.0%} of the "
                        "calibration draws" + (f" (target {self.target_fooling:g})" if fooled >= self.target_fooling
                                               else f", short of the target {self.target_fooling:g}"))
        u.figures["scale"] = u.settings["scale"]
        u.figures.update(self.evaluate())
        u.save(self.out)
        return u.figures

    def evaluate(self) -> dict[str, Any]:
        """Fooling rate (of the plain draws the classifier reads as their class), judge
        agreement, mean L2 to the draw and sampling speed on held-out seeds."""
        u, k = self.universal, self.eval_per_class
        if k == 0:
            return {}
        labels = torch.tensor(u.classes).repeat_interleave(k)
        seeds = [item_seed(u.settings["seed"], f"{c}/{i}") for c in u.classes for i in range(k)]
        started = time.perf_counter()
        adv, draws = u.sample(labels, seeds)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            before, after = (self.classifier(x).argmax(1).cpu() for x in (draws, adv))
        success = attack_success(before, after, labels)
        correct = before == labels
        natural = natural_success(success, labels, judge_predictions(self.judges, adv))
        figures = {"eval_per_class": k, "clean_accuracy": correct.float().mean().item(),
                   "fooling_rate": (success.sum() / correct.sum().clamp(min=1)).item(),
                   "judge_agreement": natural[success].float().mean().item() if self.judges and success.any() else None,
                   "mean_l2": (adv - draws).flatten(1).norm(dim=1).cpu()[success].mean().item() if success.any() else None,
                   "images_per_second": len(labels) / seconds, "train_steps": u.step}
        return figures
