"""Tiny random-weight diffusers / classifier models built from config, as diffusers' tests do."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from sdo_adv import DiffusionGenerator

NUM_CLASSES = 4

# The SDOAttack settings the tiny-model tests are written for (the library defaults suit the embedded 32x32 digits).
TINY_ATTACK = {"depth": 0.5, "lr": 0.1, "fidelity": 50.0, "fidelity_norm": "l2", "fidelity_halflife": None}
# The former default fidelity (squared error, weight 200), for tests written against the other defaults.
FORMER_FIDELITY = {"fidelity_norm": "l2", "fidelity": 200.0}


def tiny_sdo_attack(model, generator, **kw):
    """An SDOAttack with :data:`TINY_ATTACK`, the explicit keyword arguments winning."""
    from sdo_adv.attacks import SDOAttack

    return SDOAttack(model, generator, **{**TINY_ATTACK, **kw})


def attack_steps(model, generator, images, labels, **kw):
    """The :class:`AttackStep` records of a :func:`tiny_sdo_attack` run on ``images``."""
    steps = []
    tiny_sdo_attack(model, generator, callback=steps.append, **kw)(images, labels)
    return steps


def tiny_unet(channels: int = 1, size: int = 8, num_class_embeds: int | None = NUM_CLASSES + 1):
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                       block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                       num_class_embeds=num_class_embeds)


def ddpm_scheduler(**kw):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         clip_sample=False, **kw)


def pixel_generator(steps: int = 5, guidance_scale: float = 2.0, solver: str = "ddim",
                    dtype=torch.float32, **kw) -> DiffusionGenerator:
    gen = DiffusionGenerator.from_diffusers(unet=tiny_unet(), scheduler=ddpm_scheduler(),
                                   num_inference_steps=steps, guidance_scale=guidance_scale,
                                   solver=solver, **kw)
    return gen.to(dtype)


def save_tiny_ddpm(root: Path, steps: int) -> Path:
    """A seeded tiny class-conditional DDPM folder saved by ``save_pretrained`` under ``root``,
    its ``sdo_adv.json`` storing ``steps`` sampling steps."""
    from diffusers import DDPMPipeline

    torch.manual_seed(0)
    DDPMPipeline(unet=tiny_unet(), scheduler=ddpm_scheduler()).save_pretrained(root / "ddpm")
    (root / "ddpm" / "sdo_adv.json").write_text(json.dumps({"num_inference_steps": steps}))
    return root / "ddpm"


def tiny_vae(channels: int = 3):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=channels, out_channels=channels, latent_channels=4,
                         block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)


def tiny_cond_unet(cross_attention_dim: int = 16, num_class_embeds: int | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                                block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=4,
                                num_class_embeds=num_class_embeds)


def tiny_text_encoder(folder: Path, hidden: int = 16):
    """A CLIP tokenizer (character vocabulary, written to ``folder``) and a tiny CLIP text model."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=12)
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=32,
                                       num_attention_heads=2, num_hidden_layers=1,
                                       max_position_embeddings=12, bos_token_id=0, eos_token_id=1,
                                       pad_token_id=1))
    return tok, enc


def latent_text_generator(tmp: Path, steps: int = 4, guidance_scale: float = 2.0) -> DiffusionGenerator:
    tok, enc = tiny_text_encoder(tmp / "tokenizer")
    return DiffusionGenerator.from_diffusers(unet=tiny_cond_unet(), scheduler=ddpm_scheduler(), vae=tiny_vae(),
                                    text_encoder=enc, tokenizer=tok, num_inference_steps=steps,
                                    guidance_scale=guidance_scale, class_names=["cat", "dog", "car", "boat"])


def latent_class_generator(steps: int = 4) -> DiffusionGenerator:
    return DiffusionGenerator.from_diffusers(unet=tiny_cond_unet(num_class_embeds=NUM_CLASSES + 1),
                                    scheduler=ddpm_scheduler(), vae=tiny_vae(),
                                    num_inference_steps=steps, guidance_scale=2.0)


class TinyClassifier(nn.Module):
    """A smooth CNN for ``(B, C, size, size)`` inputs."""

    def __init__(self, channels: int = 1, num_classes: int = NUM_CLASSES, size: int = 8):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.SiLU(), nn.Flatten(),
                                 nn.Linear(8 * size * size, num_classes))

    def forward(self, x):
        return self.net(x)


@contextmanager
def recorded_network_calls(gen: DiffusionGenerator):
    """Record every :meth:`DiffusionGenerator.network_call` (the sequential sampler's network
    calls; inversion and Picard sweeps call ``denoise`` directly and are not recorded): yields a
    list of dicts with the call's ``x``, ``t``, ``mode`` and ``embeds`` (the conditioning
    embeddings, detached; None for an unconditional call)."""
    calls: list[dict] = []
    original = gen.network_call

    def record(x, t, cond, mode):
        calls.append({"x": x.detach().clone(), "t": t, "mode": mode,
                      "embeds": None if cond is None else cond.embeds.detach().clone()})
        return original(x, t, cond, mode)

    gen.network_call = record
    try:
        yield calls
    finally:
        del gen.network_call


def cw_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` logit of ``labels`` minus the largest other logit (negative: misclassified)."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return own - other


def tiny_models():
    """A random-weight 8x8 classifier and a 4-step pixel generator, seeded."""
    torch.manual_seed(0)
    from sdo_adv import load_classifier

    model = load_classifier(TinyClassifier(), input_size=(1, 8, 8))
    return model, pixel_generator(steps=4)


def batch(n=4, channels=1, size=8):
    """Seeded [0, 1] images ``(n, channels, size, size)`` and labels ``arange(n) % NUM_CLASSES``."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, channels, size, size, generator=g), torch.arange(n) % NUM_CLASSES


def unfooled_batch(model, n):
    """Images labelled with the model's own predictions: no sample is successful at the start."""
    images, _ = batch(n)
    with torch.no_grad():
        return images, model(images).argmax(1)


class NoSampling:
    """Make any network call of the generator fail, to prove validation comes first."""

    def __init__(self, gen):
        gen.unet.register_forward_pre_hook(self._fail)

    @staticmethod
    def _fail(*_):
        raise AssertionError("the generator ran before the input was validated")


def save_tiny_stable_diffusion(folder: Path) -> Path:
    """A :class:`diffusers.StableDiffusionPipeline` of the tiny latent, text and UNet models
    (16x16 RGB images), seeded and saved with ``save_pretrained``, without ``sdo_adv.json``: like
    a hub Stable Diffusion, it stores no class names."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(0)
    tok, enc = tiny_text_encoder(folder.parent / f"{folder.name}_tokenizer")
    StableDiffusionPipeline(vae=tiny_vae(), text_encoder=enc, tokenizer=tok, unet=tiny_cond_unet(),
                            scheduler=ddpm_scheduler(steps_offset=1), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder
