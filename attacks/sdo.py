"""SDOAttack: natural adversarial images by optimizing a diffusion model's latent."""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchattacks.attack import Attack
from tqdm.auto import tqdm

from sdo_adv.arguments import choice, count, flag, number
from sdo_adv.bystanders import chosen_bystanders, distinct, other_classifier, project_out
from sdo_adv.estimators import Estimator, estimators_name
from sdo_adv.generator import Condition, DiffusionGenerator, Inversion
from sdo_adv.imaging import check_images, check_labels
from sdo_adv.loading import load_classifier, load_generator
from sdo_adv.losses import FIDELITY_NORMS, LOSSES, attack_loss, cw_margin, fidelity_error, keep_loss, reached, success
from sdo_adv.masks import Mask, Region, check_mask_mode
from sdo_adv import metrics
from sdo_adv.picard import HOLDS, PicardSampler, Trajectory
from sdo_adv.rates import learning_rate

from .depths import depth_schedule
from .records import AttackResult, AttackStep, Search, counting_calls, finite_gradients

OPTIMIZE = ("latent", "cond", "both")
SAMPLERS = ("sequential", "picard")


class SDOAttack(Attack):
    r"""Natural adversarial images through a diffusion model, with shortcut (SDO) gradients.

    Each image is encoded, DDIM-inverted to ``depth`` and regenerated; the start latent (and
    optionally the conditioning embedding) is optimized with Adam so that the classifier's prediction
    changes while the image stays close to the original. Gradients through the sampler come from
    the ``estimator`` (see :mod:`sdo_adv.estimators`).

    Arguments:
        model (nn.Module or str): classifier to attack, or a spec for :func:`sdo_adv.load_classifier`;
            takes [0, 1] images of the input's size (an :class:`sdo_adv.ImageClassifier` accepts any size).
        generator (DiffusionGenerator or str): a :class:`sdo_adv.DiffusionGenerator` or a spec for
            :func:`sdo_adv.load_generator`. Inputs are converted (channels, bilinear resize) to
            its resolution by its ``input_mapping`` (resize, or zero-pad and crop back) and
            results converted back, differentiably, so success is judged on the returned image.
        steps (int): optimization iterations. (Default: 50)
        lr (float or sequence): Adam learning rate on the latent; a sequence gives the rate at
            each depth in turn, its last rate serving any further depths. (Default: 0.05)
        estimator (str or Estimator or sequence): gradient estimator: ``sdo`` (= ``sdo:first``),
            ``sdo:last``, ``sdo:random``, ``sdo:<i>``, ``skip``, ``truncated:K``,
            ``checkpoint``, ``full``; several (a sequence or comma-joined) serve the depths in
            turn, as ``lr``; ``"auto"``: ``skip`` (the sampler's linear path alone) at the first of
            several depths, ``sdo`` at the others (see :func:`sdo_adv.estimators.per_depth`).
            ``gradient=`` is its former name. (Default: ``"auto"``)
        depth (float or int or sequence): inversion depth, a fraction of the schedule in (0, 1] or a
            start index; or increasing depths, tried in turn: the samples not yet successful after
            ``steps`` iterations at one depth start again, from their original image, at the next
            (per-sample adaptive depth). (Default: ``(0.2, 0.25, 0.5)``)
        loss (str): ``"cw"`` margin or ``"ce"``. (Default: ``"cw"``)
        kappa (float): confidence margin of the ``cw`` loss. (Default: 0.0)
        fidelity (float): weight of the pixel error to the original ([0, 1] units). (Default: 40.0)
        fidelity_norm (str): that error: ``"l1"`` mean absolute (fewer changed pixels, less
            haze), or ``"l2"`` mean squared (weigh it ~200). (Default: ``"l1"``)
        fidelity_halflife (float or None): iterations over which the fidelity weight halves
            (for samples not yet successful); None keeps it constant. (Default: 10)
        latent_bound (float or None): L-inf bound on the latent's (and conditioning's) change. (Default: 1.0)
        optimize (str): ``"latent"``, ``"cond"`` or ``"both"``. (Default: ``"latent"``)
        early_stop (bool): stop a sample at its first success, else keep its smallest-L2 success. (Default: True)
        prompts (callable or list of str or None): prompts for text-conditional generators, or
            a function of the labels; None: from the generator's ``class_names``. (Default: None)
        progress (bool): a progress bar with the running success rate. (Default: False)
        sampler (str): ``"sequential"``, or ``"picard"``: each iteration refines the last one's
            trajectory with ``sweeps`` batched-over-time sweeps (:mod:`sdo_adv.picard`; DDIM
            only); returned images and success come from an exact pass. (Default: ``"sequential"``)
        sweeps (int): Picard sweeps per iteration. (Default: 1)
        tol (float or None): stop the sweeps once the largest relative update is below it. (Default: None)
        hold (str): what a Picard sweep holds fixed when it rebuilds the trajectory:
            ``"output"`` (the network output: the sampler's linear path) or ``"clean"`` (the
            clean-image prediction; see :mod:`sdo_adv.picard`). (Default: ``"output"``)
        callback (callable or None): called each iteration with an :class:`AttackStep`. (Default: None)
        guard (nn.Module or str or None): a classifier (or a spec for
            :func:`sdo_adv.load_classifier`) that must keep reading the true class: its hinge
            ``max(0, guard_kappa - margin)`` joins the loss with weight ``guard_weight`` and a
            sample succeeds only while the guard reads the true class by ``guard_kappa``; one
            that cannot is returned as its last image the victim still reads correctly (or as
            the input) and reported as not fooled. Not the victim. ``"auto"``: the generator's
            recommended guard, if its settings name one (the embedded digits: none). (Default: ``"auto"``)
        guard_weight (float): weight of the guard's hinge. (Default: 1.0)
        guard_kappa (float): the guard's margin (true-class logit over the largest other)
            that the hinge asks for and success requires. (Default: 0.0)
        mask (Tensor or callable or None): ``(N, 1, H, W)`` in [0, 1], or a function of the images giving
            one: 1 may change, 0 is kept exactly (:mod:`sdo_adv.masks`). (Default: None)
        mask_mode (str): ``"composite"`` or ``"blend"`` (sequential sampler only). (Default: ``"composite"``)
        bystanders (sequence of nn.Module or str, or "auto"): classifiers (or specs) the change should
            not move: the victim's gradient loses, per sample, its components along their margin
            gradients (:mod:`sdo_adv.bystanders`). Never the victim (one giving its logits is left out)
            nor a judge. ``"auto"``: the first three of the generator's recommended ones that are not
            the victim or the guard (the embedded digits: ``digits-lenet``, ``-resnet18``, ``-cnn-aug``,
            ``-mlp``; judge with other models). (Default: ``"auto"``)

    Shape:
        - images: :math:`(N, C, H, W)` in [0, 1], C in {1, 3}. - labels: :math:`(N)` int.
        - output: :math:`(N, C, H, W)` in [0, 1], the input's dtype and device.

    The defaults (shallow inversion with small linear-path steps, a mean-absolute fidelity term
    whose weight halves for samples still unsuccessful, a deeper SDO retry with larger steps)
    were tuned on held-out digits against several embedded victims so that judges of three
    families still read the true class. For Stable Diffusion scale, use ``depth=0.25``-``0.4``,
    ``lr=0.01``, ``latent_bound=0.2`` (ACA's latent budget) and ``fidelity_norm="l2"`` with
    ``fidelity`` around 10.

    Examples::
        >>> attack = SDOAttack(model, generator, steps=50, estimator="sdo")
        >>> adv_images = attack(images, labels)
    """

    def __init__(self, model: torch.nn.Module | str, generator: DiffusionGenerator | str, steps: int = 50,
                 lr: float | Sequence[float] = 0.05, estimator: str | Estimator | Sequence[str] = "auto",
                 depth: float | int | Sequence[float | int] = (0.2, 0.25, 0.5),
                 loss: str = "cw", kappa: float = 0.0, fidelity: float = 40.0,
                 latent_bound: float | None = 1.0, optimize: str = "latent",
                 early_stop: bool = True, fidelity_halflife: float | None = 10.0,
                 prompts: Callable[[Tensor], Sequence[str]] | Sequence[str] | None = None,
                 progress: bool = False, sampler: str = "sequential", sweeps: int = 1,
                 tol: float | None = None, hold: str = "output",
                 callback: Callable[[AttackStep], None] | None = None,
                 guard: torch.nn.Module | str | None = "auto", guard_weight: float = 1.0, guard_kappa: float = 0.0,
                 mask: Mask | None = None, mask_mode: str = "composite", fidelity_norm: str = "l1",
                 bystanders: Sequence[torch.nn.Module | str] | str = "auto", *,
                 gradient: str | None = None) -> None:
        if isinstance(model, str):
            model = load_classifier(model)
        super().__init__("SDOAttack", model)
        self.generator = load_generator(generator)
        if gradient is not None:
            if estimator != "auto" and estimator != gradient:
                raise ValueError(f"estimator={estimator!r} and gradient={gradient!r} disagree: "
                                 "gradient is the former name of estimator, give one")
            estimator = gradient
        self.loss = choice("loss", loss, LOSSES)
        self.fidelity_norm = choice("fidelity_norm", fidelity_norm, FIDELITY_NORMS)
        self.optimize = choice("optimize", optimize, OPTIMIZE)
        self.steps, self.lr, self.depth = count("steps", steps), learning_rate(lr), depth
        self.estimator = estimator
        self.kappa, self.fidelity = number("kappa", kappa, 0), number("fidelity", fidelity, 0)
        self.latent_bound = number("latent_bound", latent_bound, 0, strict=True, optional=True)
        self.early_stop = flag("early_stop", early_stop)
        self.fidelity_halflife = number("fidelity_halflife", fidelity_halflife, 0, strict=True, optional=True)
        self.prompts, self.progress, self.callback = prompts, flag("progress", progress), callback
        self.sampler, hold = choice("sampler", sampler, SAMPLERS), choice("hold", hold, HOLDS)
        self.sweeps, self.tol = count("sweeps", sweeps), number("tol", tol, 0, strict=True, optional=True)
        self._picard = PicardSampler(self.generator, self.sweeps, tol, hold=hold) if sampler == "picard" else None
        guard = self.generator.guard if guard == "auto" else guard
        self.guard = None if guard is None else other_classifier(guard, model, self.generator.device, "guard")
        self.guard_weight, self.guard_kappa = number("guard_weight", guard_weight, 0), number("guard_kappa", guard_kappa)
        self.bystanders = chosen_bystanders(bystanders, model, self.generator, self.guard)
        self.mask, self.mask_mode = mask, check_mask_mode(mask_mode, sampler)
        self.supported_mode = ["default", "targeted"]
        self.last_result: AttackResult | None = None

    def __repr__(self) -> str:
        return (f"SDOAttack(model_name={self.model_name}, device={self.device}, attack_mode={self.attack_mode}, "
                f"targeted={self.targeted}, estimator={self.estimator}, steps={self.steps}, lr={self.lr}, "
                f"depth={self.depth}, sampler={self.sampler})")

    @property
    def estimator(self) -> str:
        """The estimator argument's name; setting it re-plans ``estimators``, one per depth."""
        return self._estimator

    @estimator.setter
    def estimator(self, estimator: str | Estimator | Sequence[str]) -> None:
        self.set_estimator(estimator)

    def set_estimator(self, estimator: str | Estimator | Sequence[str], seed: int | None = None) -> None:
        """Plan ``estimator`` (as the argument; ``seed`` seeds ``sdo:random``) over the depths."""
        self.depths, self.lrs, self.estimators = depth_schedule(
            self.generator.num_inference_steps, self.depth, self.lr, estimator, self.optimize != "latent", seed)
        self._estimator = estimators_name(estimator)

    # ---- checks before any sampling ---------------------------------------------------------
    def _validate(self, images: Tensor, labels: Tensor, clean_logits: Tensor) -> Tensor:
        """Check the labels (and warn about a channel conversion); return them as int64."""
        check_labels(labels, images.shape[0], clean_logits.shape[1])
        n_gen = self.generator.num_classes
        if self.generator.class_conditional and n_gen is not None and labels.max() >= n_gen:
            raise ValueError(f"labels go up to {labels.max().item()} but the generator is conditioned "
                             f"on {n_gen} classes")
        if images.shape[1] != self.generator.image_channels:
            warnings.warn(f"images have {images.shape[1]} channels and the generator "
                          f"{self.generator.image_channels}: converting explicitly "
                          "(gray->RGB by repetition, RGB->gray by luma)", stacklevel=3)
        return labels.long()

    def _condition(self, labels: Tensor) -> Condition | None:
        prompts = self.prompts(labels) if callable(self.prompts) else self.prompts
        if prompts is not None and len(prompts) != labels.shape[0]:
            raise ValueError(f"got {len(prompts)} prompts for {labels.shape[0]} images")
        if not (self.generator.class_conditional or self.generator.text_conditional):
            return None
        return self.generator.condition(labels=labels, prompts=prompts)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        r"""Overridden."""
        check_images(images)
        started, in_dtype, in_device = time.perf_counter(), images.dtype, images.device
        gen = self.generator
        work = torch.float64 if gen.dtype == torch.float64 else torch.float32
        images = images.detach().to(device=gen.device, dtype=work)
        self._region = Region(self.mask, images, self.mask_mode)
        labels = labels.to(gen.device) if isinstance(labels, Tensor) else labels
        with torch.no_grad():
            clean_logits = self.get_logits(images)
        labels = self._validate(images, labels, clean_logits)
        self._bystanders = distinct(self.bystanders, images, clean_logits)
        goal = self.get_target_label(images, labels) if self.targeted else labels
        if self.targeted:
            check_labels(goal, images.shape[0], clean_logits.shape[1], name="target labels")
            goal = goal.to(gen.device).long()
        if self.attack_mode == "targeted(label)":  # torchattacks passes the targets as labels
            labels = clean_logits.argmax(1)  # the true class is unknown: the generator keeps the predicted one
            self._validate(images, labels, clean_logits)

        cond = self._condition(labels)
        n = images.shape[0]
        attackable = torch.ones(n, dtype=torch.bool, device=gen.device) if self.targeted else \
            clean_logits.argmax(1) == labels
        search = Search.begin(images)
        reconstruction = torch.zeros(n, device=gen.device, dtype=work)
        for k in range(len(self.depths)):
            todo = (~(search.done | search.failed)).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            reconstruction[todo] = self._pass(search, images, labels, goal, cond, k, todo, attackable,
                                              started).to(work)
        out = search.best.to(device=in_device, dtype=in_dtype)
        returned = out.to(device=gen.device, dtype=work)
        with torch.no_grad():
            adv_logits = self.get_logits(returned)
        final_success = success(adv_logits, goal, self.targeted) & ~(search.failed & ~search.done)
        final_success &= attackable & self._kept(returned, labels)  # untargeted: a misread clean image is no success
        starts = search.starts.cpu()
        self.last_result = AttackResult(
            success=final_success.cpu(), iterations=torch.where(final_success, search.found_at, -1).cpu(),
            l2=metrics.l2(returned, images).cpu(), linf=metrics.linf(returned, images).cpu(),
            clean_pred=clean_logits.argmax(1).cpu(), adv_pred=adv_logits.argmax(1).cpu(),
            target=goal.cpu() if self.targeted else None, reconstruction_error=reconstruction.cpu(),
            latent=search.best_z.cpu(), start=int(starts[0]) if len(self.depths) == 1 else starts,
            failure=search.failure, cond_embeds=search.best_cond.cpu() if search.best_cond is not None else None,
            history=search.history, seconds=search.seconds)
        return out

    def _pass(self, s: Search, images: Tensor, labels: Tensor, goal: Tensor, cond: Condition | None,
              k: int, todo: Tensor, attackable: Tensor, started: float) -> Tensor:
        """Optimize the ``todo`` samples from an inversion to the ``k``-th depth for ``steps``
        iterations at its learning rate and with its estimator, updating ``s``; return their
        inversion error."""
        gen, work, offset = self.generator, images.dtype, k * (self.steps + 1)
        c, h, w = images.shape[1:]
        cond_t = cond.select(todo) if cond is not None else None
        inversion = self._start_latent(images, self.depths[k], cond_t, todo)
        start = inversion.start
        z0 = torch.zeros((images.shape[0], *inversion.latent.shape[1:]), device=gen.device, dtype=work)
        z0[todo] = inversion.latent.to(work)
        self._region.begin(gen, z0, start)
        if s.best_z is None:
            s.best_z, s.starts[:] = z0.clone(), start
        in_pass = torch.zeros_like(s.done).index_fill_(0, todo, True)
        delta = torch.zeros_like(z0, requires_grad=True)
        params = [delta] if self.optimize != "cond" else []
        cond_delta = None
        if self.optimize != "latent" and cond is not None:
            cond_delta = torch.zeros_like(cond.embeds, requires_grad=True)
            params.append(cond_delta)
            if s.best_cond is None:
                s.best_cond = cond.embeds.detach().clone()
        if not params:
            raise ValueError("optimize='cond' needs a conditional generator")
        opt = torch.optim.Adam(params, lr=self.lrs[k])
        trajectory = self._picard.init_trajectory(z0, start, cond) if self._picard else None
        bar = tqdm(total=self.steps + 1, desc="SDOAttack", unit="it", disable=not self.progress)
        for it in range(self.steps + 1):
            active = (in_pass & (~(s.done | s.failed) if self.early_stop else ~s.failed)).nonzero().squeeze(1)
            if active.numel() == 0:
                s.history.extend([(s.done & attackable).float().mean().item()] * (self.steps + 1 - it))
                s.seconds.extend([s.seconds[-1] if s.seconds else 0.0] * (self.steps + 1 - it))
                break
            last = it == self.steps
            with torch.set_grad_enabled(not last):
                z, cond_a = self._variables(z0, delta, cond, cond_delta, active)
                generated, calls = self._sample(z, cond_a, start, active, trajectory, self.estimators[k])
                adv = self._region.paste(gen.from_generator(generated, c, (h, w)), active)
                logits = self.get_logits(project_out(adv, self._bystanders))
                guard_logits = self.guard(adv) if self.guard is not None else None
                ok = reached(logits, goal[active], self.targeted, self.loss, self.kappa)
                seen, fooled = adv.detach(), ok
                if self._picard is not None:
                    seen, fooled = self._exact(z, cond_a, start, ok | last, seen, ok, goal[active], (c, h, w),
                                               trajectory, active)
                seen_ok = fooled & self._kept(seen, labels[active], None if self._picard else guard_logits)
                s.record(active, seen, seen_ok, fooled, metrics.l2(seen, images[active]), z.detach(),
                         cond_a.embeds.detach() if s.best_cond is not None else None, offset + it, start)
                s.history.append((s.done & attackable).float().mean().item())
                s.seconds.append(time.perf_counter() - started)
                bar.set_postfix(success=f"{s.history[-1]:.0%}")
                bar.update()
                if last:
                    self._report(offset + it, active, seen, s.done, None, s.seconds[-1], calls)
                    break
                error = fidelity_error(adv, images[active], self.fidelity_norm)
                objective = attack_loss(logits, goal[active], self.loss, self.targeted, self.kappa)
                objective = objective + self._fidelity_weight(it) * error
                if guard_logits is not None:
                    objective = objective + self.guard_weight * keep_loss(guard_logits, labels[active], self.guard_kappa)
                self._report(offset + it, active, seen, s.done, objective.detach(), s.seconds[-1], calls)
                train = ~seen_ok if self.early_stop else torch.ones_like(seen_ok)
                broken = train & ~torch.isfinite(objective.detach())
                s.fail(active[broken], f"non-finite loss at iteration {offset + it}")
                train &= ~broken
                if train.any():
                    opt.zero_grad(set_to_none=True)
                    objective[train].sum().backward()
                    broken = train & ~finite_gradients(active, delta, cond_delta)
                    s.fail(active[broken], f"non-finite gradient at iteration {offset + it}")
                    for v in (delta, cond_delta):
                        if v is not None and v.grad is not None:
                            v.grad[active[broken]] = 0
                    opt.step()
                    self._project(z0, start, delta, cond_delta)
        bar.close()
        return inversion.error

    @torch.no_grad()
    def _kept(self, images: Tensor, labels: Tensor, guard_logits: Tensor | None = None) -> Tensor:
        """``(B,)`` bool: the guard (if any) reads ``labels`` (from ``guard_logits`` if given) by ``guard_kappa``."""
        if self.guard is None:
            return torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        logits = guard_logits if guard_logits is not None else self.guard(images)
        return (logits.argmax(1) == labels) & (cw_margin(logits, labels) >= self.guard_kappa)

    def _fidelity_weight(self, iteration: int) -> float:
        """The fidelity weight, halved every ``fidelity_halflife`` iterations (unsuccessful samples may go further)."""
        return self.fidelity * (1.0 if self.fidelity_halflife is None else 0.5 ** (iteration / self.fidelity_halflife))

    @staticmethod
    def _variables(z0: Tensor, delta: Tensor, cond: Condition | None, cond_delta: Tensor | None,
                   active: Tensor) -> tuple[Tensor, Condition | None]:
        """The ``active`` samples' current start latents and conditioning."""
        cond_a = cond.select(active) if cond is not None else None
        if cond_delta is not None:  # only with a conditioning
            cond_a = cond_a.replace(cond_a.embeds + cond_delta[active])
        return z0[active] + delta[active], cond_a

    def _sample(self, z: Tensor, cond: Condition | None, start: int, active: Tensor,
                trajectory: Trajectory | None, estimator: Estimator) -> tuple[Tensor, list[int]]:
        """Generated images in [0, 1] (with Picard, warm-started from and updating
        ``trajectory``) and the ``[calls, images]`` of the UNet it took."""
        with counting_calls(self.generator.unet) as calls:
            if self._picard is None:
                blend = self._region.hook(self.generator, active, start)
                return self.generator.sample(z, cond=cond, estimator=estimator, start=start, callback=blend), calls
            images, refined = self._picard.sample(z, cond=cond, estimator=estimator, start=start,
                                                  trajectory=trajectory.select(active))
        trajectory.states[:, active] = refined.states
        return images, calls

    def _report(self, iteration: int, active: Tensor, images: Tensor, done: Tensor, loss: Tensor | None,
                seconds: float, calls: list[int]) -> None:
        if self.callback is not None:
            self.callback(AttackStep(iteration, active, images, done.clone(), loss, seconds, *calls))

    @torch.no_grad()
    def _exact(self, z: Tensor, cond: Condition | None, start: int, check: Tensor, adv: Tensor,
               ok: Tensor, goal: Tensor, shape: tuple[int, int, int], trajectory: Trajectory,
               active: Tensor) -> tuple[Tensor, Tensor]:
        """Replace the ``check`` samples' images and success by those of an exact sequential
        pass, whose trajectory also replaces theirs in ``trajectory``."""
        idx = check.nonzero().squeeze(1)
        adv, ok = adv.clone(), ok.clone()
        if idx.numel():
            cond_c = cond.replace(cond.embeds.detach()).select(idx) if cond is not None else None
            exact = self._picard.init_trajectory(z.detach()[idx], start, cond_c)
            trajectory.states[:, active[idx]] = exact.states
            adv[idx] = self._region.paste(self.generator.from_generator(self.generator.decode(exact.states[-1]),
                                                                        shape[0], shape[1:]), active[idx])
            ok[idx] = reached(self.get_logits(adv[idx]), goal[idx], self.targeted, self.loss, self.kappa)
        return adv, ok

    def _start_latent(self, images: Tensor, depth: float | int, cond: Condition | None, todo: Tensor) -> Inversion:
        """The ``todo`` samples' start latents at ``depth``: a DDIM inversion of their images."""
        return self.generator.invert(self.generator.to_generator(images[todo]), depth, cond=cond)

    @torch.no_grad()
    def _project(self, z0: Tensor, start: int, delta: Tensor, cond_delta: Tensor | None) -> None:
        """Bound the change of the start latents ``z0`` (at ``start``) and of the conditioning."""
        for v in (delta, cond_delta):
            if v is not None and self.latent_bound is not None:
                v.clamp_(-self.latent_bound, self.latent_bound)
