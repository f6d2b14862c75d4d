"""Masked (regional) attacks: the unmasked region is kept, the masked one changes; bad masks fail first."""
import numpy as np
import pytest
import torch
from PIL import Image

from sdo_adv import load_classifier
from sdo_adv.runs.io import to_uint8
from test_cli import assets, attack_args, invoke, manifest  # noqa: F401  (assets is a fixture)
from tiny import NoSampling, TinyClassifier, latent_class_generator, tiny_models, tiny_sdo_attack, unfooled_batch

BOUND = 2 / 255


def upper_half(n: int, size: int) -> torch.Tensor:
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, : size // 2] = 1
    return mask


def latent_models():
    """A random 16x16 RGB classifier and the tiny class-conditional VAE generator, seeded."""
    torch.manual_seed(0)
    model = load_classifier(TinyClassifier(channels=3, size=16), input_size=(3, 16, 16))
    return model, latent_class_generator(steps=4)


def latent_batch(model, n):
    images = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return images, model(images).argmax(1)


def check_bound(adv, images, mask):
    """Exactly the input where the mask is 0 (so within 2/255 after PNG rounding); changed inside."""
    kept = (mask == 0).expand_as(images)
    assert torch.equal(adv[kept], images[kept])
    assert (to_uint8(adv).float() - to_uint8(images).float())[kept].abs().max() <= 2
    assert (adv - images)[~kept].abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["composite", "blend"])
@pytest.mark.parametrize("kind,n,size,steps", [("pixel", 4, 8, 3), ("latent", 2, 16, 2)])
def test_generator_keeps_the_unmasked_region(kind, n, size, steps, mode):
    model, gen = tiny_models() if kind == "pixel" else latent_models()
    images, labels = unfooled_batch(model, n) if kind == "pixel" else latent_batch(model, n)
    mask = upper_half(n, size)
    attack = tiny_sdo_attack(model, gen, steps=steps, mask=mask, mask_mode=mode)
    check_bound(attack(images, labels), images, mask)


def test_picard_sampler_keeps_the_unmasked_region():
    model, gen = tiny_models()
    images, labels = unfooled_batch(model, 2)
    mask = upper_half(2, 8)
    check_bound(tiny_sdo_attack(model, gen, steps=2, mask=mask, sampler="picard")(images, labels), images, mask)


def test_the_gradient_flows_through_the_masked_region_only():
    model, gen = tiny_models()
    images, labels = unfooled_batch(model, 2)
    seen = []
    attack = tiny_sdo_attack(model, gen, steps=2, mask=upper_half(2, 8), callback=seen.append)
    attack(images, labels)
    for step in seen:
        assert torch.equal(step.images[:, :, 4:], images[step.active][:, :, 4:])


def test_callable_mask():
    model, gen = tiny_models()
    images, labels = unfooled_batch(model, 3)
    calls = []

    def bright(x):
        calls.append(x.shape)
        return (x > 0.5).float()

    adv = tiny_sdo_attack(model, gen, steps=2, mask=bright)(images, labels)
    assert calls == [images.shape]
    check_bound(adv, images, (images > 0.5).float())


@pytest.mark.parametrize("mask, message", [
    (torch.ones(4, 3, 8, 8), "mask must have shape (N, 1, H, W) = (4, 1, 8, 8)"),
    (torch.ones(3, 1, 8, 8), "got (3, 1, 8, 8)"),
    (torch.ones(4, 1, 4, 4), "got (4, 1, 4, 4)"),
    (torch.ones(4, 1, 8), "got (4, 1, 8)"),
    (torch.full((4, 1, 8, 8), 1.5), "mask values must be in [0, 1], got [1.5, 1.5]"),
    (-torch.ones(4, 1, 8, 8), "mask values must be in [0, 1]"),
    (torch.full((4, 1, 8, 8), float("nan")), "mask holds NaN or infinite values"),
    (np.ones((4, 1, 8, 8)), "mask must be a tensor (N, 1, H, W) in [0, 1] or a function"),
    (lambda x: x.repeat(1, 2, 1, 1), "mask must have shape (N, 1, H, W)"),
])
def test_bad_masks_fail_before_sampling(mask, message):
    model, gen = tiny_models()
    NoSampling(gen)
    images, labels = unfooled_batch(model, 4)
    with pytest.raises(ValueError) as err:
        tiny_sdo_attack(model, gen, steps=1, mask=mask)(images, labels)
    assert message in str(err.value)


def test_bad_mask_modes():
    model, gen = tiny_models()
    with pytest.raises(ValueError, match="unknown mask_mode 'paste'; accepted: composite, blend"):
        tiny_sdo_attack(model, gen, mask_mode="paste")
    with pytest.raises(ValueError, match="mask_mode='blend' needs the sequential sampler"):
        tiny_sdo_attack(model, gen, mask_mode="blend", sampler="picard")


def mask_folder(assets, root, size=8):
    """Upper-half masks for the assets' ImageFolder, named as its images."""
    for image in (assets / "digits").rglob("*.png"):
        path = root / image.relative_to(assets / "digits")
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((size, size), dtype=np.uint8)
        pixels[: size // 2] = 255
        Image.fromarray(pixels).save(path)
    return root


def test_cli_mask_folder(assets, tmp_path):  # noqa: F811
    masks = mask_folder(assets, tmp_path / "masks")
    out = tmp_path / "out"
    result = invoke(*attack_args(assets, out, "--mask-dir", str(masks), "--steps", "2"))
    assert result.exit_code == 0, result.output
    for row in manifest(out):
        saved = np.asarray(Image.open(out / row["file"]), dtype=float)
        original = np.asarray(Image.open(assets / "digits" / row["source"]), dtype=float)
        assert np.abs(saved - original)[4:].max() <= 2, row["source"]


def test_cli_mask_folder_errors(assets, tmp_path, monkeypatch):  # noqa: F811
    from sdo_adv.runs import attack_run

    def fail(*_, **__):
        raise AssertionError("a model loaded before the masks were checked")

    monkeypatch.setattr(attack_run, "load_generator", fail)
    masks = mask_folder(assets, tmp_path / "masks")
    (masks / "2" / "img 2.png").unlink()
    result = invoke(*attack_args(assets, tmp_path / "out", "--mask-dir", str(masks)))
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "'--mask-dir'" in text
    assert f"no mask for 2/img 2.png: {masks / '2' / 'img 2.png'} does not exist" in text

    small = mask_folder(assets, tmp_path / "small", size=4)
    result = invoke(*attack_args(assets, tmp_path / "out", "--mask-dir", str(small)))
    assert result.exit_code == 2 and "is 4x4 but its image 0/img 0.png is 8x8" in " ".join(result.output.split())

    result = invoke(*attack_args(assets, tmp_path / "out", "--mask-dir", str(tmp_path / "absent")))
    assert result.exit_code == 2 and "is not a folder" in result.output


def test_blend_keeps_the_latent_of_the_unmasked_region():
    """Sampled with the blend hook, a pixel generator's state outside the mask follows the input
    re-noised along its inversion: its final image there is the input, before any compositing."""
    from sdo_adv.masks import Region

    model, gen = tiny_models()
    images, labels = unfooled_batch(model, 2)
    mask = upper_half(2, 8)
    region = Region(mask, images, "blend")
    inversion = gen.invert(gen.to_generator(images), 0.5, cond=gen.condition(labels=labels))
    region.begin(gen, inversion.latent, inversion.start)
    everyone = torch.arange(2)
    with torch.no_grad():
        free = gen.sample(inversion.latent + 0.5, cond=gen.condition(labels=labels), start=inversion.start)
        blended = gen.sample(inversion.latent + 0.5, cond=gen.condition(labels=labels), start=inversion.start,
                             callback=region.hook(gen, everyone, inversion.start))
    assert torch.allclose(blended[:, :, 4:], images[:, :, 4:], atol=1e-5)
    assert not torch.allclose(free[:, :, 4:], images[:, :, 4:], atol=1e-2)
    assert not torch.allclose(blended[:, :, :4], images[:, :, :4], atol=1e-2)


def test_npz_masks_are_named_as_the_output_pngs(tmp_path):
    from sdo_adv.runs import RunError, read_dataset
    from sdo_adv.runs.masks import load_masks, mask_files

    np.savez(tmp_path / "digits.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, 1]))
    data = read_dataset(tmp_path / "digits.npz")
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "masks" / "digits_0.png")
    with pytest.raises(RunError, match="no mask for digits.npz#1: .*digits_1.png does not exist") as err:
        mask_files(data, tmp_path / "masks")
    assert err.value.parameter == "mask_dir"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "digits_1.png")
    files = mask_files(data, tmp_path / "masks")
    masks = load_masks([files[it.source] for it in data.items], lambda x: x)
    assert masks.shape == (2, 1, 8, 8) and masks[0].eq(1).all() and masks[1].eq(0).all()
