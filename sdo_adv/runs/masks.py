"""Masks of a run: one grayscale PNG per input in a folder (white = may change, black = kept).

The mask of a file input has the input's path relative to the input folder, with a ``.png``
suffix (``3/img.jpg`` -> ``<mask_dir>/3/img.png``); that of an ``.npz`` image has the name of
its adversarial PNG. A mask has its image's size; colour masks are read as their luma.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import torch
from torch import Tensor

from .dataset import Dataset, Item
from .io import read_image, to_tensor


def mask_files(dataset: Dataset, mask_dir: str | Path) -> dict[str, Path]:
    """``{source: mask file}`` for every item of ``dataset``, after checking that each file
    exists and has its image's size (headers only: no model is needed); :class:`RunError` for
    ``mask_dir`` naming the first file at fault."""
    from PIL import Image

    from .errors import RunError

    root, files = Path(mask_dir), {}
    for item in dataset.items:
        name = item.name if dataset.array is not None else PurePosixPath(item.source).with_suffix(".png").as_posix()
        path = root / name
        if not path.is_file():
            raise RunError(f"no mask for {item.source}: {path} does not exist (one grayscale PNG per input, "
                           "named as the input)", "mask_dir")
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for corrupt files
            raise RunError(f"mask {path} is unreadable: {err}", "mask_dir") from err
        size = _size(dataset, item)
        if (height, width) != size:
            raise RunError(f"mask {path} is {height}x{width} but its image {item.source} is {size[0]}x{size[1]}",
                           "mask_dir")
        files[item.source] = path
    return files


def load_masks(paths: Sequence[Path], fit: Callable[[Tensor], Tensor]) -> Tensor:
    """Masks ``(B, 1, H, W)`` float32 in [0, 1], each brought to the attack's size by ``fit``
    (``(1, 1, h, w)`` -> ``(1, 1, H, W)``) as its image is (a resized mask is soft at its edges)."""
    return torch.stack([fit(to_tensor(read_image(p), 1)[None])[0].clamp(0, 1) for p in paths])


def _size(dataset: Dataset, item: Item) -> tuple[int, int]:
    """``(H, W)`` of ``item``'s image."""
    if dataset.array is not None:
        return tuple(dataset.array.shape[1:3])
    from PIL import Image

    with Image.open(item.path) as im:
        return im.size[1], im.size[0]
