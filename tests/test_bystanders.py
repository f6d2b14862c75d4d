"""Bystanders: the victim's image gradient loses its components along other classifiers' margin
gradients (checked exactly in float64), the bystanders get no gradient, and SDOAttack uses it;
by default the generator's recommended ones, never the victim."""
import copy
from types import SimpleNamespace

import pytest
import torch

from sdo_adv import load_classifier
from sdo_adv.attacks import SDOAttack, SDOGenerate
from sdo_adv.bystanders import chosen_bystanders, distinct, margin_gradients, project_out, recommended, remove_span
from sdo_adv.generator import DiffusionGenerator
from sdo_adv.generator_settings import check_settings
from tiny import (TinyClassifier, attack_steps, cw_margin, ddpm_scheduler, tiny_models, tiny_sdo_attack, tiny_unet,
                  unfooled_batch)

models = pytest.fixture(name="models")(tiny_models)


def test_remove_span_is_the_least_squares_residual():
    g = torch.Generator().manual_seed(0)
    gradient = torch.randn(5, 64, generator=g, dtype=torch.float64)
    directions = [torch.randn(5, 64, generator=g, dtype=torch.float64) for _ in range(3)]
    directions.append(directions[0] * 2 - directions[1])  # dependent: adds nothing to the span
    directions.append(torch.zeros(5, 64, dtype=torch.float64))
    left = remove_span(gradient, directions)
    for i in range(5):
        basis = torch.stack([d[i] for d in directions[:3]], 1)  # (64, 3)
        coef = torch.linalg.lstsq(basis, gradient[i][:, None]).solution
        assert torch.allclose(left[i], gradient[i] - (basis @ coef)[:, 0], atol=1e-10)
        assert torch.allclose(basis.T @ left[i], torch.zeros(3, dtype=torch.float64), atol=1e-10)


def test_the_victims_gradient_leaves_the_bystanders_margins_unchanged_to_first_order(models):
    model, _ = models
    torch.manual_seed(5)
    bystanders = [load_classifier(TinyClassifier(), input_size=(1, 8, 8)).double() for _ in range(2)]
    victim = model.double()
    images = torch.rand(4, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(4) % 3
    cw_margin(victim(project_out(images, bystanders)), labels).sum().backward()
    projected = images.grad.clone()
    images.grad = None
    cw_margin(victim(images), labels).sum().backward()
    plain = images.grad
    directions = margin_gradients(images.detach(), bystanders)
    assert not torch.allclose(projected, plain)
    assert torch.allclose(projected.flatten(1), remove_span(plain.flatten(1), directions), atol=1e-12)
    for d in directions:  # a step along the projected gradient: no first-order change of any bystander's margin
        assert torch.allclose((projected.flatten(1) * d).sum(1), torch.zeros(4, dtype=torch.float64), atol=1e-10)
    assert all(p.grad is None for b in bystanders for p in b.parameters())
    with torch.no_grad():
        assert torch.equal(project_out(images, bystanders), images)
    assert project_out(images, []) is images


def test_sdo_attack_projects_the_victims_gradient(models):
    model, gen = models
    images, labels = unfooled_batch(model, 4)
    torch.manual_seed(3)
    bystander = load_classifier(TinyClassifier(), input_size=(1, 8, 8))
    plain, projected = (attack_steps(model, gen, images, labels, steps=2, early_stop=False, **extra)[1].images
                        for extra in ({}, {"bystanders": [bystander]}))
    assert not torch.allclose(plain, projected)  # the first step went another way
    assert tiny_sdo_attack(model, gen, bystanders=bystander).bystanders == [bystander]


def test_the_victim_cannot_be_a_bystander(models):
    model, gen = models
    with pytest.raises(ValueError, match="the bystander is the victim"):
        tiny_sdo_attack(model, gen, bystanders=[model])


def test_bystanders_are_set_to_eval_and_a_module_list_is_several(models):
    model, gen = models
    first, second = TinyClassifier(), TinyClassifier()  # raw modules, in training mode
    attack = tiny_sdo_attack(model, gen, bystanders=torch.nn.ModuleList([first, second]))
    assert attack.bystanders == [first, second] and not first.training and not second.training
    images = torch.rand(2, 1, 8, 8, dtype=torch.float64)  # float32 bystanders read float64 images
    assert [g.dtype for g in margin_gradients(images, attack.bystanders)] == [torch.float64] * 2


def test_auto_takes_the_first_three_recommended_that_are_not_the_victim_or_the_guard():
    names = [f"sdo-adv:digits-{n}" for n in ("lenet", "resnet18", "cnn-aug", "mlp")]
    assert recommended(names, (names[0], None)) == names[1:]
    assert recommended(names, ("sdo-adv:digits-judge",)) == names[:3]
    assert recommended(names, (names[1], names[3])) == [names[0], names[2]]
    victim, guard = load_classifier(names[0]), load_classifier(names[1])
    generator = SimpleNamespace(bystanders=tuple(names), device="cpu")
    chosen = chosen_bystanders("auto", victim, generator, guard)
    assert [b.name for b in chosen] == names[2:] and not any(b.training for b in chosen)
    assert chosen_bystanders((), victim, generator, guard) == []


def test_the_embedded_generator_recommends_bystanders_and_generation_takes_none():
    attack = SDOAttack("sdo-adv:digits-mlp", "sdo-adv:digits")
    assert [b.name for b in attack.bystanders] == [f"sdo-adv:digits-{n}" for n in ("lenet", "resnet18", "cnn-aug")]
    for none in ((), None, "none"):
        assert SDOAttack("sdo-adv:digits-mlp", "sdo-adv:digits", bystanders=none).bystanders == []
    assert SDOGenerate(load_classifier("sdo-adv:digits-mlp"), "sdo-adv:digits").bystanders == []
    for bad in ("sdo-adv:digits-lenet", [""], 3):
        with pytest.raises(ValueError, match="bystanders must be a list of classifier specs"):
            check_settings(bystanders=bad)
    with pytest.raises(ValueError, match="bystanders must be a list of classifier specs"):
        DiffusionGenerator(tiny_unet(), ddpm_scheduler(), bystanders="sdo-adv:digits-lenet")


def test_a_bystander_giving_the_victims_logits_is_left_out(models):
    model, gen = models
    images, labels = unfooled_batch(model, 4)
    twin = copy.deepcopy(model)  # the victim under another name
    torch.manual_seed(3)
    other = load_classifier(TinyClassifier(), input_size=(1, 8, 8))
    with torch.no_grad():
        logits = model(images)
    with pytest.warns(UserWarning, match="gives the victim's logits: it is the victim, and is left out"):
        assert distinct([twin, other], images, logits) == [other]
    with pytest.warns(UserWarning, match="left out"):
        with_twin = attack_steps(model, gen, images, labels, steps=2, early_stop=False, bystanders=[twin])
    plain = attack_steps(model, gen, images, labels, steps=2, early_stop=False, bystanders=())
    assert torch.equal(with_twin[-1].images, plain[-1].images)
