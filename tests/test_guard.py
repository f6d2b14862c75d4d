"""SDOAttack's guard: a classifier that must keep the true class. Its hinge joins the loss, it
gates success, a sample it rejects is not reported (or returned) as fooling the victim, and
``guard="auto"`` takes the generator's recommended guard."""
import pytest
import torch

from sdo_adv import load_classifier
from sdo_adv.attacks import SDOAttack
from sdo_adv.losses import keep_loss
from tiny import NUM_CLASSES, TinyClassifier, attack_steps, tiny_models, tiny_sdo_attack, unfooled_batch

models = pytest.fixture(name="models")(tiny_models)


class Constant(torch.nn.Module):
    """Reads every image as ``label`` (a differentiable guard that never agrees with others)."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label, self.scale = label, torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], NUM_CLASSES, device=x.device) + 0 * x.mean() * self.scale
        logits[:, self.label] = 1.0
        return logits


def test_guard_hinge_joins_the_objective(models):
    model, gen = models
    images, labels = unfooled_batch(model, 4)
    torch.manual_seed(3)
    guard = load_classifier(TinyClassifier(), input_size=(1, 8, 8))
    runs = {}
    for weight in (0.0, 2.5):
        runs[weight] = attack_steps(model, gen, images, labels, steps=1, guard=guard, guard_weight=weight,
                                    guard_kappa=5.0, early_stop=False)[0]
    first = runs[2.5]
    with torch.no_grad():
        hinge = keep_loss(guard(first.images), labels[first.active], 5.0)
    assert (hinge > 0).all()  # kappa 5 on a random guard: the hinge is active, the test is not vacuous
    assert torch.equal(runs[0.0].images, first.images)  # iteration 0 regenerates the same images
    assert torch.allclose(first.loss - runs[0.0].loss, 2.5 * hinge, atol=1e-5)


def test_a_guard_that_never_agrees_blocks_every_success(models):
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    free = tiny_sdo_attack(model, gen, steps=15, guard=None)
    free(images, labels)
    assert free.last_result.success.sum() >= 4  # the victim can be fooled without the guard
    wrong = int((labels.max() + 1) % NUM_CLASSES)
    keep = labels != wrong
    guarded = tiny_sdo_attack(model, gen, steps=15, guard=Constant(wrong))
    adv = guarded(images[keep], labels[keep])
    assert not guarded.last_result.success.any()
    with torch.no_grad():
        assert (model(adv).argmax(1) == labels[keep]).all()  # nothing handed back fools the victim


def test_guard_agreeing_with_the_labels_changes_nothing(models):
    model, gen = models
    images, labels = unfooled_batch(model, 4)

    class Oracle(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(labels, NUM_CLASSES).float() * 100 + 0 * x.mean()

    # without early stop every sample stays active, so the oracle's rows match the batch
    adv_free = tiny_sdo_attack(model, gen, steps=5, guard=None, early_stop=False)(images, labels)
    attack = tiny_sdo_attack(model, gen, steps=5, guard=Oracle(), early_stop=False)
    assert torch.equal(attack(images, labels), adv_free)


def test_the_victim_cannot_be_its_own_guard(models):
    model, gen = models
    with pytest.raises(ValueError, match="guard is the victim"):
        SDOAttack(model, gen, guard=model)


def test_auto_takes_the_generators_guard(models):
    model, gen = models
    assert SDOAttack(model, gen).guard is None  # no recommended guard: none
    gen.guard = "sdo-adv:digits-guard"
    attack = SDOAttack(model, gen)
    assert attack.guard is not None and attack.guard.num_classes == 10
    assert SDOAttack(model, gen, guard=None).guard is None
