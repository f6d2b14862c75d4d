"""A classifier that takes [0, 1] images of any size and carries its data config (as in timm)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .imaging import to_model_input


class ImageClassifier(nn.Module):
    """Wraps ``model`` so it takes [0, 1] images ``(B, C, H, W)`` of any size and channel count
    1 or 3, converts channels, resizes (bilinear) to ``input_size`` ``(C, H, W)``, normalizes
    with ``mean`` / ``std`` and returns logits ``(B, num_classes)``.

    ``data_config`` holds the timm-style data configuration (input_size, mean, std,
    interpolation, crop_pct, num_classes, label_names).
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
        self.data_config = {"input_size": list(self.input_size), "mean": mean, "std": std,
                            "num_classes": self.num_classes, **(data_config or {})}

    def forward(self, images: Tensor) -> Tensor:
        x = to_model_input(images, self.input_size[0], self.input_size[1:])
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.model(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, num_classes={self.num_classes}"
