"""UniversalSDO on tiny random-weight models: the changes touch only the conditioning, training
lowers the loss, saving round-trips, a resumed run equals an uninterrupted one, bad inputs fail."""
import hashlib
import json
import shutil

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


@pytest.mark.parametrize("variable", ["cond", "latent", "both", "lora"])
def test_training_lowers_the_margin_on_fresh_seeds_and_changes_only_the_offsets(models, variable):
    model, gen = models
    before = weights_hash(gen.unet)
    universal = UniversalSDO(model, gen, classes=[0, 1, 2], variable=variable,
                             **{**TINY, "lr": 0.05 if variable == "lora" else TINY["lr"]})
    adapter_before = {k: p.detach().clone() for k, p in universal.adapter.items()}
    labels, seeds = torch.tensor([0, 1, 2] * 4), list(range(100, 112))  # not training seeds

    def margin():
        with torch.no_grad():
            return cw_margin(model(universal.sample(labels, seeds)[0]), labels).mean()

    untrained = margin()
    losses = universal.train(12)
    assert len(losses) == 12 and universal.step == 12
    if variable == "lora":  # the tiny UNet's adapter moves fresh samples little; the training loss clearly falls
        assert margin() < untrained and sum(losses[-4:]) < sum(losses[:4]) - 0.08
    elif variable != "cond":  # the tiny UNet's class embedding barely moves its output; the latent does
        assert margin() < untrained - 0.05
    assert weights_hash(gen.unet) == before
    moved = {"cond": universal.cond_offset.abs().sum() > 0, "latent": universal.latent_offset.abs().sum() > 0,
             "lora": any(not torch.equal(p, adapter_before[k]) for k, p in universal.adapter.items())}
    assert moved == {"cond": variable in ("cond", "both"), "latent": variable in ("latent", "both"),
                     "lora": variable == "lora"}
    assert (len(adapter_before) > 0) == (variable == "lora")
    adv, draws = universal.sample(torch.tensor([0, 2]), seeds=[90, 91])
    assert adv.shape == draws.shape == (2, 1, 8, 8) and not torch.equal(adv, draws)


def test_offsets_stay_within_the_bound(models):
    model, gen = models
    universal = UniversalSDO(model, gen, classes=[0, 1], variable="both", **{**TINY, "bound": 0.05, "lr": 1.0})
    universal.train(3)
    base = gen.condition(labels=torch.tensor([0, 1])).embeds
    assert (universal.cond_offset.flatten(1).norm(dim=1) <= 0.05 * base.flatten(1).norm(dim=1) + 1e-6).all()
    assert (universal.latent_offset.flatten(1).pow(2).mean(1).sqrt() <= 0.05 + 1e-6).all()


def test_adapters_stay_within_the_bound_and_leave_the_callers_unet_alone(models):
    from sdo_adv.lora import relative_change

    model, gen = models
    universal = UniversalSDO(model, gen, classes=[0, 1], variable="lora", **{**TINY, "bound": 0.01, "lr": 0.5})
    assert universal._tail.unet is not gen.unet and universal.generator.unet is gen.unet
    universal.train(3)
    change = relative_change(universal._tail.unet)
    assert change.max() <= 0.01 + 1e-6 and change.max() > 0.005  # the bound binds
    assert not any("lora_" in name for name, _ in gen.unet.named_parameters())


def test_an_untrained_adapter_samples_exactly_as_the_generator(models):
    model, gen = models
    plain = UniversalSDO(model, gen, classes=[0, 1], variable="latent", **TINY)
    lora = UniversalSDO(model, gen, classes=[0, 1], variable="lora", **TINY)
    a, draws_a = plain.sample(torch.tensor([0, 1]), [7, 8])
    b, draws_b = lora.sample(torch.tensor([0, 1]), [7, 8])
    assert torch.equal(a, b) and torch.equal(draws_a, draws_b)


@pytest.mark.parametrize("variable", ["both", "lora"])
def test_save_load_round_trips_and_a_resumed_run_equals_an_uninterrupted_one(models, tmp_path, variable):
    model, gen = models
    whole = UniversalSDO(model, gen, classes=[1, 3], variable=variable, **TINY)
    whole.train(6)
    part = UniversalSDO(model, gen, classes=[1, 3], variable=variable, **TINY)
    part.train(3)
    part.save(tmp_path / "u")
    loaded = UniversalSDO.load(tmp_path / "u", model, gen)
    assert loaded.step == 3 and torch.equal(loaded.cond_offset, part.cond_offset)
    assert torch.equal(loaded.latent_offset, part.latent_offset) and loaded.settings == part.settings
    assert loaded.adapter.keys() == part.adapter.keys()
    assert all(torch.equal(loaded.adapter[k], p) for k, p in part.adapter.items())
    a, _ = loaded.sample(torch.tensor([1, 3]), [5, 6])
    b, _ = part.sample(torch.tensor([1, 3]), [5, 6])
    assert torch.equal(a, b)
    loaded.train(6)
    assert torch.allclose(loaded.cond_offset, whole.cond_offset, atol=1e-6)
    assert torch.allclose(loaded.latent_offset, whole.latent_offset, atol=1e-6)
    assert all(torch.allclose(loaded.adapter[k], p, atol=1e-6) for k, p in whole.adapter.items())


def test_calibration_finds_the_smallest_fraction_that_fools_the_target_and_sampling_uses_it(models, tmp_path):
    model, gen = models
    universal = UniversalSDO(model, gen, classes=[0, 1, 2], variable="both", **TINY)
    universal.train(12)
    labels, seeds = torch.tensor([0, 1, 2] * 3), list(range(200, 209))
    whole, draws = universal.sample(labels, seeds)
    calibration = universal.calibrate(0.5, per_class=6, halvings=4)
    rates = {float(k): v for k, v in calibration["fooling"].items()}
    scale = universal.settings["scale"]
    assert calibration["scale"] == scale and calibration["target"] == 0.5 and len(rates) == 5
    assert rates[1.0] >= 0.5 and rates[scale] >= 0.5 and 0 < scale < 1  # the tiny victim is fooled at full size
    assert all(v < 0.5 for k, v in rates.items() if k < scale)  # bisection: every smaller fraction tried fools less
    assert scale - max([k for k in rates if k < scale], default=0.0) == 1 / 16
    scaled, plain = universal.sample(labels, seeds)
    assert torch.equal(plain, draws) and not torch.equal(scaled, whole)
    manual = UniversalSDO(model, gen, classes=[0, 1, 2], variable="both", **TINY)
    with torch.no_grad():  # the same offsets times the fraction, sampled whole
        manual.cond_offset.copy_(universal.cond_offset * scale)
        manual.latent_offset.copy_(universal.latent_offset * scale)
    assert torch.allclose(manual.sample(labels, seeds)[0], scaled, atol=1e-6)
    universal.save(tmp_path / "u")
    loaded = UniversalSDO.load(tmp_path / "u", model, gen)
    assert loaded.settings["scale"] == scale and torch.equal(loaded.sample(labels, seeds)[0], scaled)
    saved = json.loads((tmp_path / "u" / "universal.json").read_text())
    del saved["settings"]["scale"]  # a folder saved before calibration existed samples the whole offsets
    (tmp_path / "u" / "universal.json").write_text(json.dumps(saved))
    older = UniversalSDO.load(tmp_path / "u", model, gen)
    assert older.settings["scale"] == 1.0 and torch.equal(older.sample(labels, seeds)[0], whole)
    untrained = UniversalSDO(model, gen, classes=[0, 1, 2], variable="both", **TINY)  # offsets zero: fool none
    assert untrained.calibrate(0.5, per_class=6) == {"target": 0.5, "per_class": 6, "scale": 1.0, "fooling": {"1": 0.0}}


def test_bad_inputs_are_clear_errors(models, tmp_path):
    model, gen = models
    unconditional = DiffusionGenerator.from_diffusers(tiny_unet(num_class_embeds=None), ddpm_scheduler(),
                                                      num_inference_steps=4)
    with pytest.raises(ValueError, match="class- or text-conditional"):
        UniversalSDO(model, unconditional, classes=[0])
    with pytest.raises(ValueError, match="distinct class indices"):
        UniversalSDO(model, gen, classes=[0, 7])
    with pytest.raises(ValueError, match="unknown variable"):
        UniversalSDO(model, gen, classes=[0], variable="unet")
    universal = UniversalSDO(model, gen, classes=[0, 1], **TINY)
    with pytest.raises(ValueError, match=r"classes \[2\] have no learned change"):
        universal.sample(torch.tensor([0, 2]), [1, 2])
    with pytest.raises(FileNotFoundError, match="universal.json is missing"):
        UniversalSDO.load(tmp_path, model, gen)
    with pytest.raises(ValueError, match="seeds one int per label"):
        universal.sample(torch.tensor([0, 1]), 5)
    with pytest.raises(ValueError, match="would not train"):
        UniversalSDO(model, gen, classes=[0], variable="cond", estimator="skip")
    for target, per_class, halvings in ((0.0, 2, 1), (1.5, 2, 1), (0.5, 0, 1), (0.5, 2, -1)):
        with pytest.raises(ValueError, match="target|per_class|halvings"):
            universal.calibrate(target, per_class, halvings)
    with pytest.raises(ValueError, match="variable='lora' learns an adapter"):
        UniversalSDO(model, gen, classes=[0], variable="lora", **TINY).calibrate(0.5)
    with pytest.raises(ValueError, match="1 with variable='lora'"):
        UniversalSDO(model, gen, classes=[0], variable="lora", scale=0.5, **TINY)
    for setting, value in (("fidelity", -1.0), ("kappa", -3.0), ("batch_size", 1.5), ("bound", 0.0),
                           ("scale", 0.0), ("scale", 1.5), ("pool", 5001)):
        with pytest.raises(ValueError, match=setting):
            UniversalSDO(model, gen, classes=[0], **{setting: value})
    no_null = DiffusionGenerator.from_diffusers(tiny_unet(), ddpm_scheduler(), num_inference_steps=4, guidance_scale=1.0)
    last = no_null.unet.config.num_class_embeds - 1  # becomes the null class under guidance
    with pytest.raises(ValueError, match="distinct class indices"):
        UniversalSDO(model, no_null, classes=[0, last])


def test_training_with_random_steps_resumes_as_if_uninterrupted(models, tmp_path):
    model, gen = models
    settings = {**TINY, "estimator": "sdo:random"}
    whole = UniversalSDO(model, gen, classes=[1, 3], **settings)
    whole.train(4)
    part = UniversalSDO(model, gen, classes=[1, 3], **settings)
    part.train(2)
    resumed = UniversalSDO.load(part.save(tmp_path / "u"), model, gen)
    resumed.train(4)
    assert torch.allclose(resumed.latent_offset, whole.latent_offset, atol=1e-6)
    assert torch.allclose(resumed.cond_offset, whole.cond_offset, atol=1e-6)


# ---- the command line ------------------------------------------------------------------------
from test_generate import assets, rows  # noqa: E402,F401  (the tiny DDPM folder and classifier file)


def universal_args(assets, out, *extra):
    return ["universal", "--classifier", f"{assets / 'net.py'}:create_model", "--generator", str(assets / "ddpm"),
            "--out", str(out), "--classes", "0,1", "--pool", "4", "--batch-size", "2", "--depth", "0.5",
            "--variable", "both", "--lr", "0.2", "--device", "cpu", "--eval-per-class", "2", *extra]


def test_universal_cli_resumes_as_if_uninterrupted_and_generate_samples_with_it(assets, tmp_path):
    from click.testing import CliRunner

    from sdo_adv import load_classifier
    from sdo_adv.cli.main import main
    from sdo_adv.runs.attack_run import item_seed
    from sdo_adv.runs.io import read_image, to_tensor, to_uint8

    run = lambda *args: CliRunner().invoke(main, list(args))  # noqa: E731
    res = run(*universal_args(assets, tmp_path / "u", "--train-steps", "2", "--checkpoint-every", "1"))
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "u" / "universal.json").read_text())
    assert saved["step"] == 2 and {"fooling_rate", "clean_accuracy", "images_per_second"} <= set(saved["figures"])
    res = run(*universal_args(assets, tmp_path / "u", "--train-steps", "3"))
    assert res.exit_code == 0 and "resuming at step 2 of 3" in res.output
    assert run(*universal_args(assets, tmp_path / "whole", "--train-steps", "3")).exit_code == 0
    model = load_classifier(f"{assets / 'net.py'}:create_model")
    resumed, whole = (UniversalSDO.load(tmp_path / f, model, str(assets / "ddpm")) for f in ("u", "whole"))
    assert resumed.step == whole.step == 3
    assert torch.allclose(resumed.cond_offset, whole.cond_offset, atol=1e-6)
    assert torch.allclose(resumed.latent_offset, whole.latent_offset, atol=1e-6)
    res = run(*universal_args(assets, tmp_path / "u", "--train-steps", "3", "--bound", "0.1"))
    assert res.exit_code == 2 and "bound: 0.35 -> 0.1" in res.output
    assert "resume with the options it was run with (--bound 0.35)" in " ".join(res.output.split()), res.output
    other = f"{assets / 'net.py'}:create_other"
    res = run(*universal_args(assets, tmp_path / "u", "--train-steps", "3", "--classifier", other))
    assert res.exit_code == 2 and f"classifier: '{assets / 'net.py'}:create_model' -> '{other}'" in res.output, res.output
    older = tmp_path / "older"  # saved before the "rank" setting existed: it had the default
    shutil.copytree(tmp_path / "u", older)
    saved = json.loads((older / "universal.json").read_text())
    del saved["settings"]["rank"]
    (older / "universal.json").write_text(json.dumps(saved))
    res = run(*universal_args(assets, older, "--train-steps", "3", "--eval-per-class", "0"))
    assert res.exit_code == 0 and "resuming at step 3 of 3" in res.output, res.output
    res = run(*universal_args(assets, older, "--train-steps", "3", "--rank", "2"))
    assert res.exit_code == 2 and "rank: 4 -> 2" in res.output, res.output
    (older / "universal.json").write_text("{")
    res = run(*universal_args(assets, older, "--train-steps", "3"))
    assert res.exit_code == 2 and "not a readable UniversalSDO folder" in res.output, res.output
    (older / "universal.json").write_text(json.dumps(saved))
    (older / "offsets.safetensors").unlink()
    res = run(*universal_args(assets, older, "--train-steps", "3"))
    assert res.exit_code == 2 and "offsets.safetensors is missing" in res.output, res.output

    out = tmp_path / "gen"
    res = run("generate", "--classifier", f"{assets / 'net.py'}:create_model", "--generator", str(assets / "ddpm"),
              "--out", str(out), "--classes", "1", "--per-class", "2", "--universal", str(tmp_path / "u"),
              "--seed", "4", "--device", "cpu")
    assert res.exit_code == 0, res.output
    written = rows(out)
    assert [r["iterations"] for r in written] == [0, 0]
    adv, _ = resumed.sample(torch.tensor([1, 1]), [item_seed(4, "1/0"), item_seed(4, "1/1")])
    for r, image in zip(written, adv):
        assert r["seed"] == item_seed(4, r["source"])
        assert torch.equal(to_tensor(read_image(out / r["file"]), 1), to_uint8(image).float() / 255)
    steps = resumed.settings["num_inference_steps"]
    res = run("generate", "--classifier", f"{assets / 'net.py'}:create_model", "--generator", str(assets / "ddpm"),
              "--out", str(tmp_path / "gen2"), "--classes", "1", "--per-class", "1", "--universal", str(tmp_path / "u"),
              "--num-inference-steps", str(steps + 2), "--device", "cpu")
    assert res.exit_code == 2 and f"trained with {steps} sampling steps" in res.output, res.output


def test_universal_cli_calibrates_when_asked_and_each_run_sets_the_fraction(assets, tmp_path):
    from click.testing import CliRunner

    from sdo_adv.cli.main import main

    run = lambda *args: CliRunner().invoke(main, list(args))  # noqa: E731
    out = tmp_path / "u"
    res = run(*universal_args(assets, out, "--train-steps", "2", "--bound", "2", "--target-fooling", "0.5"))
    assert res.exit_code == 0 and "of the offsets; they fool" in res.output, res.output
    saved = json.loads((out / "universal.json").read_text())
    calibration, scale = saved["figures"]["calibration"], saved["settings"]["scale"]
    assert calibration["target"] == 0.5 and calibration["scale"] == scale == saved["figures"]["scale"]
    assert 0 < scale < 1 and calibration["fooling"][f"{scale:g}"] >= 0.5 > calibration["fooling"]["0.5"]
    from sdo_adv.runs.universal_run import UniversalRun

    resumed = UniversalRun(f"{assets / 'net.py'}:create_model", str(assets / "ddpm"), str(out), classes=(0, 1),
                           train_steps=3, pool=4, batch_size=2, depth=0.5, variable="both", lr=0.2, bound=2.0,
                           device="cpu", notice=lambda _: None)
    assert resumed.universal.step == 2 and resumed.universal.settings["scale"] == 1.0  # its checkpoints: whole offsets
    assert not {"calibration", "scale"} & set(resumed.universal.figures)
    res = run(*universal_args(assets, out, "--train-steps", "2", "--bound", "2"))  # the same training, whole offsets
    saved = json.loads((out / "universal.json").read_text())
    assert res.exit_code == 0 and saved["settings"]["scale"] == 1.0 and "calibration" not in saved["figures"]
    for bad, message in ((["--target-fooling", "0"], "0<x<=1"), (["--target-fooling", "0.5", "--variable", "lora"],
                                                                 "variable lora learns an adapter")):
        res = run(*universal_args(assets, tmp_path / "bad", "--train-steps", "1", *bad))
        assert res.exit_code == 2 and message in res.output, res.output
