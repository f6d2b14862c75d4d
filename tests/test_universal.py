"""UniversalSDO on tiny random-weight models: the changes touch only the conditioning, training
lowers the loss, saving round-trips, a resumed run equals an uninterrupted one, bad inputs fail."""
import hashlib

import pytest
import torch

from sdo_adv import DiffusionGenerator
from sdo_adv.attacks import UniversalSDO
from tiny import cw_margin, ddpm_scheduler, tiny_models, tiny_unet

models = pytest.fixture(name="models")(tiny_models)
TINY = {"depth": 0.5, "lr": 0.2, "batch_size": 2, "pool": 4, "fidelity": 0.0, "bound": 2.0, "kappa": 10.0}


def weights_hash(module):
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode() + p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("variable", ["cond", "latent", "both"])
def test_training_lowers_the_margin_on_fresh_seeds_and_changes_only_the_offsets(models, variable):
    model, gen = models
    before = weights_hash(gen.unet)
    universal = UniversalSDO(model, gen, classes=[0, 1, 2], variable=variable, **TINY)
    labels, seeds = torch.tensor([0, 1, 2] * 4), list(range(100, 112))  # not training seeds

    def margin():
        with torch.no_grad():
            return cw_margin(model(universal.sample(labels, seeds)[0]), labels).mean()

    untrained = margin()
    losses = universal.train(12)
    assert len(losses) == 12 and universal.step == 12
    if variable != "cond":  # the tiny UNet's class embedding barely moves its output; the latent does
        assert margin() < untrained - 0.05
    assert weights_hash(gen.unet) == before
    moved = {"cond": universal.cond_offset.abs().sum() > 0, "latent": universal.latent_offset.abs().sum() > 0}
    assert moved["cond"] == (variable != "latent") and moved["latent"] == (variable != "cond")
    adv, draws = universal.sample(torch.tensor([0, 2]), seeds=[90, 91])
    assert adv.shape == draws.shape == (2, 1, 8, 8) and not torch.equal(adv, draws)


def test_offsets_stay_within_the_bound(models):
    model, gen = models
    universal = UniversalSDO(model, gen, classes=[0, 1], variable="both", **{**TINY, "bound": 0.05, "lr": 1.0})
    universal.train(3)
    base = gen.condition(labels=torch.tensor([0, 1])).embeds
    assert (universal.cond_offset.flatten(1).norm(dim=1) <= 0.05 * base.flatten(1).norm(dim=1) + 1e-6).all()
    assert (universal.latent_offset.flatten(1).pow(2).mean(1).sqrt() <= 0.05 + 1e-6).all()


def test_save_load_round_trips_and_a_resumed_run_equals_an_uninterrupted_one(models, tmp_path):
    model, gen = models
    whole = UniversalSDO(model, gen, classes=[1, 3], variable="both", **TINY)
    whole.train(6)
    part = UniversalSDO(model, gen, classes=[1, 3], variable="both", **TINY)
    part.train(3)
    part.save(tmp_path / "u")
    loaded = UniversalSDO.load(tmp_path / "u", model, gen)
    assert loaded.step == 3 and torch.equal(loaded.cond_offset, part.cond_offset)
    assert torch.equal(loaded.latent_offset, part.latent_offset) and loaded.settings == part.settings
    a, _ = loaded.sample(torch.tensor([1, 3]), [5, 6])
    b, _ = part.sample(torch.tensor([1, 3]), [5, 6])
    assert torch.equal(a, b)
    loaded.train(6)
    assert torch.allclose(loaded.cond_offset, whole.cond_offset, atol=1e-6)
    assert torch.allclose(loaded.latent_offset, whole.latent_offset, atol=1e-6)


def test_bad_inputs_are_clear_errors(models, tmp_path):
    model, gen = models
    unconditional = DiffusionGenerator.from_diffusers(tiny_unet(num_class_embeds=None), ddpm_scheduler(),
                                                      num_inference_steps=4)
    with pytest.raises(ValueError, match="class- or text-conditional"):
        UniversalSDO(model, unconditional, classes=[0])
    with pytest.raises(ValueError, match="distinct class indices"):
        UniversalSDO(model, gen, classes=[0, 7])
    with pytest.raises(ValueError, match="unknown variable"):
        UniversalSDO(model, gen, classes=[0], variable="lora")
    universal = UniversalSDO(model, gen, classes=[0, 1], **TINY)
    with pytest.raises(ValueError, match=r"classes \[2\] have no learned change"):
        universal.sample(torch.tensor([0, 2]), [1, 2])
    with pytest.raises(FileNotFoundError, match="universal.json is missing"):
        UniversalSDO.load(tmp_path, model, gen)
