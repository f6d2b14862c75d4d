"""SDOGenerate: adversarial images of given classes, sampled from seeded noise (no input image)."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import torch
from torch import Tensor

from sdo_adv.generator import Condition, DiffusionGenerator, Inversion
from sdo_adv.imaging import check_labels

from .sdo import SDOAttack


def seeded_noise(generator: DiffusionGenerator, seeds: Sequence[int]) -> Tensor:
    """Start noise ``(N, C, h, w)`` in ``generator``'s diffusion space, one seeded draw per
    sample (on the CPU, so the same seed gives the same noise on every device and batch),
    float64 for a float64 generator, else float32."""
    work = torch.float64 if generator.dtype == torch.float64 else torch.float32
    return torch.stack([torch.randn(noise_shape(generator), generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds]).to(device=generator.device, dtype=work)


def noise_shape(generator: DiffusionGenerator) -> tuple[int, ...]:
    """``(C, h, w)`` of one sample in ``generator``'s diffusion space."""
    size = generator.unet.config.sample_size
    return (generator.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))


def with_guidance(generator: DiffusionGenerator, guidance_scale: float | None) -> DiffusionGenerator:
    """``generator``, or (for another ``guidance_scale``; None keeps its own) a shallow copy
    sharing its networks with that guidance and, for a class-conditional UNet without one, the
    last class embedding as the null class (as :class:`DiffusionGenerator` infers it)."""
    if guidance_scale is None or guidance_scale == generator.guidance_scale:
        return generator
    gen = copy.copy(generator)
    gen.guidance_scale = float(guidance_scale)
    if gen.class_conditional and gen.null_class is None:
        gen.null_class = gen.unet.config.num_class_embeds - 1
    return gen


class SDOGenerate(SDOAttack):
    r"""Adversarial images sampled from noise for given classes, with shortcut (SDO) gradients.

    For each label and seed the generator first samples a plain conditional image (the *draw*)
    from seeded Gaussian noise; then, as in :class:`SDOAttack`, a latent of that draw's own
    trajectory is optimized so that the victim misreads the image while it stays close to the
    draw (the ``fidelity`` term), so the result is still a typical member of the class. At
    ``depth`` 1.0 the variable is the start noise itself, projected back onto its Gaussian shell
    (its norm kept) after every step when ``shell``; at a smaller depth it is the trajectory's
    state at that step (exact: no inversion). Several increasing depths are tried in turn for
    the samples not yet successful, as in :class:`SDOAttack`.

    Arguments:
        model (nn.Module): classifier to attack; takes [0, 1] images at the generator's size.
        generator (DiffusionGenerator or str): a class- or text-conditional generator, or a spec
            for :func:`sdo_adv.load_generator`.
        depth (float or int or sequence): as in :class:`SDOAttack`, on the draw's trajectory.
            (Default: ``(0.3, 0.5)``)
        lr (float or sequence): as in :class:`SDOAttack`. (Default: 0.05)
        estimator (str or sequence): as in :class:`SDOAttack`; the generation defaults were
            tuned with ``sdo`` at every depth. (Default: ``"sdo"``)
        fidelity (float), fidelity_norm (str): as in :class:`SDOAttack`; the squared error the
            generation defaults were tuned with. (Default: 200.0, ``"l2"``)
        shell (bool): keep the norm of the start noise when it is optimized (depth 1.0).
            (Default: True)
        bystanders: as in :class:`SDOAttack`; the generation defaults were tuned without. (Default: ())
        guidance_scale (float or None): classifier-free guidance of the draws and of the attack's
            sampling (a copy of the generator takes it); None keeps the generator's. (Default: 2.0)
        **kwargs: every other :class:`SDOAttack` argument, with its default.

    Shape:
        - labels: :math:`(N)` int classes; seeds: one int per sample, or a base seed ``s``
          giving ``s, s + 1, ...``. - output: :math:`(N, C, S, S)` in [0, 1] at the generator's
          channels and resolution.

    ``last_result`` is an :class:`AttackResult` whose ``clean_pred`` is the victim's reading of
    the draw: untargeted success counts only draws the victim read as their class (its accuracy
    on plain samples is the clean accuracy); ``last_draws`` holds the draws.

    Examples::
        >>> gen = SDOGenerate(model, "sdo-adv:digits")
        >>> adv_images = gen.generate(torch.arange(10), seeds=0)
    """

    def __init__(self, model: torch.nn.Module, generator: DiffusionGenerator | str,
                 depth: float | int | Sequence[float | int] = (0.3, 0.5), lr: float | Sequence[float] = 0.05,
                 shell: bool = True, guidance_scale: float | None = 2.0, fidelity: float = 200.0,
                 fidelity_norm: str = "l2", **kwargs: Any) -> None:
        if kwargs.get("gradient") is None:  # the estimator's former name
            kwargs.setdefault("estimator", "sdo")
        kwargs.setdefault("bystanders", ())
        super().__init__(model, generator, depth=depth, lr=lr, fidelity=fidelity, fidelity_norm=fidelity_norm, **kwargs)
        self.attack = "SDOGenerate"
        gen = self.generator
        if not (gen.class_conditional or gen.text_conditional):
            raise ValueError("SDOGenerate needs a class- or text-conditional generator: an unconditional "
                             "one cannot sample a given class")
        self.generator = with_guidance(gen, guidance_scale)
        self.shell = bool(shell)
        self.last_draws: Tensor | None = None
        self._states: dict[int, Tensor] | None = None

    def __repr__(self) -> str:
        return super().__repr__().replace("SDOAttack(", "SDOGenerate(", 1)[:-1] + f", shell={self.shell})"

    def noise(self, seeds: Sequence[int]) -> Tensor:
        """The generator's :func:`seeded_noise` for ``seeds``."""
        return seeded_noise(self.generator, seeds)

    def generate(self, labels: Tensor | Sequence[int], seeds: int | Sequence[int] = 0) -> Tensor:
        """Adversarial images for ``labels`` from the noise of ``seeds`` (see the class docstring)."""
        gen = self.generator
        if self.attack_mode == "targeted(label)":
            raise ValueError("SDOGenerate does not take targets as labels (generate's labels are the classes to "
                             "draw): use set_mode_targeted_by_function, _random or _least_likely")
        labels = torch.as_tensor(labels).to(gen.device)
        n = labels.shape[0] if labels.ndim == 1 and labels.numel() else 0
        if n == 0:
            raise ValueError(f"labels must be a non-empty 1-D tensor of classes, got shape {tuple(labels.shape)}")
        named = len(gen.class_names) if gen.class_names and self.prompts is None else None  # prompts from names
        check_labels(labels, n, gen.num_classes if gen.class_conditional else named)
        victim = getattr(self.model, "num_classes", None)
        if isinstance(victim, int) and labels.max() >= victim:
            raise ValueError(f"labels go up to {labels.max().item()} but the classifier has {victim} classes")
        seeds = [int(seeds) + i for i in range(n)] if isinstance(seeds, Integral) else [int(s) for s in seeds]
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} labels")
        noise = self.noise(seeds)
        starts = {gen.start_index(d) for d in self.depths}
        states = {0: noise}

        def keep(step: dict[str, Any]) -> None:
            if step["i"] + 1 in starts:
                states[step["i"] + 1] = step["x"]

        with torch.no_grad():
            self.last_draws = gen.sample(noise, cond=self._condition(labels.long()), estimator="skip", callback=keep)
        object.__setattr__(self, "_states", states)  # torchattacks' __setattr__ walks dicts, comparing tensors
        normalized = self._normalization_applied is True  # then torchattacks takes and returns normalized images
        try:
            adv = self(self.normalize(self.last_draws) if normalized else self.last_draws, labels)
            return self.inverse_normalize(adv) if normalized else adv
        finally:
            self._states = None

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        r"""Overridden: runs only inside :meth:`generate`, on its draws."""
        if self._states is None:
            raise TypeError("SDOGenerate samples its own images: call generate(labels, seeds)")
        return super().forward(images, labels)

    def _start_latent(self, images: Tensor, depth: float | int, cond: Condition | None, todo: Tensor) -> Inversion:
        start = self.generator.start_index(depth)
        latent = self._states[start][todo]
        return Inversion(latent, start, images[todo], torch.zeros(todo.numel(), device=images.device))

    @torch.no_grad()
    def _project(self, z0: Tensor, start: int, delta: Tensor, cond_delta: Tensor | None) -> None:
        super()._project(z0, start, delta, cond_delta)
        if self.shell and start == 0:
            z = z0 + delta
            radius = z0.flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta.copy_(z * radius.view(-1, *[1] * (z.ndim - 1)) - z0)
