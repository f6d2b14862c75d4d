"""Inputs of a run: an ImageFolder tree, a folder with a ``file,label`` CSV, or an ``.npz``.

Images are float tensors ``(B, C, H, W)`` (one image ``(C, H, W)``) with values in [0, 1].
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch import Tensor

from ..class_names import synset_labels
from .errors import RunError
from .io import IMAGE_EXTENSIONS, read_image, to_tensor

# names of the run's own outputs, which no adversarial PNG may take
RESERVED_NAMES = frozenset({"grid.png", "evaluation.png"})
MAX_STEM = 200  # output names stay within file systems' 255-byte limit, with room for temp-file affixes


@dataclass(frozen=True)
class Item:
    """One input image. ``source``: its path relative to the input folder, or
    ``<file>.npz#<index>``; ``name``: file name of its adversarial PNG; ``path`` (files) or
    ``index`` (npz) locates its pixels; ``prompt``: its own prompt (the labels CSV's
    ``prompt`` column), if any."""

    source: str
    label: int
    name: str
    path: Path | None = None
    index: int = -1
    prompt: str | None = None


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

    def keep_names(self, written: dict[str, str]) -> None:
        """Name the items a run already wrote (``written``: source -> file name) as it did, and
        rename any other item whose name one of those holds: inputs added to a run's folder
        never overwrite its finished results."""
        held = set(written.values()) | RESERVED_NAMES
        taken = held | {it.name for it in self.items}
        for i, it in enumerate(self.items):
            if it.source in written:
                self.items[i] = replace(it, name=written[it.source])
            elif it.name in held:
                base, k = it.name[:-len(".png")], 2
                while f"{base}-{k}.png" in taken:
                    k += 1
                self.items[i] = replace(it, name=f"{base}-{k}.png")
                taken.add(self.items[i].name)

    def load(self, items: Sequence[Item], size: tuple[int, int] | None = None,
             fit: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Pixels of ``items``: ``(B, channels, H, W)`` float32 in [0, 1], resized to ``size``,
        or brought to one size by ``fit`` (``(1, C, h, w)`` -> ``(1, C, H, W)``)."""
        pixels = [to_tensor(self.array[it.index] if self.array is not None else read_image(it.path),
                            self.channels, size) for it in items]
        # antialiased resizing can overshoot [0, 1] by rounding (white pixels at 1 + 1e-7)
        return torch.stack([fit(x[None])[0] if fit is not None else x for x in pixels]).clamp_(0, 1)


def read_dataset(input_path: str | Path, labels: str | Path | None = None,
                 synsets: Sequence[str] | None = None) -> Dataset:
    """List an ImageFolder tree (class index = sorted subfolder order; the subfolder name when
    all are integers; the position in ``synsets``, default ImageNet-1k's, when all are WordNet
    ids such as ``n01440764``), a folder with a ``file,label[,prompt]`` CSV, or an ``.npz`` with
    ``images`` and ``labels``. A folder with a CSV takes the CSV's files, in its order. Every
    file is decoded once here, so that unreadable ones go to ``skipped`` (with the reason)
    before any attack; bad labels raise :class:`RunError`."""
    root = Path(input_path)
    if root.suffix == ".npz" and root.is_file():
        if labels is not None:
            raise RunError("labels applies to image folders; an .npz carries its own labels", "labels")
        return _read_npz(root)
    if not root.is_dir():
        raise RunError(f"{root} is neither a folder nor an .npz file", "input")
    if labels is not None:
        rows, prompts = read_csv(Path(labels), "label")
        return _read_files(root, "csv", [(f, y, prompts.get(f)) for f, y in rows.items()])
    return _read_files(root, "imagefolder", _image_folder(root, synsets))


def read_csv(path: Path, column: str) -> tuple[dict[str, int], dict[str, str]]:
    """Rows of a CSV with columns ``file,<column>`` and an optional ``prompt`` column ->
    ``{file: class index}`` and ``{file: prompt}`` of the non-empty prompts; errors name the
    parameter that gave the file (``labels`` for labels, else ``targeted``)."""
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
            prompts: dict[str, str] = {}
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
                if (row.get("prompt") or "").strip():
                    prompts[key] = row["prompt"].strip()
    except (UnicodeDecodeError, csv.Error) as err:
        raise RunError(f"{path} is not a UTF-8 CSV file: {err}", option) from err
    if not rows:
        raise RunError(f"{path} has no rows", option)
    return rows, prompts


def _image_folder(root: Path, synsets: Sequence[str] | None) -> list[tuple[str, int, None]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise RunError(f"{root} has no class subfolders; for a flat folder give labels, a CSV with "
                       "columns file,label", "input")
    try:
        index = synset_labels(classes, synsets)
    except ValueError as err:
        raise RunError(f"{root}: {err}", "input") from err
    if index is None:
        numeric = all(c.isdecimal() for c in classes)
        index = {c: int(c) if numeric else i for i, c in enumerate(classes)}
    return [(p.relative_to(root).as_posix(), index[c], None) for c in sorted(classes, key=index.__getitem__)
            for p in sorted((root / c).rglob("*"))
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]


def _read_files(root: Path, kind: str, entries: list[tuple[str, int, str | None]]) -> Dataset:
    names = _png_names([PurePosixPath(src).with_suffix("").as_posix().replace("/", "__") for src, *_ in entries])
    items, skipped, sizes, gray = [], {}, Counter(), 0
    for (source, label, prompt), name in zip(entries, names):
        try:
            pixels = read_image(root / source)
        except FileNotFoundError:
            skipped[source] = "file not found"
            continue
        except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for corrupt files
            skipped[source] = f"unreadable: {err}"
            continue
        items.append(Item(source, label, name, path=root / source, prompt=prompt))
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
