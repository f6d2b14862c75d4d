"""Frechet distance between two image sets in a classifier's penultimate features (as FID does
in Inception features): ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``."""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn


@torch.no_grad()
def penultimate_features(classifier: nn.Module, images: Tensor, batch: int = 256) -> Tensor:
    """``(B, D)`` float64: the input of ``classifier``'s last ``nn.Linear`` layer for [0, 1]
    ``images`` ``(B, C, H, W)``."""
    last = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f"{type(classifier).__name__} has no nn.Linear layer to take features before")
    found: list[Tensor] = []
    handle = last[-1].register_forward_hook(lambda _m, inputs, _out: found.append(inputs[0].flatten(1).double().cpu()))
    try:
        for i in range(0, len(images), batch):
            classifier(images[i:i + batch])
    finally:
        handle.remove()
    return torch.cat(found)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to features ``a`` ``(N, D)`` and ``b`` ``(M, D)``."""
    a, b = a.double().numpy(), b.double().numpy()
    if min(len(a), len(b)) < 2:
        raise ValueError("a Frechet distance needs at least two samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean.real))
