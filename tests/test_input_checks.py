"""Inputs that used to crash late, corrupt files or give wrong figures."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sdo_adv import load_generator
from sdo_adv.attacks import SDOAttack, SDOGenerate
from sdo_adv.cli.main import main
from sdo_adv.runs import AttackRunConfig, RunError
from sdo_adv.runs.dataset import read_dataset
from tiny import tiny_models

models = pytest.fixture(name="models")(tiny_models)
TINY = {"depth": 0.5, "lr": 0.1, "fidelity": 50.0, "fidelity_halflife": None, "steps": 4}


def white_block(path, size=(100, 100)):
    image = np.zeros(size[::-1], np.uint8)
    image[20:80, 30:70] = 255
    Image.fromarray(image).save(path)


def test_shrunk_saturated_pixels_stay_in_range(tmp_path):
    (tmp_path / "3").mkdir()
    white_block(tmp_path / "3" / "a.png")
    dataset = read_dataset(tmp_path)
    fit = load_generator("sdo-adv:digits").fit
    assert fit(dataset.load(dataset.items)).max() > 1  # antialiased shrinking overshoots: else this tests nothing
    pixels = dataset.load(dataset.items, fit=fit)
    assert pixels.shape == (1, 1, 32, 32) and pixels.min() >= 0 and pixels.max() == 1


def test_out_may_not_be_the_input_folder_or_inside_an_image_folder(tmp_path):
    (tmp_path / "data" / "3").mkdir(parents=True)
    white_block(tmp_path / "data" / "3" / "a.png")
    (tmp_path / "labels.csv").write_text("file,label\n3/a.png,3\n")
    data, csv = tmp_path / "data", str(tmp_path / "labels.csv")
    for out, labels, match in [(data, None, "is the input folder: "), (data, csv, "is the input folder: "),
                               (data / "adv", None, "is the input folder or inside it")]:
        with pytest.raises(RunError, match=match) as err:
            AttackRunConfig("sdo-adv:digits-mlp", "sdo-adv:digits", str(data), str(out), labels=labels)
        assert err.value.parameter == "out"
    # a CSV names the inputs, so a folder inside the input is not read as a class
    assert AttackRunConfig("sdo-adv:digits-mlp", "sdo-adv:digits", str(data), str(data / "adv"), labels=csv)
    assert AttackRunConfig("sdo-adv:digits-mlp", "sdo-adv:digits", str(data), str(tmp_path / "adv"))


def test_generate_under_normalization_attacks_the_draws(models):
    model, gen = models
    mean, std = 0.5, 0.25
    normalized = torch.nn.Sequential()
    normalized.forward = lambda z: model(z * std + mean)  # a victim that takes normalized images
    attack = SDOGenerate(normalized, gen, **TINY)
    attack.set_normalization_used([mean], [std])
    adv = attack.generate(torch.tensor([0, 1, 2, 3]), seeds=7)
    r, draws = attack.last_result, attack.last_draws
    assert 0 <= adv.min() and adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(r.clean_pred, model(draws).argmax(1))
    assert torch.allclose(r.l2, (adv - draws).flatten(1).norm(dim=1), atol=1e-4)


def test_generate_refuses_targets_given_as_labels(models):
    model, gen = models
    attack = SDOGenerate(model, gen, **TINY)
    attack.set_mode_targeted_by_label(quiet=True)
    with pytest.raises(ValueError, match="set_mode_targeted_by_function"):
        attack.generate(torch.tensor([0, 1]), seeds=0)


def test_victim_as_a_spec_and_a_guard_that_is_the_victim():
    attack = SDOAttack("sdo-adv:digits-mlp", "sdo-adv:digits", steps=1)
    assert attack.model.name == "sdo-adv:digits-mlp"
    with pytest.raises(ValueError, match="the guard sdo-adv:digits-mlp is the victim"):
        SDOAttack(attack.model, attack.generator, guard="sdo-adv:digits-mlp")


def test_universal_pool_smaller_than_a_batch_fails_before_loading(tmp_path, monkeypatch):
    import sdo_adv.runs.universal_run as universal_run

    monkeypatch.setattr(universal_run, "run_classifier", lambda *a, **k: pytest.fail("loaded a model"))
    res = CliRunner().invoke(main, ["universal", "--classifier", "sdo-adv:digits-mlp", "--generator",
                                    "sdo-adv:digits", "--out", str(tmp_path / "u"), "--pool", "1", "--batch-size", "2"])
    assert res.exit_code == 2 and "'--pool'" in res.output and "at least batch_size (2)" in res.output
