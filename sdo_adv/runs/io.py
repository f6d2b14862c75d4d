"""Files: image decoding and PNG writing, output-name confinement, and the atomic writes of
:mod:`sdo_adv.files` (every file a run writes goes through :func:`atomic_write`; a killed
process leaves at most a temporary file, which :func:`clear_stale` removes).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch import Tensor

from ..files import STALE_GLOB, atomic_write
from ..imaging import convert_channels, resize
from .errors import RunError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def clear_stale(folder: Path) -> None:
    """Remove the temporary files a killed process left in ``folder``."""
    for stale in folder.glob(STALE_GLOB):
        stale.unlink(missing_ok=True)


def to_uint8(images: Tensor) -> Tensor:
    """[0, 1] float images -> uint8 (rounded)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


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
    """Write a ``(C, H, W)`` [0, 1] image as an 8-bit PNG, atomically and durably."""
    from PIL import Image

    pixels = to_uint8(image.detach().cpu()).permute(1, 2, 0).numpy()
    with atomic_write(path, durable=True) as f:
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(f, format="PNG")


def inside(out: Path, name: str) -> Path:
    """``out / name``, refusing any name that would lead outside ``out`` (output file names
    come from input file names, which the run does not control)."""
    path = out / name
    if PurePosixPath(name).name != name or name in ("", ".", "..") or path.resolve().parent != out.resolve():
        raise RunError(f"output name {name!r} would be written outside {out}", "input")
    return path
