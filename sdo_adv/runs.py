"""Attack runs over a dataset: input reading, the resumable manifest, and the run's outputs.

Images are float tensors ``(B, C, H, W)`` (one image ``(C, H, W)``) with values in [0, 1].
Adversarial images are written as 8-bit PNGs, and every figure in the manifest (predictions,
success, fidelity) is measured on the PNG as re-read, not on the float tensor.

Output folder: one PNG per item, ``manifest.jsonl`` (one JSON row per finished item, append
only, so a re-run resumes), ``report.md``, ``grid.png`` and ``run.json`` (resolved options and
package versions). Under ``torchrun`` / ``accelerate launch`` each rank attacks a fixed shard
and appends to ``manifest.rank<r>.jsonl``; rank 0 merges the parts into ``manifest.jsonl`` at
the end (``sdo-adv merge`` does it after a crash).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import metrics
from .distributed import Process, current_process
from .estimators import parse_estimator
from .imaging import convert_channels, resize
from .loading import load_classifier, load_generator
from .reporting import save_grid, to_uint8

MANIFEST, REPORT, GRID, RUN = "manifest.jsonl", "report.md", "grid.png", "run.json"
PART_GLOB = "manifest.rank*.jsonl"
LOCK = ".lock"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
RESERVED_NAMES = frozenset({GRID, "evaluation.png"})
MAX_STEM = 200  # output names stay within file systems' 255-byte limit, with room for temp-file affixes
TARGET_MODES = ("random", "least-likely", "next")
# Options that may differ when a run is resumed: they do not change any item's result.
RESUME_FREE = ("batch_size", "device", "config", "trust_pickle")
VERSIONED = ("torch", "diffusers", "timm", "torchattacks", "robustbench", "sdo-adv")
GRID_ITEMS = 16


class RunError(ValueError):
    """A problem with the inputs of a run, found before any model compute; ``option`` names
    the command-line option at fault, if one is."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


# ---- images ------------------------------------------------------------------------------------
def read_image(path: Path) -> np.ndarray:
    """Decode an image file to uint8 ``(H, W, C)``: C = 1 for grayscale modes, else 3 (alpha dropped)."""
    from PIL import Image

    with Image.open(path) as im:
        gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
        pixels = np.array(im.convert("L" if gray else "RGB"))
    return pixels[..., None] if gray else pixels


def to_tensor(pixels: np.ndarray, channels: int, size: tuple[int, int] | None = None) -> Tensor:
    """uint8 or [0, 1] float ``(H, W, C)`` -> float32 ``(channels, H, W)`` in [0, 1], optionally
    resized (bilinear, antialiased when shrinking) to ``size``."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    x = convert_channels(x, channels)
    return (resize(x, size) if size is not None else x)[0].clamp(0, 1)


def save_png(image: Tensor, path: Path) -> None:
    """Write a ``(C, H, W)`` [0, 1] image as an 8-bit PNG atomically (fsynced temp file + os.replace)."""
    from PIL import Image

    pixels = to_uint8(image.detach().cpu()).permute(1, 2, 0).numpy()
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(f, format="PNG")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- datasets ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One input image. ``source``: its path relative to the input folder, or
    ``<file>.npz#<index>``; ``name``: file name of its adversarial PNG; ``path`` (files) or
    ``index`` (npz) locates its pixels."""

    source: str
    label: int
    name: str
    path: Path | None = None
    index: int = -1


@dataclass
class Dataset:
    """Readable images of an input with their labels, in a fixed order.

    ``kind``: ``imagefolder``, ``csv`` (folder + labels CSV) or ``npz``. ``channels``: 1 if
    every image is grayscale, else 3 (grayscale images are repeated to RGB). ``sizes``:
    number of images per ``(H, W)``. ``skipped``: unreadable files, source -> reason.
    ``array``: the npz images ``(N, H, W, C)``, uint8 or float in [0, 1].
    """

    input: Path
    kind: str
    items: list[Item]
    channels: int
    sizes: Counter[tuple[int, int]]
    skipped: dict[str, str] = field(default_factory=dict)
    array: np.ndarray | None = None

    def load(self, items: Sequence[Item], size: tuple[int, int] | None = None) -> Tensor:
        """Pixels of ``items``: ``(B, channels, H, W)`` float32 in [0, 1], resized to ``size``."""
        return torch.stack([to_tensor(self.array[it.index] if self.array is not None else read_image(it.path),
                                      self.channels, size) for it in items])


def read_dataset(input_path: str | Path, labels: str | Path | None = None) -> Dataset:
    """List an ImageFolder tree (class index = sorted subfolder order, or the subfolder name
    when all are integers), a folder with a ``file,label`` CSV, or an ``.npz`` with ``images``
    and ``labels``. A folder with a CSV takes the CSV's files, in its order. Every file is
    decoded once here, so that unreadable ones go to ``skipped`` (with the reason) before any
    attack; bad labels raise :class:`RunError`."""
    root = Path(input_path)
    if root.suffix == ".npz" and root.is_file():
        if labels is not None:
            raise RunError("--labels applies to image folders; an .npz carries its own labels", "labels")
        return _read_npz(root)
    if not root.is_dir():
        raise RunError(f"{root} is neither a folder nor an .npz file", "input")
    if labels is not None:
        return _read_files(root, "csv", list(read_csv(Path(labels), "label").items()))
    return _read_files(root, "imagefolder", _image_folder(root))


def read_csv(path: Path, column: str) -> dict[str, int]:
    """Rows of a CSV with columns ``file,<column>`` -> ``{file: class index}``."""
    option = "labels" if column == "label" else "targeted"
    if not path.is_file():
        raise RunError(f"{column}s file {path} does not exist", option)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [name.strip() for name in reader.fieldnames or []]
            if not {"file", column} <= set(fields):
                raise RunError(f"{path}: expected columns file,{column}, found {','.join(fields) or 'none'}", option)
            reader.fieldnames = fields
            rows: dict[str, int] = {}
            for line, row in enumerate(reader, start=2):
                file, value = (row["file"] or "").strip(), (row[column] or "").strip()
                if not re.fullmatch(r"\d+", value):
                    raise RunError(f"{path} line {line}: {column} {value!r} of {file!r} is not a class index", option)
                if PurePosixPath(file).name in ("", ".."):
                    raise RunError(f"{path} line {line}: {file!r} does not name a file", option)
                key = PurePosixPath(file).as_posix()
                if key in rows:
                    raise RunError(f"{path} line {line}: {file!r} is listed twice", option)
                rows[key] = int(value)
    except (UnicodeDecodeError, csv.Error) as err:
        raise RunError(f"{path} is not a UTF-8 CSV file: {err}", option) from err
    if not rows:
        raise RunError(f"{path} has no rows", option)
    return rows


def _image_folder(root: Path) -> list[tuple[str, int]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise RunError(f"{root} has no class subfolders; for a flat folder pass --labels with a file,label CSV",
                       "input")
    numeric = all(c.isdecimal() for c in classes)
    index = {c: int(c) if numeric else i for i, c in enumerate(classes)}
    return [(p.relative_to(root).as_posix(), index[c]) for c in sorted(classes, key=index.__getitem__)
            for p in sorted((root / c).rglob("*"))
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]


def _read_files(root: Path, kind: str, entries: list[tuple[str, int]]) -> Dataset:
    names = _png_names([PurePosixPath(src).with_suffix("").as_posix().replace("/", "__") for src, _ in entries])
    items, skipped, sizes, gray = [], {}, Counter(), 0
    for (source, label), name in zip(entries, names):
        try:
            pixels = read_image(root / source)
        except FileNotFoundError:
            skipped[source] = "file not found"
            continue
        except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for corrupt files
            skipped[source] = f"unreadable: {err}"
            continue
        items.append(Item(source, label, name, path=root / source))
        sizes[pixels.shape[:2]] += 1
        gray += pixels.shape[2] == 1
    if not items:
        raise RunError(f"no readable images in {root} ({len(skipped)} unreadable)", "input")
    return Dataset(root, kind, items, 1 if gray == len(items) else 3, sizes, skipped)


def _read_npz(path: Path) -> Dataset:
    try:
        with np.load(path) as data:
            found = list(data.files)
            arrays = {k: data[k] for k in ("images", "labels") if k in found}
    except Exception as err:  # numpy, zipfile and zlib raise many types for a damaged file
        raise RunError(f"cannot read {path}: {type(err).__name__}: {err}", "input") from err
    if len(arrays) < 2:
        raise RunError(f"{path} must hold arrays 'images' and 'labels', found {', '.join(found) or 'none'}", "input")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim == 3:
        images = images[..., None]
    elif images.ndim == 4 and images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape[:3]:
        raise RunError(f"{path}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in (1, 3) "
                       f"and N, H, W >= 1, got shape {images.shape}", "input")
    if images.dtype.kind == "f":
        if not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
            raise RunError(f"{path}: float images must be finite and in [0, 1]", "input")
    elif images.dtype != np.uint8:
        raise RunError(f"{path}: images must be uint8 or float in [0, 1], got {images.dtype}", "input")
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu" or (labels < 0).any():
        raise RunError(f"{path}: labels must be {len(images)} non-negative integers, got "
                       f"{labels.dtype} of shape {labels.shape}", "input")
    width = len(str(len(images) - 1))
    names = _png_names([f"{path.stem}_{i:0{width}d}" for i in range(len(images))])
    items = [Item(f"{path.name}#{i}", int(y), name, index=i) for i, (y, name) in enumerate(zip(labels, names))]
    return Dataset(path, "npz", items, images.shape[-1], Counter({images.shape[1:3]: len(images)}), array=images)


def _png_names(stems: list[str]) -> list[str]:
    """Safe, unique PNG file names (``[A-Za-z0-9._-]``, at most ``MAX_STEM`` characters before
    ``-2``, ``-3``... on collision), avoiding the run's own output names."""
    taken, names = set(RESERVED_NAMES), []
    for stem in stems:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip(".")[:MAX_STEM] or "image"
        name, k = f"{base}.png", 1
        while name in taken:
            k += 1
            name = f"{base}-{k}.png"
        taken.add(name)
        names.append(name)
    return names


# ---- manifest ------------------------------------------------------------------------------------
class Manifest:
    """Append-only JSON-lines record of finished items, keyed by ``source``.

    A torn last line (an interrupted append: no final newline) is dropped on reading and cut
    from the file before the next append.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        data = path.read_bytes() if path.exists() else b""
        end = data.rfind(b"\n") + 1
        for number, line in enumerate(data[:end].splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise RunError(f"{path} line {number} is not JSON ({err}); fix or remove it") from err
                self.rows[row["source"]] = row
        if end < len(data):
            with path.open("r+b") as f:
                f.truncate(end)

    def append(self, row: dict[str, Any]) -> None:
        """Append one row durably (flush + fsync)."""
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows[row["source"]] = row


def part_path(out: Path, rank: int) -> Path:
    """Rank ``rank``'s manifest part in a multi-process run."""
    return out / f"manifest.rank{rank}.jsonl"


def finished_rows(out: Path) -> dict[str, dict[str, Any]]:
    """Rows of every finished item in ``out``: ``manifest.jsonl`` and any ranks' parts."""
    rows: dict[str, dict[str, Any]] = {}
    for path in [out / MANIFEST, *sorted(out.glob(PART_GLOB))]:
        rows.update(Manifest(path).rows)
    return rows


@contextmanager
def run_lock(out: Path, exclusive: bool = False) -> Iterator[None]:
    """Hold ``out/.lock``: shared while a run's ranks write, exclusive for ``sdo-adv merge``,
    so that a merge never folds manifests that a running rank still appends to."""
    import fcntl

    with (out / LOCK).open("a") as f:
        try:
            fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{out} is in use: " + ("an attack is still writing to it" if exclusive
                                                   else "sdo-adv merge is running on it"), "out") from None
        yield


def merge_manifests(out: Path, order: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Fold the ranks' parts into ``manifest.jsonl``: each source once, in ``order`` (then any
    other sources), written atomically before the parts are removed, so a crash at any point
    loses nothing. Returns the merged rows."""
    parts = sorted(out.glob(PART_GLOB))
    rows = finished_rows(out)
    if parts:
        position = {source: i for i, source in enumerate(order)}
        ranked = sorted(rows.values(), key=lambda r: position.get(r["source"], len(position)))
        write_text(out / MANIFEST, "".join(json.dumps(r) + "\n" for r in ranked), durable=True)
        for part in parts:
            part.unlink()
    return rows


# ---- seeds, targets, small helpers ------------------------------------------------------------
def item_seed(seed: int, source: str) -> int:
    """A 63-bit seed for one item, from the run seed and the item's source (not its batch)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{source}".encode()).digest()[:8], "little") >> 1


def random_target(label: int, num_classes: int, seed: int) -> int:
    """A class drawn uniformly from all but ``label`` (torchattacks' random-target rule)."""
    t = int(torch.randint(num_classes - 1, (1,), generator=torch.Generator().manual_seed(seed)))
    return t + (t >= label)


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the finite values, None when there are none."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def versions() -> dict[str, str | None]:
    """Versions of Python and the packages a run depends on (None if not installed)."""
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def fidelity(adv: Tensor, orig: Tensor) -> dict[str, list[float | None]]:
    """Per-image L2, L-inf, SSIM and PSNR (dB; None when identical) of ``adv`` against ``orig``."""
    return {"l2": metrics.l2(adv, orig).tolist(), "linf": metrics.linf(adv, orig).tolist(),
            "ssim": metrics.ssim(adv, orig).tolist(),
            "psnr": [v if math.isfinite(v) else None for v in metrics.psnr(adv, orig).tolist()]}


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


# ---- the run's outputs -----------------------------------------------------------------------------
@dataclass
class RunOutputs:
    """The summary, ``report.md`` and ``grid.png`` of an output folder, from its manifest rows
    (no models needed: ``sdo-adv merge`` writes them after a crash)."""

    out: Path
    dataset: Dataset
    options: dict[str, Any]
    size: tuple[int, int]
    notices: list[str]
    rows: dict[str, dict[str, Any]]

    @classmethod
    def from_folder(cls, out: str | Path) -> "RunOutputs":
        """The outputs of the run recorded in ``out/run.json``, with the dataset re-read."""
        out = Path(out)
        if not (out / RUN).is_file():
            raise RunError(f"{out} holds no {RUN}: not an sdo-adv attack output folder", "out")
        info = json.loads((out / RUN).read_text())
        o = info["config"]
        return cls(out, read_dataset(o["input"], o["labels"]), o, tuple(info["dataset"]["image_size"]),
                   info.get("notices", []), finished_rows(out))

    def merge(self) -> None:
        """:meth:`fold`, unless an attack is still writing to the folder."""
        with run_lock(self.out, exclusive=True):
            self.fold()

    def fold(self) -> None:
        """Fold the ranks' manifest parts into ``manifest.jsonl`` (see :func:`merge_manifests`)
        and take the merged rows; no lock (rank 0 of the run itself folds at its end)."""
        self.rows = merge_manifests(self.out, [it.source for it in self.dataset.items])

    def ordered(self) -> list[dict[str, Any]]:
        """Manifest rows of the dataset's items, in dataset order."""
        return [self.rows[it.source] for it in self.dataset.items if it.source in self.rows]

    def summary(self) -> dict[str, Any]:
        """Totals over the manifest: ``n``, ``success_rate``, ``clean_accuracy``, fidelity means
        over the successful images (``mean_l2``, ``mean_linf``, ``mean_ssim``, ``mean_psnr``),
        ``seconds_per_image``, ``failed`` (source -> reason: non-finite loss or gradient) and
        ``skipped`` (source -> reason)."""
        rows = self.ordered()
        ok = [r for r in rows if r["success"]]
        return {"n": len(rows), "success_rate": len(ok) / len(rows) if rows else None,
                "clean_accuracy": mean([float(r["pred_before"] == r["label"]) for r in rows]),
                **{f"mean_{k}": mean([r[k] for r in ok]) for k in ("l2", "linf", "ssim", "psnr")},
                "seconds_per_image": mean([r["seconds"] for r in rows]),
                "failed": {r["source"]: r["failure"] for r in rows if r.get("failure")},
                "skipped": dict(self.dataset.skipped)}

    def write(self) -> dict[str, Any]:
        """Write ``report.md`` and ``grid.png``; return the summary."""
        s = self.summary()
        self._write_report(s)
        self._write_grid(s)
        return s

    def _write_report(self, s: dict[str, Any]) -> None:
        o = self.options
        rule = ("prediction equals the target" if o["targeted"] else "prediction differs from the label")
        lines = [f"# sdo-adv attack: {o['classifier']} through {o['generator']}", "",
                 "| images | success rate | clean accuracy | mean L2 | mean L-inf | mean SSIM | mean PSNR (dB) "
                 "| seconds / image |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
                 f"| {s['n']} | {_fmt(s['success_rate'], '.1%')} | {_fmt(s['clean_accuracy'], '.1%')} "
                 f"| {_fmt(s['mean_l2'], '.3f')} | {_fmt(s['mean_linf'], '.3f')} | {_fmt(s['mean_ssim'], '.3f')} "
                 f"| {_fmt(s['mean_psnr'], '.2f')} | {_fmt(s['seconds_per_image'], '.2f')} |", "",
                 f"Success is measured on the saved 8-bit PNGs ({rule}; targeted: {o['targeted'] or 'no'}). "
                 f"Fidelity means are over the successful images, PNG against the original at "
                 f"{self.size[0]}x{self.size[1]}. Gradient {o['gradient']}, {o['steps']} steps, lr {o['lr']}, "
                 f"depth {o['depth']}, {o['num_inference_steps']} sampling steps, guidance "
                 f"{o['guidance_scale']}, seed {o['seed']}; all settings in {RUN}.", "",
                 f"## Failed images ({len(s['failed'])})", ""]
        lines += [f"- `{src}`: {reason}" for src, reason in s["failed"].items()] or ["none"]
        lines += ["", f"## Skipped files ({len(s['skipped'])})", ""]
        lines += [f"- `{src}`: {reason}" for src, reason in s["skipped"].items()] or ["none"]
        lines += ["", "## Notices", ""] + ([f"- {m}" for m in self.notices] or ["none"])
        write_text(self.out / REPORT, "\n".join(lines) + "\n")

    def _write_grid(self, s: dict[str, Any]) -> None:
        rows = self.ordered()[:GRID_ITEMS]
        if not rows:
            return
        by_source = {it.source: it for it in self.dataset.items}
        originals = self.dataset.load([by_source[r["source"]] for r in rows], self.size)
        adversarials = torch.stack([to_tensor(read_image(self.out / r["file"]), originals.shape[1]) for r in rows])
        save_grid(originals, adversarials, [r["label"] for r in rows], [r["pred_after"] for r in rows],
                  self.out / GRID, title=f"SDOAttack on {self.options['classifier']}: "
                                         f"{_fmt(s['success_rate'], '.0%')} of {s['n']} successful")


# ---- the attack run ------------------------------------------------------------------------------
class AttackRun:
    """An attack over a dataset into an output folder, resumable from its manifest.

    ``options``: the command's options (``classifier``, ``generator``, ``input``, ``out``,
    ``labels``, ``targeted``, ``gradient``, ``steps``, ``lr``, ``depth``,
    ``num_inference_steps``, ``guidance_scale``, ``batch_size``, ``seed``, ``device``,
    ``config``); None for ``num_inference_steps`` / ``guidance_scale`` keeps the generator's
    stored values. Construction reads the data, loads the models and checks labels and
    targets, raising :class:`RunError` before any model compute; :meth:`execute` attacks.
    Under ``torchrun`` / ``accelerate launch`` every rank runs the same command.
    """

    def __init__(self, options: dict[str, Any], notice: Callable[[str], None] = print,
                 process: Process | None = None) -> None:
        from sdo_adv.attacks import SDOAttack

        self.process = process or current_process(options["device"])
        self.notices: list[str] = []
        self._notice = notice
        try:
            self.random_estimator = parse_estimator(options["gradient"]).arg == "random"
        except ValueError as err:
            raise RunError(str(err), "gradient") from err
        o = _absolute_paths(options)
        targeted = o["targeted"]
        self.dataset = read_dataset(o["input"], o["labels"])
        csv_targets = read_csv(Path(targeted), "target") if targeted not in (None, *TARGET_MODES) else None

        self.device = torch.device(self.process.device if o["device"] == "cuda" else o["device"])
        self.classifier = _load(lambda: load_classifier(o["classifier"], pretrained=True,
                                                        trust_pickle=bool(o.get("trust_pickle"))),
                                "classifier").to(self.device).eval()
        gen_kwargs = {k: o[k] for k in ("num_inference_steps", "guidance_scale") if o[k] is not None}
        generator = _load(lambda: load_generator(o["generator"], **gen_kwargs), "generator").to(self.device)
        o["num_inference_steps"], o["guidance_scale"] = generator.num_inference_steps, generator.guidance_scale
        self.num_classes: int | None = self.classifier.num_classes
        self.targets = self._check_classes(targeted, csv_targets, generator)

        if self.random_estimator and o["batch_size"] > 1:
            self._say("sdo:random draws one step per iteration for a whole batch: attacking one image at a "
                      "time so that results do not depend on batching")
            o["batch_size"] = 1
        self.options = json.loads(json.dumps(o))
        self.out = Path(o["out"])
        self._check_resume()
        try:
            self.attack = SDOAttack(self.classifier, generator, steps=o["steps"], lr=o["lr"],
                                    gradient=o["gradient"], depth=o["depth"])
        except ValueError as err:
            raise RunError(str(err)) from err
        if targeted == "least-likely":
            self.attack.set_mode_targeted_least_likely(quiet=True)
        elif targeted == "next":
            n = self.num_classes
            self.attack.set_mode_targeted_by_function(lambda x, y: (y + 1) % n, quiet=True)
        self.size = (generator.image_size, generator.image_size)
        self._data_notices(generator.image_channels)
        self.out.mkdir(parents=True, exist_ok=True)
        for item in self.dataset.items:
            inside(self.out, item.name)
        self.outputs = RunOutputs(self.out, self.dataset, self.options, self.size, self.notices,
                                  finished_rows(self.out))
        self.manifest = Manifest(part_path(self.out, self.process.rank) if self.process.world > 1
                                 else self.out / MANIFEST)

    # ---- checks before compute ----------------------------------------------------------------
    def _check_classes(self, targeted: str | None, csv_targets: dict[str, int] | None,
                       generator: Any) -> dict[str, int] | None:
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
        if targeted is not None and n is None:
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

    def _check_resume(self) -> None:
        run_file = self.out / RUN
        if not run_file.exists():
            return
        old = json.loads(run_file.read_text())["config"]
        changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in self.options.items()
                   if k not in RESUME_FREE and old.get(k) != v]
        if changed:
            raise RunError(f"{self.out} holds a run with other settings ({'; '.join(changed)}); "
                           "resume with the same settings or use another --out", "out")

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
            self._say(f"{sum(other.values())} of {len(data.items)} images are not the generator's "
                      f"{self.size[0]}x{self.size[1]} ({found}): resized (bilinear, antialiased) before the "
                      "attack; PNGs and fidelity are at the generator's size")
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
        rank is done) merge the manifests and write report.md and grid.png; return the summary
        (see :meth:`RunOutputs.summary`) on rank 0, None on the other ranks."""
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
            for stale in self.out.glob(".*.tmp"):  # left by a killed run
                stale.unlink()
        self.process.barrier()  # every rank has read the same finished items before any writes more
        mine = self.process.shard(pending)
        n_ok = n_done = 0
        bs = self.options["batch_size"]
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
        images = self.dataset.load(batch, self.size)
        labels = torch.tensor([it.label for it in batch])
        seeds = [item_seed(self.options["seed"], it.source) for it in batch]
        self._pin_targets(batch, seeds)
        if self.random_estimator:
            self.attack.estimator = parse_estimator(self.options["gradient"], seed=seeds[0])
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
        success = pred == target if target is not None else pred != labels
        fid = fidelity(saved, images)
        seconds = (time.perf_counter() - start) / len(batch)
        return [{"source": it.source, "file": it.name, "label": it.label,
                 "target": None if target is None else int(target[i]),
                 "pred_before": int(result.clean_pred[i]), "pred_after": int(pred[i]),
                 "success": bool(success[i]), **{k: v[i] for k, v in fid.items()},
                 "iterations": int(result.iterations[i]), "failure": result.failure[i],
                 "reconstruction_error": float(result.reconstruction_error[i]), "seconds": seconds}
                for i, it in enumerate(batch)]

    def _pin_targets(self, batch: list[Item], seeds: list[int]) -> None:
        """Random and CSV targets are fixed per item (random ones from the item's seed) and given
        to the attack through ``set_mode_targeted_by_function``: torchattacks' random mode draws
        from the global generator in batch order, and ``set_mode_targeted_by_label`` would make
        SDOAttack condition the generator on the target class."""
        mode = self.options["targeted"]
        if mode is None or mode in ("least-likely", "next"):
            return
        if mode == "random":
            targets = torch.tensor([random_target(it.label, self.num_classes, s) for it, s in zip(batch, seeds)])
        else:
            targets = torch.tensor([self.targets[it.source] for it in batch])
        self.attack.set_mode_targeted_by_function(lambda x, y: targets.to(y.device), quiet=True)

    # ---- outputs ---------------------------------------------------------------------------------
    def _write_run_file(self) -> None:
        data = self.dataset
        info = {"config": self.options, "versions": versions(),
                "dataset": {"kind": data.kind, "n_items": len(data.items), "n_skipped": len(data.skipped),
                            "channels": data.channels, "image_size": list(self.size),
                            "num_classes": self.num_classes},
                "notices": self.notices}
        write_text(self.out / RUN, json.dumps(info, indent=2) + "\n")


def _absolute_paths(options: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` with the input, output, labels and targets-CSV paths made absolute."""
    o = dict(options)
    for key in ("input", "out", "labels", "targeted"):
        if o[key] is not None and not (key == "targeted" and o[key] in TARGET_MODES):
            o[key] = str(Path(o[key]).resolve())
    return o


def _load(factory: Callable[[], Any], option: str) -> Any:
    """Call a model loader; turn its spec and file errors into a :class:`RunError` for ``option``."""
    try:
        return factory()
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise RunError(str(err), option) from err


def inside(out: Path, name: str) -> Path:
    """``out / name``, refusing any name that would lead outside ``out`` (output file names
    come from input file names, which the run does not control)."""
    path = out / name
    if PurePosixPath(name).name != name or name in ("", ".", "..") or path.resolve().parent != out.resolve():
        raise RunError(f"output name {name!r} would be written outside {out}", "input")
    return path


def write_text(path: Path, text: str, durable: bool = False) -> None:
    """Write a text file atomically (temp file + os.replace); ``durable``: fsync it first."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
