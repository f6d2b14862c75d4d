"""An attack over a dataset into an output folder: resumable, sharded under a launcher.

Output folder: one PNG per item (every figure in the manifest is measured on the PNG as
re-read, not on the float tensor), ``manifest.jsonl``, ``summary.json``, ``report.md``,
``grid.png`` and ``run.json`` (settings and package versions).
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from .. import metrics
from ..attacks import SDOAttack
from ..attacks.depths import depth_schedule
from ..bystanders import recommended
from ..distributed import Process, current_process
from ..estimators import parse_estimators
from ..files import write_text
from ..generator import DiffusionGenerator
from ..generator_settings import check_settings
from ..judging import attack_success, judge_predictions, natural_success
from ..loading import (UnsafeCheckpointError, check_classifier_spec, generator_settings, load_classifier,
                       load_generator)
from .config import ATTACK_FIELDS, AttackRunConfig, refused_resume
from .dataset import Item, read_csv, read_dataset
from .errors import RunError
from .io import clear_stale, inside, read_image, save_png, to_tensor
from .manifest import MANIFEST, Manifest, finished_rows, part_path, run_lock
from .masks import load_masks, mask_files
from .prompts import label_classes, run_prompts, use_negative_prompt
from .report import REPORT, RUN, RunOutputs, versions

T = TypeVar("T")
DEFAULT_SAMPLING_STEPS = 50  # DiffusionGenerator's, for generators that store none
# Settings a run may leave to the generator (their value when left): a resume takes the recorded ones.
LEFT_TO_GENERATOR = {"num_inference_steps": None, "guidance_scale": None, "solver": None, "prompt_template": None,
                     "guard": "auto", "bystanders": "auto"}


class AttackRun:
    """An attack over a dataset into an output folder, resumable from its manifest.

    Construction checks the settings against the data and the model specs, then loads the
    models and checks labels and targets, raising :class:`RunError` before any model compute;
    :meth:`execute` attacks. Under ``torchrun`` / ``accelerate launch`` every rank runs the
    same settings and takes a fixed shard of the pending items.
    """

    def __init__(self, config: AttackRunConfig, notice: Callable[[str], None] = print,
                 process: Process | None = None) -> None:
        config = config.resolved()
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.process = process or current_process(device)
        self.notices: list[str] = []
        self._notice = notice
        self.out = Path(config.out)
        config = self._resumed(config)
        classes = label_classes(config.classifier, config.class_names)
        self.dataset = read_dataset(config.input, config.labels, classes.synsets if classes else None)
        self.dataset.keep_names({src: row["file"] for src, row in finished_rows(self.out).items()})
        self.masks = mask_files(self.dataset, config.mask_dir) if config.mask_dir is not None else None
        csv_targets = read_csv(Path(config.targets_csv), "target")[0] if config.targets_csv else None
        stored, guard, bystanders = self._check_specs(config)
        self.prompts = run_prompts(config.generator, classes, self.dataset, stored, config.prompt_template,
                                   config.negative_prompt, config.guidance_scale)
        config, self.random_estimator = one_at_a_time(config, self._say, "attacking one image")

        self.device = torch.device(self.process.device if device == "cuda" else device)
        self.classifier = run_classifier(config.classifier, "classifier", self.device, config.trust_pickle)
        guard_model = None if guard == "none" else run_classifier(guard, "guard", self.device, config.trust_pickle)
        self.judges = {spec: run_classifier(spec, "judges", self.device, config.trust_pickle) for spec in config.judges}
        bystander_models = [run_classifier(spec, "bystanders", self.device, config.trust_pickle) for spec in bystanders]
        overrides = {k: getattr(config, k) for k in ("num_inference_steps", "guidance_scale", "solver")
                     if getattr(config, k) is not None}
        generator = _load(lambda: load_generator(config.generator, torch_dtype=getattr(torch, config.dtype),
                                                 **overrides), "generator").to(self.device)
        if config.negative_prompt is not None:
            use_negative_prompt(generator, config.negative_prompt)
        # recorded with the values in use, so that a resume checks them
        self.config = replace(config, num_inference_steps=generator.num_inference_steps,
                              guidance_scale=generator.guidance_scale, guard=guard, bystanders=bystanders,
                              solver=config.solver or stored.get("solver", "ddim"),
                              prompt_template=self.prompts.template if self.prompts else config.prompt_template)
        self.num_classes: int | None = self.classifier.num_classes
        self.targets = self._check_classes(csv_targets, generator)
        try:
            self.attack = SDOAttack(self.classifier, generator, **{k: getattr(config, k) for k in ATTACK_FIELDS},
                                    guard=guard_model, bystanders=bystander_models)
        except ValueError as err:
            raise RunError(str(err)) from err
        if config.targeted == "least-likely":
            self.attack.set_mode_targeted_least_likely(quiet=True)
        elif config.targeted == "next":
            n = self.num_classes
            self.attack.set_mode_targeted_by_function(lambda x, y: (y + 1) % n, quiet=True)
        self.size = (generator.image_size, generator.image_size)
        self._data_notices(generator.image_channels)
        self.out.mkdir(parents=True, exist_ok=True)
        for item in self.dataset.items:
            inside(self.out, item.name)
        self.outputs = RunOutputs(self.out, self.dataset, self.config.to_dict(), self.size, self.notices,
                                  finished_rows(self.out))
        self.manifest = Manifest(part_path(self.out, self.process.rank) if self.process.world > 1
                                 else self.out / MANIFEST)

    # ---- checks before any model loads ----------------------------------------------------------
    @staticmethod
    def _check_specs(config: AttackRunConfig) -> tuple[dict[str, Any], str, tuple[str, ...]]:
        """The model specs, the estimator against the generator's schedule and the sampler
        against its solver, from the stored settings alone (no weights are read); return
        the generator's stored settings, the guard's spec (``none`` for no guard) and the
        bystanders' specs (``auto`` resolved)."""
        stored = _load(lambda: generator_settings(config.generator), "generator")
        _load(lambda: check_settings(**stored), "generator")
        guard = (stored.get("guard") or "none") if config.guard == "auto" else config.guard
        if guard in (config.classifier, *config.judges):
            raise RunError(f"the generator's recommended guard {guard} is the attacked classifier or a judge: "
                           "name another guard, or none", "guard")
        bystanders = tuple(recommended(stored.get("bystanders") or (), (config.classifier, guard, *config.judges))
                           if config.bystanders == "auto" else config.bystanders)
        specs = [(config.classifier, "classifier"), (guard, "guard"), *[(j, "judges") for j in config.judges],
                 *[(b, "bystanders") for b in bystanders]]
        for spec, field in specs:
            if spec != "none":
                _load(lambda: check_classifier_spec(spec), field)
        solver = config.solver or stored.get("solver", "ddim")
        if config.sampler == "picard" and solver not in ("ddim", None):  # None: the stored scheduler's own
            raise RunError(f"the picard sampler needs the ddim solver, not {solver}", "sampler")
        n = config.num_inference_steps or stored.get("num_inference_steps", DEFAULT_SAMPLING_STEPS)
        try:
            depth_schedule(n, config.depth, config.lr, config.estimator, config.optimize != "latent")
        except ValueError as err:
            raise RunError(f"{err} (depths {', '.join(map(str, config.depth))} of {n} sampling steps)",
                           "estimator") from err
        return stored, guard, bystanders

    def _resumed(self, config: AttackRunConfig) -> AttackRunConfig:
        """``config``, resuming the run in ``out`` if there is one: the settings it leaves to the
        generator take the values that run used; RunError if it changes any other."""
        run_file = self.out / RUN
        if not run_file.exists():
            return config
        recorded = json.loads(run_file.read_text())["config"]
        used = AttackRunConfig.recorded(recorded)
        taken = {k: used[k] for k, left in LEFT_TO_GENERATOR.items()
                 if getattr(config, k) == left and used.get(k) not in (None, left)}
        changed = {k: v for k, v in config.changes_from(recorded).items() if k not in taken}
        if changed:  # before taking the recorded values: they are checked against the new settings
            raise refused_resume(self.out, changed)
        if taken:
            self._say("resuming with the run's " + ", ".join(f"{k} {v!r}" for k, v in taken.items()))
            config = replace(config, **taken)
        return config

    # ---- checks once the models are loaded, before any compute ----------------------------------
    def _check_classes(self, csv_targets: dict[str, int] | None,
                       generator: DiffusionGenerator) -> dict[str, int] | None:
        """Labels (and CSV targets) against the classifier's and generator's classes; the CSV
        targets of the dataset's items."""
        n, n_gen = self.num_classes, generator.num_classes if generator.class_conditional else None
        for item in self.dataset.items:
            if n is not None and item.label >= n:
                raise RunError(f"label {item.label} of {item.source} is outside the classifier's {n} classes "
                               f"[0, {n})", "labels" if self.dataset.kind == "csv" else "input")
            if n_gen is not None and item.label >= n_gen:
                raise RunError(f"label {item.label} of {item.source} is outside the generator's {n_gen} classes",
                               "generator")
        classes = self.prompts.classes if self.prompts is not None else None
        if classes is not None and n is not None and len(classes.names) != n:
            raise RunError(f"{classes.source} name {len(classes.names)} classes but the classifier has {n}",
                           "class_names")
        if self.config.targeted is not None and n is None:
            raise RunError("targeted attacks need the classifier's number of classes", "targeted")
        if csv_targets is None:
            return None
        missing = [it.source for it in self.dataset.items if it.source not in csv_targets]
        if missing:
            raise RunError(f"the targets CSV has no row for {len(missing)} item(s), e.g. {missing[0]!r} "
                           "(its file column must match the items' sources)", "targeted")
        bad = next((s for s, t in csv_targets.items() if n is not None and t >= n), None)
        if bad is not None:
            raise RunError(f"target {csv_targets[bad]} of {bad} is outside the classifier's {n} classes", "targeted")
        return csv_targets

    def _data_notices(self, gen_channels: int) -> None:
        data, kinds = self.dataset, {1: "grayscale", 3: "RGB"}
        if data.channels != gen_channels:
            self._say(f"the data is {kinds[data.channels]} and the generator {kinds[gen_channels]}: the attack "
                      "converts explicitly (gray->RGB by repetition, RGB->gray by luma); PNGs stay "
                      f"{kinds[data.channels]}")
        clf_channels = getattr(self.classifier, "input_size", (data.channels,))[0]
        if data.channels != clf_channels:
            self._say(f"the data is {kinds[data.channels]} and the classifier takes {kinds[clf_channels]}: "
                      "the classifier wrapper converts explicitly")
        other = {s: k for s, k in data.sizes.items() if s != self.size}
        if other:
            found = ", ".join(f"{k} at {h}x{w}" for (h, w), k in sorted(other.items()))
            how = "zero-padded (larger ones resized)" if self.attack.generator.input_mapping == "pad" else \
                "resized (bilinear, antialiased)"
            self._say(f"{sum(other.values())} of {len(data.items)} images are not the generator's "
                      f"{self.size[0]}x{self.size[1]} ({found}): {how} before the attack, as the generator "
                      "says; PNGs and fidelity are at the generator's size")
        if data.skipped:
            self._say(f"skipped {len(data.skipped)} unreadable file(s): {', '.join(data.skipped)} "
                      f"(reasons in {REPORT})")

    def _say(self, message: str) -> None:
        self.notices.append(message)
        if self.process.rank == 0:
            self._notice(f"notice: {message}")

    # ---- the attack ----------------------------------------------------------------------------
    def execute(self, progress: bool = True) -> dict[str, Any] | None:
        """Attack this process's share of the items not yet finished, then (rank 0, once every
        rank is done) merge the manifests and write the outputs; return the summary (see
        :meth:`RunOutputs.summary`) on rank 0, None on the other ranks."""
        with run_lock(self.out):
            return self._execute(progress)

    def _execute(self, progress: bool) -> dict[str, Any] | None:
        items, done = self.dataset.items, self.outputs.rows
        pending = [it for it in items if it.source not in done]
        if len(pending) < len(items):
            self._say(f"resuming: {len(items) - len(pending)} of {len(items)} items already in {MANIFEST}")
        if self.process.world > 1:
            self._say(f"{self.process.world} processes, each attacking one of every {self.process.world} pending items")
        if self.process.rank == 0:
            self._write_run_file()
            clear_stale(self.out)
        self.process.barrier()  # every rank has read the same finished items before any writes more
        mine = self.process.shard(pending)
        n_ok = n_done = 0
        bs = self.config.batch_size
        with tqdm(total=len(mine), desc="sdo-adv attack", unit="img",
                  disable=not progress or self.process.rank != 0) as bar:
            start = 0
            while start < len(mine):
                batch = mine[start:start + bs]
                try:
                    rows = self._attack_batch(batch)
                except torch.cuda.OutOfMemoryError:
                    if len(batch) == 1:
                        raise
                    bs = len(batch) // 2
                    self._say(f"out of memory with a batch of {len(batch)}: retrying with batches of {bs}")
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                for row in rows:
                    self.manifest.append(row)
                    n_ok, n_done = n_ok + row["success"], n_done + 1
                    bar.set_postfix(success=f"{n_ok / n_done:.0%}")
                    bar.update()
                start += len(batch)
        self.process.barrier()
        if self.process.rank != 0:
            return None
        self.outputs.fold()
        return self.outputs.write()

    def _attack_batch(self, batch: list[Item]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        images = self.dataset.load(batch, fit=self.attack.generator.fit)
        labels = torch.tensor([it.label for it in batch])
        prompts = self.prompts(batch) if self.prompts is not None else None
        self.attack.prompts = prompts
        if self.masks is not None:
            self.attack.mask = load_masks([self.masks[it.source] for it in batch], self.attack.generator.fit)
        seeds = [item_seed(self.config.seed, it.source) for it in batch]
        self._pin_targets(batch, seeds)
        if self.random_estimator:
            self.attack.set_estimator(self.config.estimator, seed=seeds[0])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*converting explicitly")  # said once, as a notice
            adv = self.attack(images, labels)
        result = self.attack.last_result
        paths = [self.out / it.name for it in batch]
        for image, path in zip(adv, paths):
            save_png(image, path)
        saved = torch.stack([to_tensor(read_image(p), images.shape[1]) for p in paths])
        with torch.no_grad():
            pred = self.classifier(saved.to(self.device)).argmax(1).cpu()
        target = result.target
        success = attack_success(result.clean_pred, pred, labels, target)
        judged = judge_predictions(self.judges, saved)
        natural = natural_success(success, labels, judged)
        measured = metrics.measure(saved, images)
        seconds = (time.perf_counter() - start) / len(batch)
        return [{"source": it.source, "file": it.name, "label": it.label, "prompt": prompts[i] if prompts else None,
                 "target": None if target is None else int(target[i]),
                 "pred_before": int(result.clean_pred[i]), "pred_after": int(pred[i]),
                 "success": bool(success[i]), "judge_preds": {k: int(v[i]) for k, v in judged.items()},
                 "natural": bool(natural[i]), **{k: v[i] for k, v in measured.items()},
                 "iterations": int(result.iterations[i]), "failure": result.failure[i],
                 "reconstruction_error": float(result.reconstruction_error[i]), "seconds": seconds}
                for i, it in enumerate(batch)]

    def _pin_targets(self, batch: list[Item], seeds: list[int]) -> None:
        """Random and CSV targets are fixed per item (random ones from the item's seed) and given
        to the attack through ``set_mode_targeted_by_function``: torchattacks' random mode draws
        from the global generator in batch order, and ``set_mode_targeted_by_label`` would make
        SDOAttack condition the generator on the target class."""
        mode = self.config.targeted
        if mode is None or mode in ("least-likely", "next"):
            return
        if mode == "random":
            targets = torch.tensor([random_target(it.label, self.num_classes, s) for it, s in zip(batch, seeds)])
        else:
            targets = torch.tensor([self.targets[it.source] for it in batch])
        self.attack.set_mode_targeted_by_function(lambda x, y: targets.to(y.device), quiet=True)

    def _write_run_file(self) -> None:
        data = self.dataset
        info = {"config": self.config.to_dict(), "versions": versions(),
                "dataset": {"kind": data.kind, "n_items": len(data.items), "n_skipped": len(data.skipped),
                            "channels": data.channels, "image_size": list(self.size),
                            "input_mapping": self.attack.generator.input_mapping,
                            "num_classes": self.num_classes},
                "notices": self.notices}
        write_text(self.out / RUN, json.dumps(info, indent=2) + "\n")


def one_at_a_time(config: T, say: Callable[[str], None], work: str) -> tuple[T, bool]:
    """``(config, random)``, ``random`` if an estimator is ``sdo:random``, which draws one step
    per iteration for a whole batch: then ``config`` with batches of one (said, as ``work``
    one at a time), so that results do not depend on batching."""
    random = any(e.arg == "random" for e in parse_estimators(config.estimator) or ())
    if random and config.batch_size > 1:
        say(f"sdo:random draws one step per iteration for a whole batch: {work} at a time so that results "
            "do not depend on batching")
        config = replace(config, batch_size=1)
    return config, random


def item_seed(seed: int, source: str) -> int:
    """A 63-bit seed for one item, from the run seed and the item's source (not its batch)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{source}".encode()).digest()[:8], "little") >> 1


def random_target(label: int, num_classes: int, seed: int) -> int:
    """A class drawn uniformly from all but ``label`` (torchattacks' random-target rule)."""
    t = int(torch.randint(num_classes - 1, (1,), generator=torch.Generator().manual_seed(seed)))
    return t + (t >= label)


def run_classifier(spec: str, field: str, device: torch.device, trust_pickle: bool) -> torch.nn.Module:
    """A run's classifier (victim, guard or judge) ``spec``, loaded as :func:`_load` says for
    the setting ``field``, on ``device`` in eval mode."""
    return _load(lambda: load_classifier(spec, pretrained=True, trust_pickle=trust_pickle), field).to(device).eval()


def run_classes(classes: Sequence[int] | None, num_classes: int | None) -> tuple[int, ...]:
    """The classes a run asks for (None: all ``num_classes`` of the classifier), checked
    against the classifier's; raises :class:`RunError` for ``classes``."""
    chosen = tuple(classes) if classes is not None else tuple(range(num_classes or 0))
    if not chosen or (num_classes is not None and max(chosen) >= num_classes):
        raise RunError(f"classes {list(chosen)} are not among the classifier's {num_classes} classes "
                       f"[0, {num_classes})", "classes")
    return chosen


def _load(factory: Callable[[], T], parameter: str) -> T:
    """Call a model loader or spec check; turn its spec and file errors into a :class:`RunError`
    for ``parameter``."""
    try:
        return factory()
    except UnsafeCheckpointError as err:
        raise RunError(err.problem, parameter, fix="trust_pickle") from err
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise RunError(str(err), parameter) from err
