"""A differentiable diffusion generator: diffusers components, one sampling loop, no ``no_grad``.

Value ranges: images are ``(B, C, H, W)`` in [0, 1]; the diffusion space is [-1, 1] pixels
for pixel-space models, or the VAE's scaled latent space for latent models.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .estimators import CallMode, Estimator, parse_estimator
from .generator_settings import check_settings, sampling_scheduler
from .imaging import convert_channels, fit, unfit
from .memory import MemoryPlan


@dataclass
class Condition:
    """Conditioning of the denoiser.

    ``kind`` is ``"class"`` (``embeds``: ``(B, D)`` class embeddings, added to the time
    embedding) or ``"text"`` (``embeds``: ``(B, L, D)`` prompt embeddings, cross-attention).
    ``null`` is the unconditional embedding, ``(1, ...)``, used for classifier-free guidance.
    ``embeds`` may require grad: it is an optimizable variable.
    """

    kind: str
    embeds: Tensor
    null: Tensor | None = None

    def replace(self, embeds: Tensor) -> "Condition":
        return Condition(self.kind, embeds, self.null)

    def select(self, index: Tensor) -> "Condition":
        return Condition(self.kind, self.embeds[index], self.null)


@dataclass
class Inversion:
    """Result of :meth:`DiffusionGenerator.invert`.

    ``latent``: the start latent at schedule index ``start`` (same shape as the encoded input);
    ``reconstruction``: images in [0, 1] sampled back from it; ``error``: per-sample mean
    squared error of the reconstruction against the input images, in [0, 1] units.
    """

    latent: Tensor
    start: int
    reconstruction: Tensor
    error: Tensor


def start_index(depth: float | int, n: int) -> int:
    """Index of an ``n``-step sampling schedule to start from: ``depth`` in (0, 1] is the
    fraction of the schedule to run (1.0 = from pure noise), an int is the index itself (0 =
    pure noise)."""
    if isinstance(depth, bool) or not isinstance(depth, (int, float)):
        raise TypeError(f"depth must be a float fraction or an int index, got {depth!r}")
    if isinstance(depth, int):
        if not 0 <= depth < n:
            raise ValueError(f"depth index {depth} is outside the schedule [0, {n})")
        return depth
    if not 0.0 < depth <= 1.0:
        raise ValueError(f"depth fraction must be in (0, 1], got {depth}")
    return n - max(1, round(depth * n))


class DiffusionGenerator(nn.Module):
    """Wraps a diffusers UNet, scheduler and optional VAE / text encoder for differentiable sampling.

    The generator's parameters are frozen (``requires_grad_(False)``); gradients flow to the
    latent and to conditioning embeddings. ``guidance_scale`` > 1 enables classifier-free
    guidance when a null condition exists (``null_class`` for class-conditional UNets, the
    empty prompt for text-conditional ones). ``solver`` picks the scheduler used for
    sampling: ``"ddim"`` (deterministic, eta = 0) or ``"dpm++"`` (DPM-Solver++ 2M); any other
    diffusers scheduler instance whose step is linear can be passed as ``scheduler`` with
    ``solver=None``. Note that diffusers' DPM-Solver computes its update in float32.
    ``input_mapping`` says how images of another size reach :attr:`image_size` and come back:
    ``"resize"`` (bilinear) or ``"pad"`` (zero-pad smaller images, centred, and crop back, as
    for digits trained padded from 28 to 32 pixels; larger images are resized). ``guard`` names
    a classifier spec recommended as :class:`~sdo_adv.attacks.SDOAttack`'s guard for this
    generator's images (an adversarially trained classifier of its classes), or None;
    ``bystanders`` the classifier specs recommended, in order, as its bystanders.
    ``memory``: ``"checkpoint"`` (exact checkpointing of the UNet's and VAE decoder's units),
    ``"tiled"`` (inexact), ``"none"``, or ``"auto"`` (the default: ``"checkpoint"`` for latent
    generators, ``"none"`` for small pixel ones); see :mod:`sdo_adv.memory`. ``Generator`` is an
    alias of this class, kept for compatibility.
    """

    def __init__(self, unet: nn.Module, scheduler: Any, vae: nn.Module | None = None,
                 text_encoder: nn.Module | None = None, tokenizer: Any = None, *,
                 num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 null_class: int | None = None, solver: str | None = "ddim",
                 class_names: Sequence[str] | None = None, prompt_template: str = "a photo of a {}",
                 input_mapping: str = "resize", guard: str | None = None, bystanders: Sequence[str] | None = (),
                 memory: str = "auto") -> None:
        super().__init__()
        check_settings(num_inference_steps=num_inference_steps, solver=solver, input_mapping=input_mapping,
                       memory=memory, bystanders=bystanders)  # before the memory plan patches the networks
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.requires_grad_(False).eval()
        memory = ("checkpoint" if vae is not None else "none") if memory == "auto" else memory
        self.memory = MemoryPlan(memory, [unet] + ([getattr(vae, "decoder", vae)] if vae is not None else []))
        self.scheduler = sampling_scheduler(scheduler, solver)
        self.num_inference_steps, self.guidance_scale = int(num_inference_steps), float(guidance_scale)
        num_class_embeds = getattr(unet.config, "num_class_embeds", None)
        if null_class is None and num_class_embeds and guidance_scale != 1.0:
            null_class = num_class_embeds - 1
        self.null_class = null_class
        self.class_names = list(class_names) if class_names is not None else None
        self.prompt_template = prompt_template
        self.input_mapping, self.guard, self.bystanders = input_mapping, guard, tuple(bystanders or ())

    @classmethod
    def from_diffusers(cls, unet: nn.Module, scheduler: Any, vae: nn.Module | None = None,
                       text_encoder: nn.Module | None = None, tokenizer: Any = None,
                       num_inference_steps: int = 50, **kwargs: Any) -> "DiffusionGenerator":
        """Build from diffusers components (see the class docstring for ``kwargs``)."""
        return cls(unet, scheduler, vae, text_encoder, tokenizer,
                   num_inference_steps=num_inference_steps, **kwargs)

    @classmethod
    def from_pipeline(cls, pipe: Any, **kwargs: Any) -> "DiffusionGenerator":
        """Take the components of a loaded diffusers pipeline (DDPM/DDIM, latent, Stable Diffusion)."""
        return cls(pipe.unet, pipe.scheduler, getattr(pipe, "vae", None),
                   getattr(pipe, "text_encoder", None), getattr(pipe, "tokenizer", None), **kwargs)

    # ---- shapes -------------------------------------------------------------------------
    @property
    def latent_space(self) -> bool:
        return self.vae is not None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def image_channels(self) -> int:
        return self.vae.config.in_channels if self.latent_space else self.unet.config.in_channels

    @property
    def image_size(self) -> int:
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        if self.latent_space:
            size *= 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(size)

    @property
    def num_classes(self) -> int | None:
        """Number of real classes of a class-conditional UNet (the null class excluded)."""
        n = getattr(self.unet.config, "num_class_embeds", None)
        if not n:
            return None
        return n - 1 if self.null_class == n - 1 else n

    @property
    def text_conditional(self) -> bool:
        return getattr(self.unet.config, "cross_attention_dim", None) is not None

    @property
    def class_conditional(self) -> bool:
        return getattr(self.unet, "class_embedding", None) is not None

    # ---- input images <-> the generator's images -----------------------------------------------
    def fit(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` images brought to ``image_size`` by :attr:`input_mapping` (channels
        unchanged); differentiable."""
        return fit(images, self.image_size, self.input_mapping)

    def unfit(self, images: Tensor, size: Sequence[int]) -> Tensor:
        """The inverse of :meth:`fit` for inputs of ``size`` ``(H, W)``."""
        return unfit(images, tuple(size), self.input_mapping)

    def to_generator(self, images: Tensor) -> Tensor:
        """[0, 1] images ``(B, C, H, W)`` -> ``(B, image_channels, image_size, image_size)``:
        channels converted explicitly, then :meth:`fit`."""
        return self.fit(convert_channels(images, self.image_channels))

    def from_generator(self, images: Tensor, channels: int, size: Sequence[int]) -> Tensor:
        """The inverse of :meth:`to_generator` for inputs of ``channels`` and ``size`` ``(H, W)``."""
        return convert_channels(self.unfit(images, size), channels)

    # ---- image <-> diffusion space -----------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        """[0, 1] images ``(B, C, H, W)`` at :attr:`image_size` -> diffusion-space tensor."""
        x = images.to(self.dtype) * 2 - 1
        if not self.latent_space:
            return x.to(images.dtype)
        z = self.vae.encode(x).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).to(images.dtype)

    def decode(self, latent: Tensor) -> Tensor:
        """Diffusion-space tensor -> images in [0, 1] (clamped)."""
        x = latent
        if self.latent_space:
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            z = latent.to(self.dtype) / self.vae.config.scaling_factor + shift
            x = self.memory.decode(self.vae, z).to(latent.dtype)
        return (x / 2 + 0.5).clamp(0, 1)

    # ---- conditioning ---------------------------------------------------------------------
    def condition(self, labels: Tensor | None = None, prompts: Sequence[str] | None = None) -> Condition | None:
        """Conditioning for class ``labels`` (``(B,)`` int64) or ``prompts`` (B strings).

        A text-conditional generator given labels builds prompts from ``class_names`` and
        ``prompt_template``. Returns None for an unconditional UNet.
        """
        if self.text_conditional and self.text_encoder is not None:
            if prompts is None:
                if labels is None or self.class_names is None:
                    raise ValueError("a text-conditional generator needs prompts, or labels with class_names")
                prompts = [self.prompt_template.format(self.class_names[int(i)]) for i in labels]
            embeds = self._encode_prompts(list(prompts))
            null = self._encode_prompts([""]) if self.guidance_scale != 1.0 else None
            return Condition("text", embeds, null)
        if self.class_conditional:
            if labels is None:
                raise ValueError("a class-conditional generator needs class labels")
            table = self.unet.class_embedding
            if not isinstance(table, nn.Embedding):
                raise NotImplementedError(f"class embedding of type {type(table).__name__} is not supported")
            labels = labels.to(table.weight.device).long()
            null = None
            if self.null_class is not None and self.guidance_scale != 1.0:
                null = table.weight[self.null_class][None]
            return Condition("class", table(labels), null)
        return None

    def _encode_prompts(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0].to(self.dtype)

    # ---- the denoiser ---------------------------------------------------------------------
    def denoise(self, x: Tensor, t: Tensor, cond: Condition | None) -> Tensor:
        """Model output at ``x`` and timestep ``t`` (a scalar, or one per sample), with
        classifier-free guidance when enabled."""
        if cond is not None and cond.null is not None and self.guidance_scale != 1.0:
            null = cond.null.expand_as(cond.embeds).to(cond.embeds.dtype)
            t = torch.cat([t, t]) if t.dim() else t
            out_c, out_u = self._unet_call(torch.cat([x, x]), t, cond.kind,
                                           torch.cat([cond.embeds, null])).chunk(2)
            return out_u + self.guidance_scale * (out_c - out_u)
        return self._unet_call(x, t, cond.kind if cond else None, cond.embeds if cond else None)

    def _unet_call(self, x: Tensor, t: Tensor, kind: str | None, embeds: Tensor | None) -> Tensor:
        kwargs: dict[str, Any] = {}
        if self.text_conditional:
            if kind == "text":
                kwargs["encoder_hidden_states"] = embeds.to(self.dtype)
            else:
                kwargs["encoder_hidden_states"] = x.new_zeros(
                    x.shape[0], 1, self.unet.config.cross_attention_dim, dtype=self.dtype)
        with self._class_embeds(embeds if kind == "class" else None):
            if kind == "class":
                kwargs["class_labels"] = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            out = self.unet(x.to(self.dtype), t, **kwargs).sample
        return out.to(x.dtype)

    @contextmanager
    def _class_embeds(self, embeds: Tensor | None):
        """Make the UNet's class-embedding table return ``embeds`` (so embeddings can be optimized)."""
        if embeds is None:
            yield
            return
        hook = self.unet.class_embedding.register_forward_hook(lambda m, i, o: embeds.to(o.dtype))
        try:
            yield
        finally:
            hook.remove()

    def network_call(self, x: Tensor, t: Tensor, cond: Condition | None, mode: CallMode) -> Tensor:
        """:meth:`denoise` joined to the autograd graph as ``mode`` says (see
        :mod:`sdo_adv.estimators`): kept, checkpointed, or run without a graph."""
        if mode is CallMode.DETACHED:
            with torch.no_grad():
                return self.denoise(x, t, cond)
        if mode is CallMode.CHECKPOINT and torch.is_grad_enabled():
            return checkpoint(self.memory.whole(self.denoise), x, t, cond, use_reentrant=False)
        return self.denoise(x, t, cond)

    # ---- schedule -------------------------------------------------------------------------
    def trajectory_scheduler(self, device: torch.device | str | None = None) -> Any:
        """A fresh copy of the sampling scheduler with its timesteps set: stateful multistep
        schedulers must start clean for every trajectory."""
        sched = copy.deepcopy(self.scheduler)
        sched.set_timesteps(self.num_inference_steps, device=device)
        return sched

    def timesteps(self) -> Tensor:
        """The sampling schedule ``t_0 > t_1 > ... > t_{n-1}`` (int64)."""
        return self.trajectory_scheduler().timesteps.clone()

    def start_index(self, depth: float | int) -> int:
        """Schedule index to start from (:func:`start_index` on this generator's schedule)."""
        return start_index(depth, self.num_inference_steps)

    def state_alphas(self) -> Tensor:
        """float64 ``(n + 1,)`` cumulative alphas of the sampling states: entry 0 that of
        ``t_0``, entry ``i + 1`` the one a DDIM step from ``t_i`` lands on (``t_i`` minus the
        training steps over ``n``, as diffusers' DDIMScheduler steps; ``t_{i+1}`` under its
        default spacing), the last the final (clean) state."""
        sched, ts = self.scheduler, self.timesteps()
        abar = sched.alphas_cumprod.double()
        final = getattr(sched, "final_alpha_cumprod", torch.tensor(1.0)).double().reshape(())
        prev = ts - sched.config.num_train_timesteps // len(ts)
        landed = [abar[p] if p >= 0 else final for p in prev.tolist()]
        return torch.stack([abar[ts[0]], *landed])

    def ddim_coefficients(self, start: int = 0) -> tuple[Tensor, Tensor]:
        """float64 ``(a, b)`` with ``x_{i+1} = a_i x_i + b_i * output(x_i, t_i)`` for the DDIM
        (eta = 0) update over the steps from ``start``; exact for the ``ddim`` solver, at every
        timestep spacing."""
        sched = self.scheduler
        abar, landed = sched.alphas_cumprod.double(), self.state_alphas()
        ts = self.timesteps()
        a, b = [], []
        for i in range(start, len(ts)):
            at, an = abar[ts[i]], landed[i + 1]
            if sched.config.prediction_type == "epsilon":
                a.append((an / at).sqrt())
                b.append((1 - an).sqrt() - (an * (1 - at) / at).sqrt())
            elif sched.config.prediction_type == "v_prediction":
                a.append((an * at).sqrt() + ((1 - an) * (1 - at)).sqrt())
                b.append((1 - an).sqrt() * at.sqrt() - an.sqrt() * (1 - at).sqrt())
            else:
                raise NotImplementedError(f"prediction_type {sched.config.prediction_type!r} is not supported")
        return torch.stack(a), torch.stack(b)

    # ---- sampling and inversion ---------------------------------------------------------------
    def sample(self, latent: Tensor, *, cond: Condition | None = None,
               estimator: str | Estimator = "sdo", start: int = 0, return_latent: bool = False,
               callback: Callable[[dict[str, Any]], None] | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Run the solver from schedule index ``start`` (0 = pure noise) and decode.

        ``latent``: ``(B, C, h, w)`` diffusion-space tensor at step ``start``. Returns images in
        [0, 1] (and the final diffusion-space tensor when ``return_latent``). Differentiable
        with respect to ``latent`` and ``cond.embeds`` according to ``estimator``; the dtype of
        the computation follows ``latent``. ``callback`` is called after every step with
        ``{"i": index into the sampled steps, "t": timestep, "x": the new state, "output":
        the network output, "mode": its CallMode}``.
        """
        estimator = parse_estimator(estimator)
        sched = self.trajectory_scheduler(latent.device)
        steps = sched.timesteps[start:]
        if len(steps) == 0:
            raise ValueError(f"start {start} leaves no step of the {len(sched.timesteps)}-step schedule")
        x = latent
        for i, (t, mode) in enumerate(zip(steps, estimator.plan(len(steps)))):
            out = self.network_call(x, t, cond, mode)
            x = sched.step(out, t, x).prev_sample
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "output": out, "mode": mode})
        images = self.decode(x)
        return (images, x) if return_latent else images

    @torch.no_grad()
    def invert(self, images_or_latent: Tensor, depth: float | int = 0.5, *,
               cond: Condition | None = None, is_latent: bool = False) -> Inversion:
        """Deterministic DDIM inversion of [0, 1] images (or a diffusion-space tensor with
        ``is_latent=True``) to schedule index :meth:`start_index` ``(depth)``.

        Each inverse step evaluates the network at the current latent with the next (noisier)
        timestep, ``x_i = (x_{i+1} - b_i * output(x_{i+1}, t_i)) / a_i``.
        """
        start = self.start_index(depth)
        x0 = images_or_latent if is_latent else self.encode(images_or_latent)
        target = self.decode(x0) if is_latent else images_or_latent
        a, b = self.ddim_coefficients(start)
        ts = self.timesteps().to(x0.device)[start:]
        x = x0
        for i in reversed(range(len(ts))):
            out = self.denoise(x, ts[i], cond)
            x = ((x - b[i].item() * out) / a[i].item()).to(x0.dtype)
        recon = self.sample(x, cond=cond, estimator="skip", start=start)
        error = (recon - target).flatten(1).pow(2).mean(1)
        return Inversion(x, start, recon, error)


Generator = DiffusionGenerator
