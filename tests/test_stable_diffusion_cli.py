"""`sdo-adv attack` with a text-to-image generator (a tiny Stable Diffusion folder saved by
``save_pretrained``) against a tiny timm model with a 1000-class head, offline: prompts from
class names, synset folders, half precision, and the errors that come before any model loads."""
import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sdo_adv import DiffusionGenerator
from sdo_adv.attacks import SDOAttack
from sdo_adv.cli.attack import attack
from sdo_adv.cli.main import main
from sdo_adv.runs import AttackRunConfig, attack_run
from sdo_adv.runs.config import ATTACK_FIELDS
from tiny import save_tiny_stable_diffusion

SYNSETS = {"n01440764": (0, "tench"), "n02123045": (281, "tabby")}  # ImageNet-1k index, first lemma


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The tiny Stable Diffusion folder (no stored class names, like a hub one), random weights
    of timm's ``test_efficientnet`` (1000 classes) as a checkpoint, and an ImageNet-style folder
    of two 16x16 photos per synset."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("sd")
    save_tiny_stable_diffusion(root / "sd")
    torch.manual_seed(0)
    save_file(timm.create_model("test_efficientnet").state_dict(), str(root / "effnet.safetensors"))
    (root / "net.py").write_text("import torch\n\ndef create_model():\n    return torch.nn.Sequential("
                                 "torch.nn.Flatten(), torch.nn.LazyLinear(1000))\n")
    rng = np.random.default_rng(0)
    for synset in SYNSETS:
        (root / "val" / synset).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "val" / synset / f"{i}.png")
    return root


@pytest.fixture()
def spy(monkeypatch):
    """Record what reaches the generator: the prompts of every conditioning, the generator's
    dtype, and the dtype of every start latent it samples from."""
    seen = {"prompts": [], "dtype": set(), "latent": set()}
    condition, sample = DiffusionGenerator.condition, DiffusionGenerator.sample

    def record_condition(self, labels=None, prompts=None):
        seen["prompts"].append(list(prompts) if prompts is not None else None)
        seen["dtype"].add(self.dtype)
        return condition(self, labels=labels, prompts=prompts)

    def record_sample(self, latent, **kw):
        seen["latent"].add(latent.dtype)
        return sample(self, latent, **kw)

    monkeypatch.setattr(DiffusionGenerator, "condition", record_condition)
    monkeypatch.setattr(DiffusionGenerator, "sample", record_sample)
    return seen


@pytest.fixture()
def no_loads(monkeypatch):
    """Make any model load of an attack run fail, to prove the checks come first."""
    def fail(*_, **__):
        raise AssertionError("a model loaded before the input was checked")

    monkeypatch.setattr(attack_run, "load_classifier", fail)
    monkeypatch.setattr(attack_run, "load_generator", fail)


def sd_attack(assets, out, *extra, classifier=None, input=None):
    return CliRunner().invoke(main, [
        "attack", "--classifier", classifier or f"timm:test_efficientnet@{assets / 'effnet.safetensors'}",
        "--generator", str(assets / "sd"), "--input", str(input or assets / "val"), "--out", str(out),
        "--steps", "1", "--num-inference-steps", "2", "--depth", "0.5", "--guidance-scale", "1", "--guard", "none",
        "--device", "cpu", "--batch-size", "4", *extra])


def manifest(out):
    return [json.loads(line) for line in (Path(out) / "manifest.jsonl").read_text().splitlines()]


def expected_prompts(template="a photo of a {}"):
    return [template.format(name) for _, name in SYNSETS.values() for _ in range(2)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_imagenet_prompts_from_a_timm_classifier(assets, tmp_path, spy, dtype):
    result = sd_attack(assets, tmp_path / "out", "--dtype", dtype)
    assert result.exit_code == 0, result.output
    rows = manifest(tmp_path / "out")
    assert [(r["source"], r["label"]) for r in rows] == [(f"{s}/{i}.png", y) for s, (y, _) in SYNSETS.items()
                                                         for i in range(2)]
    assert [r["prompt"] for r in rows] == expected_prompts()
    assert spy["prompts"] == [expected_prompts()]  # one batch of four: the prompts SDOAttack conditioned on
    assert spy["dtype"] == {getattr(torch, dtype)} and spy["latent"] == {torch.float32}
    assert all(np.isfinite(r["l2"]) and r["pred_before"] in range(1000) for r in rows)
    assert Image.open(tmp_path / "out" / rows[0]["file"]).size == (16, 16)
    config = json.loads((tmp_path / "out" / "run.json").read_text())["config"]
    assert config["dtype"] == dtype and config["prompt_template"] == "a photo of a {}"
    assert config["guard"] == "none" and config["solver"] == "ddim"


def test_class_names_template_and_prompt_column(assets, tmp_path, spy):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.open(assets / "val" / "n01440764" / "0.png").save(flat / name)
    (tmp_path / "labels.csv").write_text("file,label,prompt\na.png,3,\nb.png,9,a red boat at dawn\nc.png,0,\n")
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {i}\n" for i in range(1000)))
    result = sd_attack(assets, tmp_path / "out", "--labels", str(tmp_path / "labels.csv"), "--class-names",
                       str(names), "--prompt-template", "an image of {}", input=flat)
    assert result.exit_code == 0, result.output
    wanted = ["an image of class 3", "a red boat at dawn", "an image of class 0"]
    assert [r["prompt"] for r in manifest(tmp_path / "out")] == wanted and spy["prompts"] == [wanted]

    result = sd_attack(assets, tmp_path / "cifar", "--class-names", "cifar10", "--labels", str(tmp_path / "labels.csv"),
                       input=flat)
    assert result.exit_code == 2 and "CIFAR-10 name 10 classes but the classifier has 1000" in result.output


def test_negative_prompt_replaces_the_empty_prompt(assets, tmp_path, monkeypatch):
    encoded = []
    encode = DiffusionGenerator._encode_prompts
    monkeypatch.setattr(DiffusionGenerator, "_encode_prompts", lambda self, p: (encoded.append(p), encode(self, p))[1])
    result = sd_attack(assets, tmp_path / "out", "--guidance-scale", "2", "--negative-prompt", "blurry")
    assert result.exit_code == 0, result.output
    assert ["blurry"] in encoded and expected_prompts() in encoded
    refused = sd_attack(assets, tmp_path / "out1", "--negative-prompt", "blurry")  # guidance 1: no unconditional branch
    assert refused.exit_code == 2 and "'--negative-prompt'" in refused.output


def error_lines(result):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (result.exception and not isinstance(result.exception, SystemExit))
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return " ".join(result.output.split())


def test_no_class_names_is_a_clear_error_before_any_load(assets, tmp_path, no_loads):
    message = error_lines(sd_attack(assets, tmp_path / "out", classifier=f"{assets / 'net.py'}:create_model"))
    assert "Invalid value for '--class-names'" in message
    assert "is a text-to-image generator and no class names are known" in message
    assert "imagenet, cifar10, cifar100 or a file of one name per line" in message
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


@pytest.mark.parametrize("extra,flag,words", [
    (["--class-names", "klingon"], "--class-names", "neither imagenet, cifar10, cifar100 nor an existing file"),
    (["--class-names", "cifar10"], "--class-names",
     "label 281 of n02123045/0.png has no name among the 10 of CIFAR-10"),
    (["--prompt-template", "a photo"], "--prompt-template", "must hold one {} for the class name"),
    (["--sampler", "picard", "--solver", "dpm++"], "--sampler", "needs the ddim solver, not dpm++"),
    (["--optimize", "cond", "--estimator", "skip"], "--optimize", "gives the conditioning no gradient"),
    (["--guard", "keras:x"], "--guard", "unknown classifier spec 'keras:x'"),
    (["--latent-bound", "x"], "--latent-bound", "'x' is neither a number nor 'none'"),
])
def test_bad_settings_fail_before_any_load(assets, tmp_path, no_loads, extra, flag, words):
    message = error_lines(sd_attack(assets, tmp_path / "out", *extra))
    assert f"'{flag}'" in message and words in message


def test_unknown_synset_folder(assets, tmp_path, no_loads):
    (tmp_path / "val" / "n99999999").mkdir(parents=True)
    Image.open(assets / "val" / "n01440764" / "0.png").save(tmp_path / "val" / "n99999999" / "0.png")
    message = error_lines(sd_attack(assets, tmp_path / "out", input=tmp_path / "val"))
    assert "'--input'" in message and "n99999999 are not among the 1000 ImageNet classes" in message


def test_every_attack_argument_has_a_field_and_a_flag():
    """Every SDOAttack argument but the Python-only ones is a field; every field is a flag with
    the field's default and choices."""
    python_only = {"self", "model", "generator", "prompts", "progress", "callback", "gradient", "guard", "mask",
                   "bystanders"}  # guard and bystanders: fields, loaded by the run
    arguments = set(inspect.signature(SDOAttack.__init__).parameters) - python_only
    assert arguments == set(ATTACK_FIELDS)
    params = {p.name: p for p in attack.params}
    parsed = attack.make_context("attack", []).params  # every option's value when left out
    for field in dataclasses.fields(AttackRunConfig):
        assert field.name in params, field.name
        if field.default is not dataclasses.MISSING and field.name not in ("judges", "bystanders"):  # "" -> ()
            assert parsed[field.name] == field.default, field.name
    from sdo_adv.attacks.sdo import OPTIMIZE, SAMPLERS
    from sdo_adv.generator_settings import SOLVERS
    from sdo_adv.losses import LOSSES
    from sdo_adv.masks import MASK_MODES
    from sdo_adv.picard import HOLDS
    from sdo_adv.runs.config import DTYPES

    for name, accepted in {"loss": LOSSES, "optimize": OPTIMIZE, "sampler": SAMPLERS, "hold": HOLDS,
                           "solver": SOLVERS, "dtype": DTYPES, "mask_mode": MASK_MODES}.items():
        assert tuple(params[name].type.choices) == accepted, name


def test_run_json_of_earlier_versions(assets):
    """Fields absent from an earlier run.json take the values of their time: a run recorded
    before the guard and the SDOAttack options resumes under today's equivalent settings."""
    earlier = {"classifier": "timm:test_efficientnet", "generator": str(assets / "sd"), "input": str(assets / "val"),
               "out": "o", "gradient": "sdo", "steps": 50, "fidelity": 50.0}
    recorded = AttackRunConfig.recorded(earlier)
    assert set(recorded) == {f.name for f in dataclasses.fields(AttackRunConfig)}
    assert recorded["guard"] == "none" and recorded["fidelity_halflife"] is None and recorded["loss"] == "cw"
    assert recorded["fidelity_norm"] == "l2"  # the squared error, the only one before the option
    assert AttackRunConfig(**recorded).changes_from(earlier) == {}
    assert AttackRunConfig(**{**recorded, "latent_bound": 0.2}).changes_from(earlier) == {"latent_bound": (1.0, 0.2)}


def test_json_config_of_fields(assets, tmp_path, spy):
    cfg = {"classifier": f"timm:test_efficientnet@{assets / 'effnet.safetensors'}", "generator": str(assets / "sd"),
           "input": str(assets / "val"), "steps": 1, "num_inference_steps": 2, "depth": 0.5, "guard": "none",
           "latent_bound": None, "fidelity_halflife": None, "loss": "ce", "early_stop": False, "judges": [],
           "class_names": "imagenet", "prompt_template": "a {}", "device": "cpu"}
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(main, ["attack", "--config", str(tmp_path / "run.json"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "o" / "run.json").read_text())["config"]
    assert {k: config[k] for k in cfg} == {**cfg, "input": str(assets / "val"), "depth": [0.5]}
    assert spy["prompts"] == [expected_prompts("a {}")]
