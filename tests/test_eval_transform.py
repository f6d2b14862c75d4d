"""ImageClassifier's input transform is timm's evaluation transform, differentiable."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn

from sdo_adv import ImageClassifier
from sdo_adv.imaging import center_crop, eval_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An (h, w, 3) uint8 image: smooth shapes plus noise, some saturated."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h // 6 + 2, w // 6 + 2, generator=g) * 1.4 - 0.2
    x = nn.functional.interpolate(x, size=(h, w), mode="bilinear") + 0.1 * torch.randn(1, 3, h, w, generator=g)
    return (x.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255


def timm_config(size: int, interpolation: str, crop_pct: float) -> dict:
    model = nn.Identity()
    model.pretrained_cfg = {"input_size": (3, size, size), "interpolation": interpolation, "crop_pct": crop_pct,
                            "mean": MEAN, "std": STD}
    return resolve_data_config({}, model=model)


# Bicubic configs enlarge the image in both directions: there every Pillow resizes width, then height,
# with 8-bit rounding between the passes (so up to ~1.07/255 from the 0.5 rounding amplified by the
# cubic's negative lobes, plus the final rounding).
@pytest.mark.parametrize("interpolation,crop_pct,size,image,tol", [
    ("bicubic", 0.875, 224, (200, 150), 1.1), ("bicubic", 0.875, 224, (180, 240), 1.1),
    ("bilinear", 0.95, 224, (300, 400), 1.0), ("bilinear", 0.95, 224, (411, 257), 1.0),
    ("bicubic", 1.0, 224, (160, 210), 1.1), ("bilinear", 1.0, 64, (97, 130), 1.0),
    ("bilinear", 0.9, 32, (48, 41), 1.0)])
def test_matches_timm_eval_transform_on_pil_images(interpolation, crop_pct, size, image, tol):
    cfg = timm_config(size, interpolation, crop_pct)
    assert (cfg["interpolation"], cfg["crop_pct"], cfg["crop_mode"]) == (interpolation, crop_pct, "center")
    arr = photo(*image)
    ref = create_transform(**cfg, is_training=False)(Image.fromarray(arr))
    clf = ImageClassifier(nn.Identity(), cfg["input_size"], cfg["mean"], cfg["std"], data_config=cfg)
    out = clf(as_tensor(arr))[0]
    assert out.shape == ref.shape == (3, size, size)
    diff = ((out - ref) * torch.tensor(STD).view(3, 1, 1)).abs() * 255
    assert diff.max() <= tol + 1e-3 and diff.mean() < 0.4


@pytest.mark.parametrize("crop_mode,interpolation,crop_pct,size,image", [
    ("center", "bicubic", 0.875, (224, 224), (300, 400)), ("center", "bilinear", 1.1, (64, 64), (90, 70)),
    ("squash", "bicubic", 0.9, (64, 64), (120, 77)), ("border", "bicubic", 0.9, (64, 64), (100, 61)),
    ("center", "bicubic", 0.9, (48, 64), (100, 90))])
def test_geometry_and_kernels_match_timm_in_float(crop_mode, interpolation, crop_pct, size, image):
    """Per channel on 32-bit float PIL images (no 8-bit rounding, values far from 0 and 1 so that
    nothing clamps): every mode, shrinking, padding and non-square input sizes agree to float error."""
    x = torch.rand(1, 3, *image, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    tf = create_transform(input_size=(1, *size), interpolation=interpolation, crop_pct=crop_pct, crop_mode=crop_mode,
                          mean=(0.0,), std=(1.0,), is_training=False)
    ref = torch.cat([tf(Image.fromarray(x[0, c].numpy(), mode="F")) for c in range(3)])
    out = eval_transform(x, size, crop_pct, interpolation, crop_mode)[0]  # timm's fill for mean 0
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-4


def test_gradients_flow_to_the_images():
    cfg = timm_config(32, "bicubic", 0.875)
    clf = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)), cfg["input_size"], cfg["mean"],
                          cfg["std"], data_config=cfg)
    x = torch.rand(2, 3, 45, 60, requires_grad=True)
    clf(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad[..., 10:35, 10:50] != 0).float().mean() > 0.9  # the centre reaches the model
    assert (x.grad[..., :, :2] == 0).all()  # cropped columns do not


def test_images_at_input_size_pass_through_unchanged():
    model = nn.Identity()
    for cfg in ({"crop_pct": 1.0, "interpolation": "bilinear"}, None):  # embedded models; plain modules
        clf = ImageClassifier(model, (1, 28, 28), (0.0,), (1.0,), data_config=cfg)
        x = torch.rand(3, 1, 28, 28)
        assert torch.equal(clf(x), x)


def test_without_crop_pct_images_are_squashed_as_before():
    clf = ImageClassifier(nn.Identity(), (3, 8, 8), (0.0,), (1.0,))
    assert (clf.crop_mode, clf.crop_pct, clf.interpolation) == ("squash", 1.0, "bilinear")
    x = torch.rand(1, 3, 12, 20)
    expected = nn.functional.interpolate(x, size=(8, 8), mode="bilinear", antialias=True)
    assert torch.allclose(clf(x), expected, atol=1e-6)


def test_center_crop_rounds_and_pads_as_torchvision():
    from torchvision.transforms.functional import center_crop as tv_center_crop

    for shape, size in (((5, 8), (4, 5)), ((7, 6), (4, 3)), ((4, 4), (7, 6)), ((9, 3), (4, 6))):
        x = torch.rand(1, 2, *shape)
        assert torch.equal(center_crop(x, size), tv_center_crop(x, list(size)))
    padded = center_crop(torch.zeros(1, 2, 2, 2), (4, 4), fill=(0.25, 0.5))
    assert padded[0, :, 0, 0].tolist() == [0.25, 0.5] and padded[0, :, 1:3, 1:3].abs().sum() == 0


@pytest.mark.parametrize("cfg,match", [({"crop_pct": 0.9, "crop_mode": "letterbox"}, "crop_mode"),
                                       ({"crop_pct": 0.9, "interpolation": "lanczos"}, "interpolation")])
def test_unsupported_config_is_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        ImageClassifier(nn.Identity(), (3, 8, 8), (0.0,), (1.0,), data_config=cfg)
