"""Judges, the one success definition, by-label targets and the pad/crop input mapping."""
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sdo_adv import load_classifier
from sdo_adv.attacks import SDOAttack
from sdo_adv.cli.main import main
from sdo_adv.imaging import crop_to, fit, pad_to, unfit
from sdo_adv.judging import attack_success, judge_agreement, judge_predictions, natural_success
from tiny import NUM_CLASSES, TinyClassifier, ddpm_scheduler, pixel_generator, tiny_unet

JUDGE = '''
import torch
from torch import nn
from sdo_adv import ImageClassifier


class NoGradient(nn.Module):
    """Reads class 0 for dark images, else 1; refuses to run with a graph or give a gradient."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.register_full_backward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("judge got a gradient")))

    def forward(self, x):
        if torch.is_grad_enabled() or x.requires_grad:
            raise RuntimeError("judge called with a graph")
        bright = (x.flatten(1).mean(1, keepdim=True) > 0) * self.w
        return torch.cat([1 - bright, bright, torch.zeros(len(x), 2)], 1)


def create_judge():
    return ImageClassifier(NoGradient(), (1, 8, 8), (0.5,), (0.5,), 4)
'''


class Fixed(nn.Module):
    def __init__(self, preds):
        super().__init__()
        self.preds = preds

    def forward(self, x):
        return nn.functional.one_hot(self.preds[:len(x)], NUM_CLASSES).float()


def test_success_counts_only_images_read_correctly_before_the_attack():
    labels, clean, adv = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 2, 3]), torch.tensor([1, 3, 2, 0])
    assert attack_success(clean, adv, labels).tolist() == [True, False, False, True]
    assert attack_success(clean, adv, labels, target=torch.tensor([1, 3, 3, 3])).tolist() == [True, True, False,
                                                                                            False]


def test_natural_success_needs_every_judge():
    labels, success = torch.tensor([0, 1, 2, 3]), torch.tensor([True, True, True, False])
    preds = {"a": torch.tensor([0, 1, 0, 3]), "b": torch.tensor([0, 2, 2, 3])}
    assert natural_success(success, labels, preds).tolist() == [True, False, False, False]
    assert judge_agreement(success, labels, preds) == pytest.approx(1 / 3)
    assert judge_agreement(success, labels, {}) is None
    assert judge_agreement(torch.zeros(4, dtype=torch.bool), labels, preds) is None


def test_judges_run_without_a_graph(tmp_path):
    (tmp_path / "judge.py").write_text(JUDGE)
    judge = load_classifier(f"{tmp_path / 'judge.py'}:create_judge")
    images = (0.6 + 0.4 * torch.rand(3, 1, 8, 8)).requires_grad_()
    with torch.enable_grad():
        preds = judge_predictions({"j": judge}, images)["j"]
    assert preds.tolist() == [1, 1, 1]
    with pytest.raises(RuntimeError, match="graph"):  # the judge itself refuses a graph: the check can fail
        judge(images)


def test_an_attack_run_never_gives_a_judge_a_gradient(tmp_path):
    """`sdo-adv attack --judge`: the judge reads every saved image without a graph."""
    from diffusers import DDPMPipeline

    import numpy as np

    torch.manual_seed(0)
    DDPMPipeline(unet=tiny_unet(), scheduler=ddpm_scheduler()).save_pretrained(tmp_path / "ddpm")
    (tmp_path / "ddpm" / "sdo_adv.json").write_text(json.dumps({"num_inference_steps": 2}))
    (tmp_path / "judge.py").write_text(JUDGE + "\n\ndef create_victim():\n    torch.manual_seed(0)\n"
                                       "    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))\n"
                                       "    return ImageClassifier(net, (1, 8, 8), (0.5,), (0.5,), 4)\n")
    np.savez(tmp_path / "x.npz", images=np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8),
             labels=np.array([0, 1, 2]))
    result = CliRunner().invoke(main, ["attack", "--classifier", f"{tmp_path / 'judge.py'}:create_victim",
                                       "--generator", str(tmp_path / "ddpm"), "--input", str(tmp_path / "x.npz"),
                                       "--out", str(tmp_path / "out"), "--steps", "2",
                                       "--judge", f"{tmp_path / 'judge.py'}:create_judge"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert all(set(r["judge_preds"]) == {f"{tmp_path / 'judge.py'}:create_judge"} for r in rows)
    assert all(r["natural"] == (r["success"] and list(r["judge_preds"].values())[0] == r["label"]) for r in rows)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {"clean_accuracy", "success_rate", "judge_agreement", "natural_success_rate"} <= set(summary)


def test_the_attacked_classifier_cannot_judge(tmp_path):
    from sdo_adv.runs import AttackRunConfig, RunError

    with pytest.raises(RunError, match="cannot judge its own attack") as err:
        AttackRunConfig("a.py", "g", str(tmp_path), str(tmp_path / "o"), judges=("a.py",))
    assert err.value.parameter == "judges"


def test_sdoattack_success_excludes_misread_images():
    torch.manual_seed(0)
    model = load_classifier(TinyClassifier(), input_size=(1, 8, 8))
    images = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        clean = model(images).argmax(1)
    labels = clean.clone()
    labels[:3] = (clean[:3] + 1) % NUM_CLASSES  # misread before any attack
    atk = SDOAttack(model, pixel_generator(steps=2), steps=3)
    atk(images, labels)
    r = atk.last_result
    assert not r.success[:3].any()
    assert r.success[3:].tolist() == (r.adv_pred[3:] != labels[3:]).tolist()
    assert r.history[-1] == pytest.approx(r.success.float().mean().item())


def test_by_label_gives_the_images_by_function_gives():
    """torchattacks passes the targets as labels in by-label mode: the generator must still be
    conditioned on the (predicted) true class, as with by-function targets."""
    torch.manual_seed(0)
    model = load_classifier(TinyClassifier(), input_size=(1, 8, 8))
    images = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        labels = model(images).argmax(1)
    targets = (labels + 1) % NUM_CLASSES
    gen = pixel_generator(steps=2)
    by_function = SDOAttack(model, gen, steps=3)
    by_function.set_mode_targeted_by_function(lambda x, y: targets, quiet=True)
    torch.manual_seed(1)
    expected = by_function(images, labels)
    by_label = SDOAttack(model, gen, steps=3)
    by_label.set_mode_targeted_by_label(quiet=True)
    torch.manual_seed(1)
    got = by_label(images, targets)
    assert torch.equal(got, expected)
    assert torch.equal(by_label.last_result.target, targets)


@pytest.mark.parametrize("size", [(28, 28), (27, 30), (32, 32)])
def test_pad_and_crop_round_trip_exactly(size):
    images = torch.rand(2, 1, *size)
    padded = pad_to(images, 32)
    assert padded.shape[-2:] == (32, 32)
    assert torch.equal(crop_to(padded, size), images)
    assert torch.equal(unfit(fit(images, 32, "pad"), size, "pad"), images)
    assert padded.sum().item() == pytest.approx(images.sum().item(), rel=1e-6)  # only zeros added
    with pytest.raises(ValueError, match="cannot pad"):
        pad_to(torch.rand(1, 1, 40, 20), 32)


def test_the_embedded_digit_generator_pads_28_pixel_digits():
    from sdo_adv import load_generator
    from sdo_adv.data import load_digits

    gen = load_generator("sdo-adv:digits")
    assert gen.input_mapping == "pad"
    padded, _ = load_digits(2)
    digits = crop_to(padded, 28)
    assert torch.equal(gen.fit(digits), padded)  # the shipped digits are the 28-pixel ones, zero-padded
    assert torch.equal(gen.from_generator(gen.to_generator(digits), 1, (28, 28)), digits)
