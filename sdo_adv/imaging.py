"""Image tensor helpers: validation, differentiable resizing and cropping (timm's evaluation
transform), channel conversion.

Images are float tensors ``(B, C, H, W)`` with values in [0, 1].
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)
INTERPOLATIONS = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}
CROP_MODES = ("center", "squash", "border")


def check_images(images: object, name: str = "images") -> Tensor:
    """Raise a ValueError/TypeError naming the problem unless ``images`` is a finite float
    ``(B, C, H, W)`` tensor in [0, 1] with B, H, W >= 1 and C in (1, 3)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(images.shape)})")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    if images.numel() == 0:
        raise ValueError(f"{name} is empty: height and width must be >= 1, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor in [0, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or inf values")
    lo, hi = images.min().item(), images.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} must be in [0, 1], got values in [{lo:.10g}, {hi:.10g}]")
    return images


def check_labels(labels: object, batch: int, num_classes: int | None, name: str = "labels") -> Tensor:
    """Raise unless ``labels`` is an integer ``(batch,)`` tensor with values in [0, num_classes)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},) to match the images, got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ValueError(f"{name} must be class indices in {bound}, got values in "
                         f"[{labels.min().item()}, {labels.max().item()}]")
    return labels


def resize(images: Tensor, size: int | tuple[int, int], interpolation: str = "bilinear") -> Tensor:
    """Differentiable resize of ``(B, C, H, W)`` images to ``size`` ``(H, W)``, as PIL (and
    torchvision's antialiased tensor resize): ``interpolation`` ``"bilinear"`` (antialiased when
    shrinking; enlarging is the same either way), ``"bicubic"`` (antialiased, in two passes,
    width then height, each clamped to [0, 1] as PIL's 8-bit passes are; Pillow 13 runs the
    height pass first for some shrinking shapes) or ``"nearest"``
    (torch's ``nearest-exact``: PIL picks the other neighbour at exact ties). Identity if equal."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    mode = INTERPOLATIONS[interpolation]
    if mode == "nearest-exact":
        return F.interpolate(images, size=size, mode=mode)
    if mode == "bicubic":
        wide = F.interpolate(images, size=(images.shape[-2], size[1]), mode=mode, antialias=True).clamp(0, 1)
        return F.interpolate(wide, size=size, mode=mode, antialias=True).clamp(0, 1)
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=shrink)


def convert_channels(images: Tensor, channels: int) -> Tensor:
    """Grayscale -> RGB by repetition, RGB -> grayscale by ITU-R 601 luma; identity if equal."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        w = images.new_tensor(LUMA).view(1, 3, 1, 1)
        return (images * w).sum(1, keepdim=True)
    raise ValueError(f"cannot convert images with {have} channels to {channels} channels")


def pad_to(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Zero-pad ``(B, C, H, W)`` images to ``size`` (at least as large), centred; the extra
    row or column of an odd difference goes to the bottom or right."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    dh, dw = size[0] - images.shape[-2], size[1] - images.shape[-1]
    if dh < 0 or dw < 0:
        raise ValueError(f"cannot pad {tuple(images.shape[-2:])} images to the smaller {size}")
    return F.pad(images, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def crop_to(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """The centre ``size`` of ``(B, C, H, W)`` images: the inverse of :func:`pad_to`."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    top, left = (images.shape[-2] - size[0]) // 2, (images.shape[-1] - size[1]) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop {tuple(images.shape[-2:])} images to the larger {size}")
    return images[..., top:top + size[0], left:left + size[1]]


def fit(images: Tensor, size: int, mapping: str = "resize") -> Tensor:
    """``(B, C, H, W)`` images brought to ``size`` x ``size``: ``mapping`` ``"pad"`` zero-pads
    images no larger than that (:func:`pad_to`), anything else is resized."""
    if mapping == "pad" and images.shape[-2] <= size and images.shape[-1] <= size:
        return pad_to(images, size)
    return resize(images, size)


def unfit(images: Tensor, size: tuple[int, int], mapping: str = "resize") -> Tensor:
    """The inverse of :func:`fit` for images that were ``size`` ``(H, W)``."""
    if mapping == "pad" and size[0] <= images.shape[-2] and size[1] <= images.shape[-1]:
        return crop_to(images, size)
    return resize(images, size)


def center_crop(images: Tensor, size: tuple[int, int], fill: float | Sequence[float] = 0.0) -> Tensor:
    """The centre ``size`` ``(H, W)`` of ``(B, C, H, W)`` images as torchvision's ``CenterCrop``
    (timm's ``CenterCropOrPad``): a side shorter than ``size`` is first padded with ``fill`` (one
    value or one per channel), the extra row or column of an odd difference at the bottom or
    right; the crop starts at ``round((H - h) / 2)``, as torchvision rounds."""
    h, w = size
    dh, dw = max(h - images.shape[-2], 0), max(w - images.shape[-1], 0)
    if dh or dw:
        value = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
        images = F.pad(images - value, (dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2)) + value
    top, left = int(round((images.shape[-2] - h) / 2.0)), int(round((images.shape[-1] - w) / 2.0))
    return images[..., top:top + h, left:left + w]


def eval_transform(images: Tensor, size: tuple[int, int], crop_pct: float = 1.0,
                   interpolation: str = "bilinear", crop_mode: str = "center",
                   fill: float | Sequence[float] = 0.0) -> Tensor:
    """timm's evaluation transform (``transforms_imagenet_eval``) of [0, 1] images ``(B, C, H, W)``
    to ``(B, C, *size)``, differentiable: with ``s = floor(size / crop_pct)``, ``"center"``
    resizes the shorter side to ``s`` keeping the aspect ratio, ``"squash"`` resizes to ``s``,
    ``"border"`` resizes the longer side to ``s`` and pads with ``fill``; then centre crop.

    As timm does, ``"center"`` with a non-square ``s`` resizes bilinearly whatever
    ``interpolation`` says."""
    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {crop_mode!r}")
    (h, w), (sh, sw) = images.shape[-2:], (math.floor(size[0] / crop_pct), math.floor(size[1] / crop_pct))
    if crop_mode == "squash":
        target = (sh, sw)
    elif crop_mode == "center" and sh == sw:  # torchvision's Resize(int), its rounding
        target = (int(sh * h / w), sh) if w <= h else (sh, int(sh * w / h))
    else:  # timm's ResizeKeepRatio, its rounding
        ratio = (max if crop_mode == "border" else min)(h / sh, w / sw)
        target = (round(h / ratio), round(w / ratio))
        interpolation = interpolation if crop_mode == "border" else "bilinear"
    return center_crop(resize(images, target, interpolation), size, fill if crop_mode == "border" else 0.0)
