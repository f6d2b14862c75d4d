"""UniversalSDO: one adversarial change per class of a conditional generator, learned with SDO
gradients, so that fresh samples of the class fool a classifier at the cost of one sampling pass."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdo_adv.arguments import count, number
from sdo_adv.estimators import parse_estimator
from sdo_adv.files import atomic_write, write_text
from sdo_adv.generator import DiffusionGenerator
from sdo_adv.loading import load_generator
from sdo_adv.losses import attack_loss, keep_loss
from sdo_adv.lora import adapted, bound_adapters

from .generate import noise_shape, seeded_noise, with_guidance

VARIABLES = ("cond", "latent", "both", "lora")
LEARNING_RATES = {"cond": 0.1, "latent": 0.1, "both": 0.1, "lora": 0.03}
OFFSETS, SETTINGS = "offsets.safetensors", "universal.json"
CALIBRATION_SEEDS = 5000  # a class's calibration seeds follow its training seeds: at most this many of each
BATCH = 64  # trajectories sampled (and read by the classifier) at once


def check_pool(pool: int, batch_size: int) -> None:
    """ValueError unless ``pool`` is a count of at least ``batch_size`` trajectories per class
    (and at most 5000: the calibration seeds follow)."""
    if count("pool", pool) < batch_size:
        raise ValueError(f"pool ({pool} trajectories per class) must be at least batch_size ({batch_size})")
    if pool > CALIBRATION_SEEDS:
        raise ValueError(f"pool ({pool} trajectories per class) must be at most {CALIBRATION_SEEDS}")


class UniversalSDO:
    r"""Per-class universal adversarial conditioning of a class- or text-conditional generator.

    A sample of class ``c`` runs the generator's trajectory from its seed's noise unchanged up
    to ``depth`` from the end (where the class and the shape are settled), then the last
    ``depth`` of the schedule with the class's learned changes: an offset of its conditioning
    embedding (``variable="cond"``), an offset added to the latent at that step
    (``"latent"``), or both; or, with ``variable="lora"``, under a low-rank adapter of a copy
    of the UNet (peft LoRA on its convolutions and attention projections), one adapter for
    all the classes, which it tells apart through the UNet's conditioning. Training draws batches of fresh trajectories of each class and
    minimizes the victim's margin plus ``fidelity`` times the squared pixel distance to the
    plain sample of the same trajectory, with gradients from ``estimator`` (SDO by default);
    the changes stay within ``bound``: the conditioning offset's L2 norm at most ``bound``
    times the class embedding's, the latent offset's RMS at most ``bound``, each adapted
    layer's weight change at most ``bound`` times its weight (Frobenius norms).
    :meth:`calibrate` then scales the offsets down, for sampling, to the smallest fraction that
    fools a target share of fresh draws (a bound fitted to the victim).

    Arguments:
        model (nn.Module): classifier to fool; takes [0, 1] images at the generator's size.
        generator (DiffusionGenerator or str): the generator or a spec for :func:`sdo_adv.load_generator`.
        classes (sequence of int): the classes to learn changes for.
        variable (str): ``"cond"``, ``"latent"``, ``"both"`` or ``"lora"`` (needs the
            ``lora`` extra, peft). (Default: ``"both"``)
        depth (float): fraction of the schedule, at its end, that the changes act on. (Default: 0.3)
        bound (float): size of the changes (see above). (Default: 0.35)
        lr (float or None): Adam learning rate; None: 0.1 for the offsets, 0.03 for the
            adapter. (Default: None)
        batch_size (int): fresh trajectories per class and training step. (Default: 4)
        pool (int): trajectories per class drawn once, up to ``depth``, that the batches are taken
            from. (Default: 16)
        fidelity (float): weight of the mean squared pixel error to the plain sample. (Default: 10.0)
        kappa (float): margin of the victim's ``cw`` loss. (Default: 0.0)
        guard (nn.Module or None): a classifier whose hinge keeps the class (see
            :class:`SDOAttack`). (Default: None)
        estimator (str): gradient estimator (:mod:`sdo_adv.estimators`). (Default: ``"sdo"``)
        guidance_scale (float or None): classifier-free guidance (on a copy of the generator);
            None keeps the generator's. (Default: 2.0)
        seed (int): seeds of the training trajectories and batches. (Default: 0)
        rank (int): the adapter's rank (``variable="lora"``). (Default: 4)
        scale (float): the fraction of the offsets that sampling applies, in (0, 1]; set by
            :meth:`calibrate`; training always uses the whole offsets. (Default: 1.0)

    Examples::
        >>> universal = UniversalSDO(model, "sdo-adv:digits", classes=range(10))
        >>> universal.train(30)
        >>> adversarial, plain = universal.sample(torch.tensor([3, 7]), seeds=[10_000, 10_001])
    """

    def __init__(self, model: torch.nn.Module, generator: DiffusionGenerator | str, classes: Sequence[int],
                 variable: str = "both", depth: float = 0.3, bound: float = 0.35, lr: float | None = None,
                 batch_size: int = 4, pool: int = 16, fidelity: float = 10.0, kappa: float = 0.0,
                 guard: torch.nn.Module | None = None, guard_weight: float = 1.0, estimator: str = "sdo",
                 guidance_scale: float | None = 2.0, seed: int = 0, rank: int = 4, scale: float = 1.0) -> None:
        gen = load_generator(generator)
        if not (gen.class_conditional or gen.text_conditional):
            raise ValueError("UniversalSDO needs a class- or text-conditional generator: an unconditional one "
                             "has no class to change")
        if variable not in VARIABLES:
            raise ValueError(f"unknown variable {variable!r}; accepted: {', '.join(VARIABLES)}")
        gen = with_guidance(gen, guidance_scale)  # it may take the last class embedding as the null class
        self.classes = [count("class", c.item() if isinstance(c, Tensor) else c, 0) for c in classes]
        n = gen.num_classes if gen.class_conditional else len(gen.class_names or ())
        if not self.classes or (n and max(self.classes) >= n) or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct class indices in [0, {n}), got {self.classes}")
        bound, depth = number("bound", bound, 0, strict=True), number("depth", depth, 0, strict=True)
        batch_size, rank = count("batch_size", batch_size), count("rank", rank)
        if depth > 1:
            raise ValueError(f"depth must be in (0, 1], got {depth}")
        check_pool(pool, batch_size)
        lr = number("lr", LEARNING_RATES[variable] if lr is None else lr, 0, strict=True)
        fidelity, kappa = number("fidelity", fidelity, 0), number("kappa", kappa, 0)
        guard_weight, seed = number("guard_weight", guard_weight, 0), count("seed", seed, 0)
        if number("scale", scale, 0, strict=True) > 1 or (variable == "lora" and scale != 1):
            raise ValueError(f"scale must be in (0, 1] (1 with variable='lora', which has no offsets), got {scale}")
        self.model, self.generator, self.guard = model, gen, guard
        self.estimator = parse_estimator(estimator)
        if variable != "latent" and not self.estimator.reaches_condition:
            raise ValueError(f"estimator {self.estimator.name!r} gives the conditioning and the network no "
                             f"gradient, so variable={variable!r} would not train; use variable='latent'")
        self.start = gen.start_index(float(depth))
        self.estimator.check(gen.num_inference_steps - self.start)
        self.settings: dict[str, Any] = {
            "classes": self.classes, "variable": variable, "depth": float(depth), "bound": float(bound),
            "lr": float(lr), "batch_size": int(batch_size), "pool": int(pool), "fidelity": float(fidelity),
            "kappa": float(kappa), "guard_weight": float(guard_weight), "estimator": self.estimator.name,
            "guidance_scale": gen.guidance_scale, "num_inference_steps": gen.num_inference_steps, "seed": int(seed),
            "rank": int(rank), "scale": float(scale)}
        self.step, self.figures = 0, {}
        base = gen.condition(labels=torch.tensor(self.classes, device=gen.device)).embeds.detach()
        self._norms = base.flatten(1).norm(dim=1)
        self.cond_offset = torch.zeros_like(base, requires_grad=True)
        self.latent_offset = torch.zeros((len(self.classes), *noise_shape(gen)), device=gen.device, requires_grad=True)
        # the tail of every trajectory runs on self._tail: the generator, or its adapted copy
        self._tail, self.adapter = (adapted(gen, rank, seed) if variable == "lora" else (gen, {}))
        params = {"cond": [self.cond_offset], "latent": [self.latent_offset],
                  "both": [self.cond_offset, self.latent_offset], "lora": list(self.adapter.values())}[variable]
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self._pool: tuple[Tensor, Tensor, Tensor] | None = None

    # ---- sampling ------------------------------------------------------------------------------
    def noise(self, seeds: Sequence[int]) -> Tensor:
        """The generator's :func:`~sdo_adv.attacks.generate.seeded_noise` for ``seeds``."""
        return seeded_noise(self.generator, seeds)

    @torch.no_grad()
    def _trajectories(self, labels: Tensor, seeds: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The plain trajectories' latents at the changes' step and their final images in [0, 1]."""
        gen, noise, kept = self.generator, self.noise(seeds), {}

        def keep(step: dict[str, Any]) -> None:
            if step["i"] + 1 == self.start:
                kept["x"] = step["x"]

        draws = gen.sample(noise, cond=gen.condition(labels=labels.to(gen.device)), estimator="skip", callback=keep)
        return kept["x"] if self.start else noise, draws

    def _class_trajectories(self, first: int, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Labels, latents at the changes' step and plain images of ``n`` trajectories per class
        from seeds ``seed * 10**6 + class * 10**4 + first + i`` (in batches of :data:`BATCH`)."""
        s = self.settings["seed"]
        labels = torch.tensor(self.classes).repeat_interleave(n)
        seeds = [s * 10**6 + int(c) * 10**4 + first + i for c in self.classes for i in range(n)]
        parts = [self._trajectories(labels[i:i + BATCH], seeds[i:i + BATCH]) for i in range(0, len(labels), BATCH)]
        return labels, torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _changed(self, states: Tensor, labels: Tensor, estimator: Any, scale: float = 1.0) -> Tensor:
        """Images in [0, 1] from ``states`` at the changes' step under ``scale`` times the
        classes' offsets."""
        index = torch.tensor([self.classes.index(int(c)) for c in labels], device=states.device)
        cond = self.generator.condition(labels=labels.to(states.device))
        cond = cond.replace(cond.embeds + scale * self.cond_offset[index])
        return self._tail.sample(states + scale * self.latent_offset[index], cond=cond, estimator=estimator,
                                 start=self.start)

    @torch.no_grad()
    def sample(self, labels: Tensor | Sequence[int], seeds: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Adversarial samples of ``labels`` (classes among :attr:`classes`) from the noise of
        ``seeds``, and the plain samples of the same noise: two ``(N, C, S, S)`` in [0, 1]."""
        labels = torch.as_tensor(labels).long()
        if labels.ndim != 1 or not len(labels) or isinstance(seeds, (int, str)):
            raise ValueError(f"labels must be a non-empty 1-D sequence and seeds one int per label, got labels "
                             f"of shape {tuple(labels.shape)} and seeds {seeds!r}")
        unknown = sorted({int(c) for c in labels} - set(self.classes))
        if unknown or len(seeds) != len(labels):
            raise ValueError(f"classes {unknown} have no learned change (learned: {self.classes})" if unknown
                             else f"got {len(seeds)} seeds for {len(labels)} labels")
        states, draws = self._trajectories(labels, seeds)
        return self._changed(states, labels, "skip", self.settings["scale"]), draws

    @torch.no_grad()
    def calibrate(self, target: float, per_class: int = 10, halvings: int = 5) -> dict[str, Any]:
        """Set :attr:`settings` ``["scale"]`` to the smallest fraction of the offsets (bisection
        over (0, 1], ``halvings`` steps) under which they fool at least ``target`` of the
        calibration draws the victim reads as their class (``per_class`` fresh trajectories per
        class, seeds ``seed * 10**6 + class * 10**4 + 5000 + i``: neither training nor
        evaluation seeds); 1 if the whole offsets fool fewer. Returns (and keeps in
        :attr:`figures` ``["calibration"]``) the target and the fooling rate at each fraction tried."""
        if self.adapter:
            raise ValueError("calibration scales the offsets; variable='lora' learns an adapter instead")
        target, per_class, halvings = number("target", target, 0, strict=True), count("per_class", per_class), \
            count("halvings", halvings, 0)
        if target > 1 or per_class > CALIBRATION_SEEDS:
            raise ValueError(f"target must be in (0, 1] and per_class at most {CALIBRATION_SEEDS}, "
                             f"got {target} and {per_class}")
        labels, states, draws = self._class_trajectories(CALIBRATION_SEEDS, per_class)
        batches = range(0, len(labels), BATCH)
        correct = torch.cat([self.model(draws[i:i + BATCH]).argmax(1).cpu() for i in batches]) == labels
        if not correct.any():
            raise ValueError("the classifier misreads every calibration draw: nothing to fool")

        def fooling(scale: float) -> float:
            read = torch.cat([self.model(self._changed(states[i:i + BATCH], labels[i:i + BATCH], "skip", scale))
                              .argmax(1).cpu() for i in batches])
            return ((read != labels) & correct).sum().item() / correct.sum().item()

        rates, low, high = {1.0: fooling(1.0)}, 0.0, 1.0
        for _ in range(halvings if rates[1.0] >= target else 0):
            middle = (low + high) / 2
            rates[middle] = fooling(middle)
            low, high = (low, middle) if rates[middle] >= target else (middle, high)
        self.settings["scale"] = high
        self.figures["calibration"] = {"target": target, "per_class": per_class, "scale": high,
                                       "fooling": {f"{k:g}": v for k, v in sorted(rates.items())}}
        return self.figures["calibration"]

    # ---- training ------------------------------------------------------------------------------
    def _training_pool(self) -> tuple[Tensor, Tensor, Tensor]:
        """Labels, latents at the changes' step and plain images of the training trajectories
        (seeds ``seed * 10**6 + class * 10**4 + i``, apart from evaluation seeds)."""
        if self._pool is None:
            self._pool = self._class_trajectories(0, self.settings["pool"])
        return self._pool

    def train(self, steps: int, callback: Callable[[int, float], None] | None = None) -> list[float]:
        """Train until :attr:`step` reaches ``steps`` (continuing a loaded state); return the
        losses of the steps taken. ``callback(step, loss)`` runs after each step."""
        labels, states, plain = self._training_pool()
        n, bs, losses = self.settings["pool"], self.settings["batch_size"], []
        while self.step < steps:
            rng = torch.Generator().manual_seed(self.settings["seed"] * 7919 + self.step)
            pick = torch.cat([k * n + torch.randperm(n, generator=rng)[:bs] for k in range(len(self.classes))])
            y = labels[pick].to(states.device)
            estimator = self.estimator if self.estimator.arg != "random" else \
                parse_estimator(self.estimator.name, seed=self.settings["seed"] * 7919 + self.step)  # resumable
            images = self._changed(states[pick], y, estimator)
            logits = self.model(images)
            loss = attack_loss(logits, y, "cw", False, self.settings["kappa"])
            loss = loss + self.settings["fidelity"] * (images - plain[pick]).flatten(1).pow(2).mean(1)
            if self.guard is not None:
                loss = loss + self.settings["guard_weight"] * keep_loss(self.guard(images), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.mean().backward()
            self.optimizer.step()
            self._project()
            self.step += 1
            losses.append(loss.mean().item())
            if callback is not None:
                callback(self.step, losses[-1])
        return losses

    @torch.no_grad()
    def _project(self) -> None:
        bound = self.settings["bound"]
        scale = (bound * self._norms / self.cond_offset.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1)
        self.cond_offset.mul_(scale.view(-1, *[1] * (self.cond_offset.ndim - 1)))
        rms = self.latent_offset.flatten(1).pow(2).mean(1).sqrt()
        self.latent_offset.mul_((bound / rms.clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1))
        if self.adapter:
            bound_adapters(self._tail.unet, bound)

    # ---- saving --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the offsets and the optimizer state (safetensors) and the settings, step and
        figures (JSON) to ``folder``, each file replaced atomically; return the folder."""
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"cond_offset": self.cond_offset.detach(), "latent_offset": self.latent_offset.detach(),
                   **{f"lora.{name}": p.detach() for name, p in self.adapter.items()}}
        for i, state in self.optimizer.state_dict()["state"].items():
            tensors.update({f"adam.{i}.{k}": v.reshape(-1) if k == "step" else v for k, v in state.items()})
        with atomic_write(folder / OFFSETS, durable=True) as f:
            f.write(save({k: v.contiguous().cpu() for k, v in tensors.items()}))
        write_text(folder / SETTINGS, json.dumps({"settings": self.settings, "step": self.step,
                                                  "figures": self.figures}, indent=2) + "\n", durable=True)
        return folder

    @staticmethod
    def saved_settings(folder: str | Path) -> dict[str, Any]:
        """The settings saved in ``folder``; FileNotFoundError if it is not a UniversalSDO folder."""
        folder = Path(folder)
        for name in (SETTINGS, OFFSETS):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing: not a UniversalSDO folder")
        return json.loads((folder / SETTINGS).read_text())["settings"]

    def restore(self, folder: str | Path) -> "UniversalSDO":
        """Take the offsets, adapter, optimizer state, step and figures saved in ``folder`` (by a
        trainer with this one's settings); return self."""
        from safetensors.torch import load_file

        folder = Path(folder)
        saved = json.loads((folder / SETTINGS).read_text())
        tensors = load_file(str(folder / OFFSETS), device=str(self.generator.device))
        with torch.no_grad():
            self.cond_offset.copy_(tensors["cond_offset"])
            self.latent_offset.copy_(tensors["latent_offset"])
            for name, p in self.adapter.items():
                p.copy_(tensors[f"lora.{name}"])
        state = self.optimizer.state_dict()
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, i, name = key.split(".")
                state["state"].setdefault(int(i), {})[name] = value.cpu().reshape(()) if name == "step" else value
        self.optimizer.load_state_dict(state)
        self.step, self.figures = int(saved["step"]), saved.get("figures", {})
        return self

    @classmethod
    def load(cls, folder: str | Path, model: torch.nn.Module, generator: DiffusionGenerator | str,
             **overrides: Any) -> "UniversalSDO":
        """A trainer with the settings, offsets, optimizer state and step saved in ``folder``;
        ValueError if ``generator`` samples with another number of steps than the changes were
        trained at (they act from a step of that schedule)."""
        saved = cls.saved_settings(folder)
        settings = {k: v for k, v in saved.items() if k != "num_inference_steps"}
        universal = cls(model, generator, **{**settings, **overrides})
        steps, trained = universal.generator.num_inference_steps, saved.get("num_inference_steps")
        if trained is not None and trained != steps:
            raise ValueError(f"the changes were trained with {trained} sampling steps and the generator takes "
                             f"{steps}: sample with {trained}")
        return universal.restore(folder)
