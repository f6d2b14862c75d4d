"""SDOAttack on tiny random-weight models: torchattacks conformity, outputs, bad input."""
import pytest
import torch
import torchattacks
from torchattacks.attack import Attack
from torch.utils.data import DataLoader, TensorDataset

from sdo_adv import load_classifier
from sdo_adv.attacks import SDOAttack
from tiny import NUM_CLASSES, TinyClassifier, latent_class_generator, latent_text_generator, pixel_generator


@pytest.fixture()
def models():
    torch.manual_seed(0)
    model = load_classifier(TinyClassifier(), input_size=(1, 8, 8))
    return model, pixel_generator(steps=4)


def batch(n=4, channels=1, size=8):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, channels, size, size, generator=g), torch.arange(n) % NUM_CLASSES


def unfooled_batch(model, n):
    """Images labelled with the model's own predictions: no sample is successful at the start."""
    images, _ = batch(n)
    with torch.no_grad():
        return images, model(images).argmax(1)


def test_output_shape_range_dtype_and_record(models):
    model, gen = models
    images, labels = batch()
    atk = SDOAttack(model, gen, steps=6, lr=0.2)
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


@pytest.mark.parametrize("mode", ["function", "random", "least_likely", "label"])
def test_targeted_modes(models, mode):
    model, gen = models
    images, labels = batch()
    atk = SDOAttack(model, gen, steps=3)
    if mode == "function":
        atk.set_mode_targeted_by_function(lambda x, y: (y + 1) % NUM_CLASSES)
        expected = (labels + 1) % NUM_CLASSES
    elif mode == "random":
        atk.set_mode_targeted_random()
    elif mode == "least_likely":
        atk.set_mode_targeted_least_likely()
    else:
        atk.set_mode_targeted_by_label()
        expected = (labels + 2) % NUM_CLASSES
    given = expected if mode == "label" else labels
    atk(images, given)
    r = atk.last_result
    assert r.target is not None and r.target.shape == labels.shape
    if mode in ("function", "label"):
        assert torch.equal(r.target, expected)
    if mode in ("random", "least_likely"):
        assert (r.target != labels).all()
    assert torch.equal(r.success, r.adv_pred == r.target)


def test_multiattack_with_pgd(models):
    model, gen = models
    images, labels = batch()
    multi = torchattacks.MultiAttack([SDOAttack(model, gen, steps=2), torchattacks.PGD(model, steps=2)])
    adv = multi(images, labels)
    assert adv.shape == images.shape and 0 <= adv.min() and adv.max() <= 1


def test_save_and_load(models, tmp_path):
    model, gen = models
    images, labels = batch()
    loader = DataLoader(TensorDataset(images, labels), batch_size=2)
    atk = SDOAttack(model, gen, steps=2)
    atk.save(loader, save_path=str(tmp_path / "adv.pt"), verbose=False)
    loaded = Attack.load(str(tmp_path / "adv.pt"), batch_size=4)
    adv, lab = next(iter(loaded))
    assert adv.shape == images.shape and torch.equal(lab, labels)


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


def test_early_stop_off_keeps_best_success(models):
    model, gen = models
    images, labels = batch(4)
    atk = SDOAttack(model, gen, steps=5, lr=0.3, early_stop=False)
    atk(images, labels)
    assert len(atk.last_result.history) == 6


@pytest.mark.parametrize("optimize", ["cond", "both"])
def test_conditioning_optimization(models, optimize):
    model, gen = models
    images, labels = batch(2)
    adv = SDOAttack(model, gen, steps=2, optimize=optimize)(images, labels)
    assert adv.shape == images.shape


def test_skip_refuses_conditioning_optimization(models):
    model, gen = models
    with pytest.raises(ValueError, match="no gradient"):
        SDOAttack(model, gen, estimator="skip", optimize="cond")


class NoSampling:
    """Make any network call of the generator fail, to prove validation comes first."""

    def __init__(self, gen):
        gen.unet.register_forward_pre_hook(self._fail)

    @staticmethod
    def _fail(*_):
        raise AssertionError("the generator ran before the input was validated")


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


def test_latent_text_pipeline_end_to_end(tmp_path):
    torch.manual_seed(0)
    gen = latent_text_generator(tmp_path)
    model = load_classifier(TinyClassifier(channels=3, size=16), input_size=(3, 16, 16))
    images, labels = batch(2, channels=3, size=16)
    atk = SDOAttack(model, gen, steps=2, optimize="both")
    adv = atk(images, labels)
    assert adv.shape == images.shape and atk.last_result.reconstruction_error.shape == (2,)


def test_latent_class_pipeline_end_to_end():
    torch.manual_seed(0)
    gen = latent_class_generator()
    model = load_classifier(TinyClassifier(channels=3, size=16), input_size=(3, 16, 16))
    images, labels = batch(2, channels=3, size=16)
    adv = SDOAttack(model, gen, steps=2, estimator="sdo:random")(images, labels)
    assert adv.shape == images.shape


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
    atk = SDOAttack(model, gen, steps=4, lr=0.3, sampler=sampler, sweeps=1)
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
    atk = SDOAttack(poisoned, gen, steps=1, lr=0.3)  # one gradient step: the poison hits the first image
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
    images, labels = batch(3)
    calls = [0]

    class LateNaN(torch.nn.Module):
        def forward(self, x):
            logits = model(x)
            if torch.is_grad_enabled():
                calls[0] += 1
                if calls[0] >= 2:
                    logits = logits * float("nan")
            return logits

    reference = SDOAttack(model, gen, steps=1, lr=0.3, early_stop=False)
    reference(images, labels)
    atk = SDOAttack(LateNaN(), gen, steps=3, lr=0.3, early_stop=False)
    atk(images, labels)
    first = reference.last_result.iterations == 0  # successful at iteration 0, before the NaNs
    assert first.any()
    r = atk.last_result
    assert r.success[first].all()
    assert all(r.failure[i] is None for i in first.nonzero().flatten().tolist())
    assert all(r.failure[i] == "non-finite loss at iteration 1" for i in (~first).nonzero().flatten().tolist())
