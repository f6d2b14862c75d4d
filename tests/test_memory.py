"""Memory options: the default (unit checkpointing) leaves every gradient unchanged."""
import pytest
import torch

from sdo_adv import DiffusionGenerator
from tiny import ddpm_scheduler, latent_class_generator, pixel_generator, tiny_cond_unet, tiny_text_encoder, tiny_vae


def build(kind: str, memory: str | None, tmp=None) -> DiffusionGenerator:
    """The same seeded tiny generator (``pixel``, ``latent`` class- or ``text``-conditional),
    float64, with ``memory`` (None: the constructor's default)."""
    torch.manual_seed(0)
    kw = {} if memory is None else {"memory": memory}
    if kind == "pixel":
        return pixel_generator(steps=4, dtype=torch.float64, **kw)
    if kind == "text":
        tok, enc = tiny_text_encoder(tmp)
        gen = DiffusionGenerator(tiny_cond_unet(), ddpm_scheduler(), tiny_vae(), enc, tok, num_inference_steps=4,
                                 guidance_scale=2.0, class_names=["cat", "dog", "car", "boat"], **kw).double()
        enc.float()  # the CLIP text model's attention mask overflows in float64
        return gen
    gen = latent_class_generator(steps=4)
    return DiffusionGenerator(gen.unet, gen.scheduler, gen.vae, num_inference_steps=4,
                              guidance_scale=2.0, **kw).double()


def gradients(gen: DiffusionGenerator, estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    size = gen.unet.config.sample_size
    x = torch.randn(2, gen.unet.config.in_channels, size, size, generator=g, dtype=torch.float64)
    x.requires_grad_(True)
    cond = gen.condition(torch.tensor([1, 3]))
    embeds = cond.embeds.detach().clone().requires_grad_(True)
    images = gen.sample(x, cond=cond.replace(embeds), estimator=estimator)
    w = torch.randn(images.shape, generator=g, dtype=torch.float64)
    gx, ge = torch.autograd.grad((torch.sin(4 * images) * w).sum(), (x, embeds), allow_unused=True)
    return gx, torch.zeros_like(embeds) if ge is None else ge


@pytest.mark.parametrize("kind", ["pixel", "latent", "text"])
@pytest.mark.parametrize("estimator", ["sdo", "full", "checkpoint", "skip"])
def test_checkpointing_keeps_the_gradient(kind, estimator, tmp_path):
    on, off = build(kind, "checkpoint", tmp_path / "on"), build(kind, "none", tmp_path / "off")
    assert on.memory.mode == "checkpoint" and off.memory.mode == "none"
    (gx, ge), (gx_off, ge_off) = gradients(on, estimator), gradients(off, estimator)
    assert gx.abs().sum() > 0 and (ge.abs().sum() > 0) == (estimator != "skip")
    torch.testing.assert_close(gx, gx_off, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ge, ge_off, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind,mode", [("pixel", "none"), ("latent", "checkpoint"), ("text", "checkpoint")])
def test_auto_checkpoints_latent_generators(kind, mode, tmp_path):
    assert build(kind, None, tmp_path).memory.mode == mode  # the default, "auto"


def forward_counts(gen: DiffusionGenerator, estimator: str) -> dict[str, int]:
    """How many times a convolution of the UNet's and of the VAE decoder's first resnet ran in one iteration."""
    counts = {"unet": 0, "decoder": 0}
    units = {"unet": gen.unet.down_blocks[0].resnets[0].conv1, "decoder": gen.vae.decoder.up_blocks[0].resnets[0].conv1}
    hooks = [m.register_forward_pre_hook(lambda *_, k=k: counts.__setitem__(k, counts[k] + 1))
             for k, m in units.items()]
    try:
        gradients(gen, estimator)
    finally:
        for h in hooks:
            h.remove()
    return counts


def test_units_recompute_in_eval_mode_and_whole_call_checkpoints_are_not_nested():
    on, off = build("latent", None), build("latent", "none")
    assert not on.training and not on.unet.training
    # sdo, 4 steps: 1 kept call (run again in backward), 3 detached; the decoder runs twice
    assert forward_counts(on, "sdo") == {"unet": 5, "decoder": 2}
    assert forward_counts(off, "sdo") == {"unet": 4, "decoder": 1}
    # the checkpoint estimator recomputes each call once, not once more per unit
    assert forward_counts(on, "checkpoint") == {"unet": 8, "decoder": 2}


def test_none_unpatches_shared_networks_and_unknown_options_fail():
    torch.manual_seed(0)
    unet, vae = tiny_cond_unet(num_class_embeds=5), tiny_vae()
    DiffusionGenerator(unet, ddpm_scheduler(), vae)
    assert "forward" in vars(unet.down_blocks[0].resnets[0])
    DiffusionGenerator(unet, ddpm_scheduler(), vae, memory="none")
    assert "forward" not in vars(unet.down_blocks[0].resnets[0])
    with pytest.raises(ValueError, match="memory option"):
        DiffusionGenerator(unet, ddpm_scheduler(), vae, memory="tiles")


def test_tiled_decoding_is_close_and_differentiable():
    tiled, plain = build("latent", "tiled"), build("latent", "none")
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    a, b = tiled.decode(z), plain.decode(z)
    assert a.shape == b.shape == (1, 3, 16, 16)
    assert 0 < (a - b).abs().max() < 0.5
    assert torch.autograd.grad(a.sum(), z)[0].abs().sum() > 0
