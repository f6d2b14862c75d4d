"""SDOAttack on tiny random-weight models: torchattacks conformity, outputs, bad input."""
import pytest
import torch
import torchattacks
from torchattacks.attack import Attack
from torch.utils.data import DataLoader, TensorDataset

from sdo_adv import load_classifier
from sdo_adv.attacks import SDOAttack
from tiny import (FORMER_FIDELITY, NUM_CLASSES, TinyClassifier, latent_class_generator, latent_text_generator,
                  pixel_generator, recorded_network_calls, tiny_sdo_attack, tiny_models, batch, unfooled_batch, NoSampling)

models = pytest.fixture(name="models")(tiny_models)


def test_output_shape_range_dtype_and_record(models):
    model, gen = models
    images, labels = unfooled_batch(model, 4)
    atk = SDOAttack(model, gen, steps=6, lr=0.2, **FORMER_FIDELITY)
    adv = atk(images, labels)
    assert adv.shape == images.shape and adv.dtype == images.dtype and adv.device == images.device
    assert adv.min() >= 0 and adv.max() <= 1
    r = atk.last_result
    assert len(r.history) == 7 and all(0 <= h <= 1 for h in r.history)
    assert len(r.seconds) == 7 and r.seconds == sorted(r.seconds) and r.seconds[0] > 0
    with torch.no_grad():
        pred = model(adv).argmax(1)
    assert torch.equal(r.adv_pred, pred)
    assert torch.equal(r.success, pred != labels)
    assert torch.allclose(r.l2, (adv - images).flatten(1).norm(dim=1), atol=1e-5)
    assert ((r.iterations >= 0) == r.success).all()


def test_attack_flips_predictions_and_beats_reconstruction(models):
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    atk = SDOAttack(model, gen, steps=30, lr=0.3, fidelity=0.0)
    atk(images, labels)
    r = atk.last_result
    assert r.history[0] < 1.0
    assert r.success.float().mean() > r.history[0]


def test_float64_inputs_keep_dtype():
    torch.manual_seed(0)
    model = load_classifier(TinyClassifier().double(), input_size=(1, 8, 8))
    gen = pixel_generator(steps=3, dtype=torch.float64)
    images, labels = batch(2)
    adv = SDOAttack(model, gen, steps=2)(images.double(), labels)
    assert adv.dtype == torch.float64


def test_other_input_resolution_is_resized_both_ways(models):
    model, gen = models
    images, labels = batch(2, size=12)
    adv = SDOAttack(model, gen, steps=2)(images, labels)
    assert adv.shape == images.shape


@pytest.mark.parametrize("mode", ["function", "random", "least_likely", "least_likely_2", "label"])
def test_targeted_modes(models, mode):
    model, gen = models
    images, labels = batch()
    atk = SDOAttack(model, gen, steps=3)
    with torch.no_grad():
        # torchattacks' least-likely target: the k-th smallest clean logit among the classes
        # other than the label
        others = model(images).scatter(1, labels[:, None], float("inf"))
    if mode == "function":
        atk.set_mode_targeted_by_function(lambda x, y: (y + 1) % NUM_CLASSES)
        expected = (labels + 1) % NUM_CLASSES
    elif mode == "random":
        atk.set_mode_targeted_random()
    elif mode == "least_likely":
        atk.set_mode_targeted_least_likely()
        expected = others.argmin(1)
    elif mode == "least_likely_2":
        atk.set_mode_targeted_least_likely(kth_min=2)
        expected = others.sort(1).indices[:, 1]
    else:
        atk.set_mode_targeted_by_label()
        expected = (labels + 2) % NUM_CLASSES
    given = expected if mode == "label" else labels
    atk(images, given)
    r = atk.last_result
    assert r.target is not None and r.target.shape == labels.shape
    if mode == "random":
        assert (r.target != labels).all() and ((0 <= r.target) & (r.target < NUM_CLASSES)).all()
    else:
        assert torch.equal(r.target, expected)
    assert torch.equal(r.success, r.adv_pred == r.target)


def test_multiattack_returns_sdo_successes_and_pgd_for_the_rest(models):
    """MultiAttack runs SDOAttack on the whole batch, keeps its successful images, and
    runs PGD on the remaining ones only."""
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    sdo = SDOAttack(model, gen, steps=1, lr=0.1)
    alone = sdo(images, labels)
    ok = sdo.last_result.success
    assert ok.any() and not ok.all()  # both branches of MultiAttack are exercised
    pgd = torchattacks.PGD(model, eps=0.3, alpha=0.1, steps=3, random_start=False)  # deterministic
    pgd_alone = pgd(images[~ok], labels[~ok])
    with torch.no_grad():
        pgd_ok = model(pgd_alone).argmax(1) != labels[~ok]

    adv = torchattacks.MultiAttack([sdo, pgd])(images, labels)
    assert torch.equal(sdo.last_result.success, ok)  # SDOAttack saw the same batch
    assert torch.equal(adv[ok], alone[ok])
    expected_rest = torch.where(pgd_ok[:, None, None, None], pgd_alone, images[~ok])
    assert torch.allclose(adv[~ok], expected_rest, atol=1e-6)


def test_save_writes_the_adversarial_images_and_the_robust_accuracy(models, tmp_path):
    model, gen = models
    images, labels = batch()
    loader = DataLoader(TensorDataset(images, labels), batch_size=2)
    atk = tiny_sdo_attack(model, gen, steps=2)
    expected = torch.cat([atk(images[:2], labels[:2]), atk(images[2:], labels[2:])])  # batch by batch
    with torch.no_grad():
        right = model(expected).argmax(1) == labels
    assert not torch.allclose(expected, images, atol=1e-3)  # the file cannot pass by holding the inputs
    rob_acc, l2, _ = atk.save(loader, save_path=str(tmp_path / "adv.pt"), verbose=False, return_verbose=True)
    assert rob_acc == pytest.approx(100 * right.float().mean().item())
    if (~right).any():
        assert l2 == pytest.approx((expected - images)[~right].flatten(1).norm(dim=1).mean().item(), rel=1e-5)
    loaded = Attack.load(str(tmp_path / "adv.pt"), batch_size=4)
    adv, lab = next(iter(loaded))
    assert torch.equal(lab, labels)
    assert torch.allclose(adv, expected, atol=1e-6)


def test_normalization_used(models):
    _, gen = models
    raw = TinyClassifier()
    mean, std = [0.5], [0.25]
    atk = SDOAttack(raw, gen, steps=2)
    atk.set_normalization_used(mean=mean, std=std)
    images, labels = batch()
    normalized = (images - 0.5) / 0.25
    adv = atk(normalized, labels)
    back = adv * 0.25 + 0.5
    assert adv.shape == images.shape and back.min() >= -1e-6 and back.max() <= 1 + 1e-6
    with torch.no_grad():
        assert torch.equal(atk.last_result.adv_pred, raw(adv).argmax(1))


def test_model_training_mode_is_restored(models):
    model, gen = models
    model.train()
    atk = SDOAttack(model, gen, steps=1)
    atk(*batch(2))
    assert model.training


def successes_and_l2(model, images, labels, steps):
    """Per callback step: the active samples' success (judged here) and L2 to the input."""
    out = []
    for s in steps:
        with torch.no_grad():
            ok = model(s.images).argmax(1) != labels[s.active]
        out.append((ok, (s.images - images[s.active]).flatten(1).norm(dim=1)))
    return out


def test_early_stop_drops_each_sample_at_its_first_success(models):
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    steps = []
    atk = tiny_sdo_attack(model, gen, steps=6, lr=0.3, fidelity=0.0, callback=steps.append)
    adv = atk(images, labels)
    r = atk.last_result
    judged = successes_and_l2(model, images, labels, steps)
    for before, after in zip(steps, steps[1:]):
        # the samples still optimized are exactly those not yet successful
        assert torch.equal(after.active, (~before.success).nonzero().squeeze(1))
    dropped = [s.success.sum().item() for s in steps[:-1]]
    assert 0 < max(dropped) < len(labels)  # some samples stopped while others went on
    for i in r.success.nonzero().squeeze(1).tolist():
        k = r.iterations[i].item()
        row = steps[k].active.tolist().index(i)
        assert judged[k][0][row]  # the returned image is the one of its first success
        assert all(i not in s.active.tolist() for s in steps[k + 1:])
        assert torch.equal(adv[i], steps[k].images[row])


def test_early_stop_off_keeps_optimizing_and_returns_the_smallest_l2_success(models):
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    steps = []
    atk = SDOAttack(model, gen, steps=6, depth=0.3, lr=0.1, early_stop=False, callback=steps.append, **FORMER_FIDELITY)
    adv = atk(images, labels)
    r = atk.last_result
    assert len(steps) == 7 and len(r.history) == 7
    assert all(torch.equal(s.active, torch.arange(8)) for s in steps)  # successes stay active
    judged = successes_and_l2(model, images, labels, steps)
    later_than_first = 0
    for i in range(8):
        found = [(l2[i].item(), k) for k, (ok, l2) in enumerate(judged) if ok[i]]
        if not found:  # never successful: the last image
            assert not r.success[i] and torch.equal(adv[i], steps[-1].images[i])
            continue
        best_k = min(found)[1]
        assert r.success[i] and r.iterations[i] == best_k
        assert torch.equal(adv[i], steps[best_k].images[i])
        later_than_first += best_k != found[0][1]
    assert later_than_first > 0  # an early stop (first success) would return other images


@pytest.mark.parametrize("optimize", ["cond", "both"])
def test_conditioning_optimization(models, optimize):
    model, gen = models
    images, labels = unfooled_batch(model, 4)
    table = gen.unet.class_embedding.weight.detach()

    def run(opt):
        steps, first = [], []
        with recorded_network_calls(gen) as calls:
            def callback(step):
                steps.append(step)
                first.append(len(calls))
            atk = tiny_sdo_attack(model, gen, steps=3, optimize=opt, callback=callback)
            adv = atk(images, labels)
        # per network call: whether every row of the conditioning left the embedding table
        moved = [torch.cdist(c["embeds"], table).amin(1).gt(1e-6) for c in calls]
        # first[0]: the calls up to the end of iteration 0 (the inversion's, then iteration 0's)
        return adv, atk.last_result, steps, moved[:first[0]], moved[first[0]:]

    adv, r, steps, before, after = run(optimize)
    ref_adv, _, _, ref_before, ref_after = run("latent")
    assert len(before) >= steps[0].network_calls and len(after) >= 2 * steps[0].network_calls
    assert not any(m.any() for m in before) and all(m.all() for m in after)
    assert not any(m.any() for m in ref_before + ref_after)  # optimize="latent" leaves the conditioning alone
    assert not torch.allclose(adv, ref_adv, atol=1e-4)
    inverted = gen.invert(images, 0.5, cond=gen.condition(labels)).latent
    if optimize == "cond":
        assert torch.equal(r.latent, inverted)  # the latent is not optimized
        # every sample is still optimized at the end, and the conditioning lowers its objective
        assert torch.equal(steps[-2].active, steps[0].active)
        assert (steps[-2].loss < steps[0].loss).all()
    else:
        moved_latent = (r.latent - inverted).flatten(1).abs().amax(1) > 0
        assert torch.equal(moved_latent, r.iterations != 0)


def test_returned_images_are_reproducible_from_the_record_with_conditioning_optimization(models):
    model, gen = models
    images, labels = unfooled_batch(model, 4)
    atk = SDOAttack(model, gen, steps=3, depth=0.3, optimize="cond")
    adv = atk(images, labels)
    r = atk.last_result
    with torch.no_grad():
        cond = gen.condition(labels)
        assert r.cond_embeds is not None and not torch.equal(r.cond_embeds, cond.embeds)  # they were optimized
        exact = gen.sample(r.latent, cond=cond.replace(r.cond_embeds), estimator="skip", start=r.start)
    assert torch.allclose(adv, exact, atol=1e-5)


def test_skip_refuses_conditioning_optimization(models):
    model, gen = models
    with pytest.raises(ValueError, match="no gradient"):
        SDOAttack(model, gen, estimator="skip", optimize="cond")


@pytest.mark.parametrize("images,labels,match", [
    (torch.rand(2, 1, 8, 8) * 2, torch.tensor([0, 1]), r"\[0, 1\]"),
    (-torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), r"\[0, 1\]"),
    (torch.rand(1, 8, 8), torch.tensor([0]), "shape"),
    (torch.rand(2, 2, 8, 8), torch.tensor([0, 1]), "channels"),
    (torch.rand(2, 1, 8, 8), torch.tensor([0, 1, 2]), "labels must have shape"),
    (torch.rand(2, 1, 8, 8), torch.tensor([0, 9]), "class indices"),
    (torch.rand(2, 1, 8, 8), torch.tensor([0.0, 1.0]), "integer"),
    (torch.full((2, 1, 8, 8), float("nan")), torch.tensor([0, 1]), "NaN"),
    (torch.rand(0, 1, 8, 8), torch.tensor([], dtype=torch.long), "empty"),
    ((torch.rand(2, 1, 8, 8) * 255).to(torch.uint8), torch.tensor([0, 1]), "floating-point"),
])
def test_bad_inputs_fail_before_sampling(models, images, labels, match):
    model, gen = models
    NoSampling(gen)
    with pytest.raises((ValueError, TypeError), match=match):
        SDOAttack(model, gen, steps=2)(images, labels)


def test_label_outside_generator_classes(models):
    _, gen = models
    model = load_classifier(TinyClassifier(num_classes=10), input_size=(1, 8, 8))
    NoSampling(gen)
    with pytest.raises(ValueError, match="generator is conditioned on 4 classes"):
        SDOAttack(model, gen, steps=2)(torch.rand(2, 1, 8, 8), torch.tensor([0, 7]))


@pytest.mark.parametrize("kwargs,match", [({"gradient": "bptt"}, "unknown gradient estimator"),
                                          ({"loss": "hinge"}, "unknown loss"),
                                          ({"depth": 1.5}, "depth"), ({"depth": 99}, "outside"),
                                          ({"optimize": "weights"}, "unknown optimize")])
def test_bad_arguments(models, kwargs, match):
    model, gen = models
    with pytest.raises(ValueError, match=match):
        SDOAttack(model, gen, **kwargs)


def assert_attack_worked(atk, images, labels, inversion, steps):
    """Nothing is successful on the reconstruction, every sample is successful at the end, and
    the returned images are not the reconstruction (an attack that does nothing fails)."""
    adv = atk(images, labels)
    r = atk.last_result
    assert torch.allclose(r.reconstruction_error, inversion.error)  # the attack inverted as we did
    assert r.history[0] == 0 and not steps[0].success.any() and (steps[0].loss > 0).all()
    assert r.success.all() and (r.iterations > 0).all()
    assert ((adv - inversion.reconstruction).flatten(1).abs().amax(1) > 1e-3).all()
    return r


def test_latent_text_pipeline_end_to_end(tmp_path):
    torch.manual_seed(0)
    gen = latent_text_generator(tmp_path)
    model = load_classifier(TinyClassifier(channels=3, size=16), input_size=(3, 16, 16))
    images, labels = batch(2, channels=3, size=16)
    prompts = ["a red boat", "a small cat"]
    inversion = gen.invert(images, 0.5, cond=gen.condition(prompts=prompts))
    with torch.no_grad():  # the runner-up class of each reconstruction: no success at the start
        target = model(inversion.reconstruction).topk(2).indices[:, 1]
    steps = []
    atk = tiny_sdo_attack(model, gen, steps=3, lr=0.1, fidelity=0.0, optimize="both", prompts=prompts,
                      callback=steps.append)
    atk.set_mode_targeted_by_function(lambda x, y: target)
    r = assert_attack_worked(atk, images, labels, inversion, steps)
    assert torch.equal(r.adv_pred, target)


def test_latent_class_pipeline_end_to_end():
    torch.manual_seed(0)
    gen = latent_class_generator()
    model = load_classifier(TinyClassifier(channels=3, size=16), input_size=(3, 16, 16))
    images, labels = batch(2, channels=3, size=16)
    inversion = gen.invert(images, 0.5, cond=gen.condition(labels))
    with torch.no_grad():  # the least likely class of each reconstruction: no success at the start
        target = model(inversion.reconstruction).argmin(1)
    steps = []
    atk = tiny_sdo_attack(model, gen, steps=3, lr=0.1, fidelity=0.0, estimator="sdo:random", callback=steps.append)
    atk.set_mode_targeted_by_function(lambda x, y: target)
    r = assert_attack_worked(atk, images, labels, inversion, steps)
    assert torch.equal(r.adv_pred, target)


def test_grayscale_generator_with_rgb_images_converts_explicitly(models):
    _, gen = models
    model = load_classifier(TinyClassifier(channels=3), input_size=(3, 8, 8))
    images, labels = batch(2, channels=3)
    with pytest.warns(UserWarning, match="converting explicitly"):
        adv = SDOAttack(model, gen, steps=1)(images, labels)
    assert adv.shape == images.shape


@pytest.mark.parametrize("sampler", ["sequential", "picard"])
def test_returned_images_are_exact_samples_of_the_returned_latents(models, sampler):
    model, gen = models
    images, labels = batch(4, size=12)
    atk = SDOAttack(model, gen, steps=4, depth=0.3, lr=0.3, sampler=sampler, sweeps=1)
    adv = atk(images, labels)
    r = atk.last_result
    cond = gen.condition(labels)
    with torch.no_grad():
        exact = gen.sample(r.latent, cond=cond, estimator="skip", start=r.start)
        exact = torch.nn.functional.interpolate(exact, size=(12, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(adv, exact, atol=1e-5)


def test_picard_attack_tracks_sequential(models):
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    seq = SDOAttack(model, gen, steps=20, lr=0.3, fidelity=0.0)
    seq(images, labels)
    pic = SDOAttack(model, gen, steps=20, lr=0.3, fidelity=0.0, sampler="picard", sweeps=2)
    pic(images, labels)
    assert pic.last_result.success.float().mean() >= seq.last_result.success.float().mean() - 0.25


def test_picard_needs_ddim(models):
    model, _ = models
    with pytest.raises(ValueError, match="ddim"):
        SDOAttack(model, pixel_generator(steps=3, solver="dpm++"), sampler="picard")
    with pytest.raises(ValueError, match="unknown sampler"):
        SDOAttack(model, pixel_generator(steps=3), sampler="jacobi")


class NaNForFirst(torch.nn.Module):
    """A classifier whose logits turn NaN for the first image while gradients are on."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        if torch.is_grad_enabled():
            logits = torch.cat([torch.full_like(logits[:1], float("nan")), logits[1:]])
        return logits


def test_non_finite_loss_fails_that_sample_only(models):
    model, gen = models
    images, labels = batch(3)
    atk = SDOAttack(NaNForFirst(model), gen, steps=3, lr=0.3)
    reference = SDOAttack(model, gen, steps=3, lr=0.3)
    adv, ref = atk(images, labels), reference(images, labels)
    r = atk.last_result
    assert r.failure[0] == "non-finite loss at iteration 0" and r.failure[1:] == [None, None]
    assert not r.success[0]
    assert torch.isfinite(adv).all()
    assert torch.allclose(adv[1:], ref[1:], atol=1e-6)
    assert torch.equal(r.success[1:], reference.last_result.success[1:])


class _NaNGradForFirst(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        grad[0] = float("nan")
        return grad


def test_non_finite_gradient_fails_that_sample_only(models):
    model, gen = models
    images, labels = unfooled_batch(model, 3)  # so iteration 0 takes a gradient step
    poisoned = torch.nn.Sequential(torch.nn.Identity(), model)
    poisoned[0].forward = _NaNGradForFirst.apply
    atk = SDOAttack(poisoned, gen, steps=1, lr=0.3, **FORMER_FIDELITY)  # one step: the poison hits the first image
    adv = atk(images, labels)
    r = atk.last_result
    assert r.failure[0] == "non-finite gradient at iteration 0" and r.failure[1:] == [None, None]
    assert not r.success[0] and torch.isfinite(adv).all()


def test_inputs_that_require_grad_give_a_detached_result(models):
    model, gen = models
    images, labels = batch(2)
    adv = SDOAttack(model, gen, steps=1)(images.requires_grad_(True), labels)
    assert not adv.requires_grad


def test_a_success_is_kept_when_a_later_loss_turns_non_finite(models):
    """Without early stop, a sample that already succeeded stays successful (and is not
    reported as failed) when its loss later turns NaN."""
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    calls = [0]

    class LateNaN(torch.nn.Module):
        def forward(self, x):
            logits = model(x)
            if torch.is_grad_enabled():
                calls[0] += 1
                if calls[0] >= 2:
                    logits = logits * float("nan")
            return logits

    reference = tiny_sdo_attack(model, gen, steps=1, lr=0.3, early_stop=False)
    reference(images, labels)
    atk = tiny_sdo_attack(LateNaN(), gen, steps=3, lr=0.3, early_stop=False)
    atk(images, labels)
    first = reference.last_result.iterations == 0  # successful at iteration 0, before the NaNs
    assert first.any() and not first.all()
    r = atk.last_result
    assert r.success[first].all()
    assert all(r.failure[i] is None for i in first.nonzero().flatten().tolist())
    assert all(r.failure[i] == "non-finite loss at iteration 1" for i in (~first).nonzero().flatten().tolist())
