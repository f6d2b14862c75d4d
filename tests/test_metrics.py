"""Fidelity metrics against independent references."""
import numpy as np
import pytest
import torch

from sdo_adv import metrics


def test_ssim_matches_scikit_image():
    # the `test` extra declares scikit-image: a missing one fails here, it is not skipped
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 32, 32, generator=g)
    b = (a + 0.1 * torch.randn(3, 1, 32, 32, generator=g)).clamp(0, 1)
    ours = metrics.ssim(a, b)
    for i in range(3):
        ref = structural_similarity(a[i, 0].numpy().astype(np.float64), b[i, 0].numpy().astype(np.float64),
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        assert abs(ours[i].item() - ref) < 2e-3


def test_ssim_identity_and_order():
    a = torch.rand(2, 3, 16, 16)
    assert torch.allclose(metrics.ssim(a, a), torch.ones(2))
    near, far = (a + 0.02).clamp(0, 1), (a + 0.3 * torch.randn_like(a)).clamp(0, 1)
    assert (metrics.ssim(a, near) > metrics.ssim(a, far)).all()


def test_distances():
    a = torch.zeros(1, 1, 2, 2)
    b = torch.tensor([[[[0.5, 0.0], [0.0, 0.0]]]])
    assert metrics.l2(a, b).item() == pytest.approx(0.5)
    assert metrics.linf(a, b).item() == pytest.approx(0.5)
    assert metrics.psnr(a, b).item() == pytest.approx(10 * np.log10(1 / (0.25 / 4)))
