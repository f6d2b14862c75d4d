"""Fidelity metrics between image batches ``(B, C, H, W)`` in [0, 1]; each returns ``(B,)``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def l2(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).flatten(1).norm(dim=1)


def linf(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).flatten(1).abs().amax(1)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB (peak 1); ``inf`` for identical images."""
    mse = (a - b).flatten(1).pow(2).mean(1)
    return 10 * torch.log10(1.0 / mse)


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004): Gaussian window, K1 = 0.01, K2 = 0.03,
    computed per channel over valid positions and averaged."""
    a, b = a.double(), b.double()
    coords = torch.arange(window, dtype=torch.float64, device=a.device) - (window - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = g / g.sum()
    c = a.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    size = min(window, a.shape[-1], a.shape[-2])
    if size < window:
        kernel = kernel[..., :size, :size] / kernel[..., :size, :size].sum((-1, -2), keepdim=True)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, kernel, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).float()


def measure(adv: Tensor, orig: Tensor) -> dict[str, list[float | None]]:
    """Per-image ``l2``, ``linf``, ``ssim`` and ``psnr`` (dB; None when identical) of ``adv``
    against ``orig``, as lists."""
    return {"l2": l2(adv, orig).tolist(), "linf": linf(adv, orig).tolist(), "ssim": ssim(adv, orig).tolist(),
            "psnr": [v if math.isfinite(v) else None for v in psnr(adv, orig).tolist()]}
