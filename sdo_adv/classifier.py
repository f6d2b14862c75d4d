"""A classifier that takes [0, 1] images of any size and carries its data config (as in timm)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .imaging import CROP_MODES, INTERPOLATIONS, convert_channels, eval_transform


class ImageClassifier(nn.Module):
    """Wraps ``model`` so it takes [0, 1] images ``(B, C, H, W)`` of any size and channel count
    1 or 3, converts channels, applies timm's evaluation transform (resize to ``input_size /
    crop_pct`` with ``interpolation``, centre crop to ``input_size`` ``(C, H, W)``: see
    :func:`~sdo_adv.imaging.eval_transform`), normalizes with ``mean`` / ``std`` and returns
    logits ``(B, num_classes)``; differentiable w.r.t. the images.

    ``data_config`` holds the timm-style data configuration (input_size, mean, std,
    interpolation, crop_pct, crop_mode, num_classes, label_names). Without ``crop_pct`` (a
    model not from timm) images are squashed bilinearly to ``input_size``, no crop
    (``crop_mode="squash"``, ``crop_pct=1.0``).
    """

    def __init__(self, model: nn.Module, input_size: Sequence[int], mean: Sequence[float],
                 std: Sequence[float], num_classes: int | None = None, name: str = "",
                 data_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.input_size = tuple(int(v) for v in input_size)
        if len(self.input_size) != 3:
            raise ValueError(f"input_size must be (C, H, W), got {input_size}")
        c = self.input_size[0]
        mean, std = list(mean), list(std)
        if len(mean) == 1 and c > 1:
            mean, std = mean * c, std * c
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.num_classes = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        self.name = name or type(model).__name__
        cfg = data_config or {}
        self.crop_pct = float(cfg.get("crop_pct") or 1.0)
        self.crop_mode = cfg.get("crop_mode") or ("center" if cfg.get("crop_pct") else "squash")
        self.interpolation = cfg.get("interpolation") or "bilinear"
        if self.crop_mode not in CROP_MODES or self.interpolation not in INTERPOLATIONS or self.crop_pct <= 0:
            raise ValueError(f"unsupported data config: crop_mode {self.crop_mode!r} (one of {', '.join(CROP_MODES)}), "
                             f"interpolation {self.interpolation!r} (one of {', '.join(INTERPOLATIONS)}), "
                             f"crop_pct {self.crop_pct} (> 0)")
        self.fill = [round(255 * m) / 255 for m in mean]  # timm's border fill, an 8-bit colour
        self.data_config = {"input_size": list(self.input_size), "mean": mean, "std": std,
                            "num_classes": self.num_classes, **cfg, "crop_pct": self.crop_pct,
                            "crop_mode": self.crop_mode, "interpolation": self.interpolation}

    def forward(self, images: Tensor) -> Tensor:
        x = eval_transform(convert_channels(images, self.input_size[0]), self.input_size[1:], self.crop_pct,
                           self.interpolation, self.crop_mode, self.fill)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.model(x)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, input_size={self.input_size}, num_classes={self.num_classes}, "
                f"crop_pct={self.crop_pct}, crop_mode={self.crop_mode!r}, interpolation={self.interpolation!r}")
