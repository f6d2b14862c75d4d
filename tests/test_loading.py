"""The real loading paths, offline: diffusers folders and hub cache, timm pretrained, robustbench."""
import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sdo_adv import DiffusionGenerator, ImageClassifier, load_classifier, load_generator
from sdo_adv.loading import load_state_dict
from tiny import TinyClassifier, ddpm_scheduler, tiny_cond_unet, tiny_text_encoder, tiny_unet, tiny_vae

HERE = Path(__file__).parent


def save_ddpm(folder: Path) -> Path:
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=tiny_unet(), scheduler=ddpm_scheduler()).save_pretrained(folder)
    return folder


def save_latent_text(folder: Path) -> Path:
    from diffusers import StableDiffusionPipeline

    tok, enc = tiny_text_encoder(folder.parent / "tok")
    StableDiffusionPipeline(vae=tiny_vae(), text_encoder=enc, tokenizer=tok, unet=tiny_cond_unet(),
                            scheduler=ddpm_scheduler(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def test_pixel_ddpm_folder(tmp_path):
    gen = load_generator(save_ddpm(tmp_path / "ddpm"), num_inference_steps=3, guidance_scale=2.0)
    assert isinstance(gen, DiffusionGenerator) and type(gen.scheduler).__name__ == "DDIMScheduler"
    assert gen.image_size == 8 and gen.image_channels == 1 and gen.num_classes == 4
    images = gen.sample(torch.randn(2, 1, 8, 8), cond=gen.condition(torch.tensor([0, 3])))
    assert images.shape == (2, 1, 8, 8)


def test_stored_defaults_are_read(tmp_path):
    folder = save_ddpm(tmp_path / "ddpm")
    (folder / "sdo_adv.json").write_text(json.dumps({"num_inference_steps": 7, "guidance_scale": 3.0,
                                                     "solver": "dpm++"}))
    gen = load_generator(folder)
    assert gen.num_inference_steps == 7 and gen.guidance_scale == 3.0
    assert type(gen.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert load_generator(folder, num_inference_steps=2).num_inference_steps == 2


@pytest.mark.parametrize("settings,match", [({"solver": "euler"}, "unknown solver"),
                                             ({"num_inference_step": 5}, "unknown generator settings"),
                                             ({"input_mapping": "crop"}, "unknown input_mapping"),
                                             ({"num_inference_steps": 0}, "num_inference_steps must be")])
def test_bad_generator_settings_fail_before_the_weights_load(tmp_path, monkeypatch, settings, match):
    from diffusers import DiffusionPipeline

    folder = save_ddpm(tmp_path / "ddpm")
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ValueError, match=match):
        load_generator(folder, **settings)


def test_latent_text_pipeline_folder(tmp_path):
    gen = load_generator(save_latent_text(tmp_path / "sd"), num_inference_steps=2, guidance_scale=2.0)
    assert gen.latent_space and gen.text_conditional and gen.image_size == 16
    cond = gen.condition(prompts=["a cat", "a dog"])
    assert cond.kind == "text" and cond.null is not None
    x = gen.encode(torch.rand(2, 3, 16, 16))
    assert x.shape == (2, 4, 8, 8)
    inv = gen.invert(torch.rand(2, 3, 16, 16), depth=1.0, cond=cond)
    assert inv.start == 0 and inv.error.shape == (2,)
    assert torch.allclose(gen.sample(inv.latent, cond=cond, start=inv.start), inv.reconstruction, atol=1e-5)


@pytest.mark.parametrize("spec,match", [("nowhere/at/all", "no such folder: nowhere/at/all"),
                                        ("./nowhere", "no such folder: ./nowhere"),
                                        ("nowhere", "unknown generator spec 'nowhere'"),
                                        ("sdo-adv:nope", "unknown embedded generator"),
                                        ("org/absent-model", "cannot load diffusers model")])
def test_bad_generator_specs(spec, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_generator(spec)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_generator(tmp_path)


def _fake_hub_repo(cache: Path, repo_id: str) -> Path:
    """Lay out a Hugging Face hub cache entry for ``repo_id`` and return its snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    return snap


def test_hub_ids_load_from_local_cache_offline(tmp_path):
    """timm ``pretrained=True`` and a diffusers hub id, resolved from a local cache in offline mode."""
    import timm
    from safetensors.torch import save_file

    cache = tmp_path / "hub"
    reference = timm.create_model("resnet10t", pretrained=False)
    save_file(reference.state_dict(), str(_fake_hub_repo(cache, "timm/resnet10t.c3_in1k") / "model.safetensors"))
    save_ddpm(_fake_hub_repo(cache, "tiny-org/tiny-ddpm"))
    torch.save(reference.state_dict(), tmp_path / "reference.pt")
    script = f"""
import torch
from sdo_adv import load_classifier, load_generator
clf = load_classifier("timm:resnet10t", pretrained=True)
ref = torch.load({str(tmp_path / 'reference.pt')!r}, weights_only=True)
assert all(torch.equal(v, ref[k]) for k, v in clf.model.state_dict().items() if k in ref), "weights differ"
import timm.data
cfg = timm.data.resolve_data_config({{}}, model=clf.model)
assert clf.input_size == tuple(cfg["input_size"]) and clf.data_config["mean"] == list(cfg["mean"])
assert clf(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
gen = load_generator("tiny-org/tiny-ddpm", num_inference_steps=2)
assert gen.image_size == 8
print("OK")
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]


def test_timm_local_checkpoint(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet10t", num_classes=7, in_chans=1)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    for ckpt in ("w.safetensors", "w.pt"):
        clf = load_classifier(f"timm:resnet10t@{tmp_path / ckpt}", num_classes=7, in_chans=1)
        assert clf(torch.rand(2, 1, 32, 32)).shape == (2, 7)
        inferred = load_classifier(f"timm:resnet10t@{tmp_path / ckpt}")  # as the command line gives it
        assert inferred.input_size[0] == 1 and inferred(torch.rand(2, 1, 32, 32)).shape == (2, 7)
        assert torch.equal(inferred(torch.ones(1, 1, 32, 32)), clf(torch.ones(1, 1, 32, 32)))


class Weights(collections.OrderedDict):
    """A state dict of a custom type: loading it needs unrestricted unpickling."""


@pytest.mark.parametrize("wrap", [lambda s: {"state_dict": s, "args": argparse.Namespace(lr=0.1)},
                                  lambda s: {"model": Weights(s)}])
def test_pickled_checkpoint_is_refused_unless_trusted(tmp_path, monkeypatch, wrap):
    import timm

    reference = timm.create_model("test_vit", num_classes=3)
    torch.save(wrap(reference.state_dict()), tmp_path / "w.pt")
    spec = f"timm:test_vit@{tmp_path / 'w.pt'}"
    with monkeypatch.context() as m:
        m.setattr(timm, "create_model", lambda *a, **k: pytest.fail("a model was built before the refusal"))
        with pytest.raises(ValueError, match="needs arbitrary unpickling") as err:
            load_classifier(spec, num_classes=3)
    assert "can run code" in str(err.value) and "trust_pickle=True" in str(err.value)
    assert "trust_pickle=True" in str(err.value)
    clf = load_classifier(spec, num_classes=3, trust_pickle=True)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in clf.model.state_dict().items())


def test_checkpoint_contents(tmp_path):
    torch.save(torch.nn.Linear(2, 3), tmp_path / "module.pt")
    assert set(load_state_dict(tmp_path / "module.pt", trust_pickle=True)) == {"weight", "bias"}
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for trust in (False, True):
        with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
            load_state_dict(tmp_path / "junk.pt", trust_pickle=trust)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_state_dict(tmp_path / "list.pt")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit timm:test_vit"):
        load_classifier(f"timm:test_vit@{tmp_path / 'other.pt'}")


def test_cli_refuses_pickled_checkpoint_cleanly(tmp_path):
    """`sdo-adv attack` and `evaluate` refuse with a usage error, and load with --trust-pickle."""
    import timm
    from click.testing import CliRunner

    from sdo_adv.cli.main import main

    torch.save({"state_dict": timm.create_model("test_vit").state_dict(), "args": argparse.Namespace(lr=0.1)},
               tmp_path / "w.pt")
    np.savez(tmp_path / "set.npz", images=np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8),
             labels=np.array([0, 1]))
    gen = save_ddpm(tmp_path / "ddpm")
    (gen / "sdo_adv.json").write_text(json.dumps({"num_inference_steps": 2}))
    spec, out = f"timm:test_vit@{tmp_path / 'w.pt'}", tmp_path / "out"
    attack = ["attack", "--classifier", spec, "--generator", str(gen), "--input", str(tmp_path / "set.npz"),
              "--out", str(out), "--steps", "1", "--device", "cpu"]
    evaluate = ["evaluate", "--adv", str(out), "--models", spec, "--out", str(tmp_path / "eval")]

    def refused(args: list[str], option: str) -> None:
        result = CliRunner().invoke(main, args)
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert "needs arbitrary unpickling" in text and "--trust-pickle" in text and option in text
        assert "Traceback" not in result.output

    refused(attack, "'--classifier'")
    assert not out.exists()
    done = CliRunner().invoke(main, [*attack, "--trust-pickle"])
    assert done.exit_code == 0, done.output
    refused(evaluate, "'--models'")
    assert not (tmp_path / "eval").exists()
    done = CliRunner().invoke(main, [*evaluate, "--trust-pickle"])
    assert done.exit_code == 0 and f"{spec}: clean" in done.output, done.output


@pytest.mark.parametrize("spec,match", [("timm:no_such_net", "unknown timm model"),
                                        ("keras:resnet", "accepted forms"),
                                        ("robustbench:cifar10/Linf", "robustbench spec must be"),
                                        ("robustbench:mnist/Linf/x", "unknown robustbench dataset"),
                                        ("robustbench:cifar10/Linf/NoSuchModel", "unknown robustbench model"),
                                        ("timm:resnet18@", "names no checkpoint"),
                                        ("sdo-adv:nope", "unknown embedded classifier"),
                                        ("missing_file.py", "not found")])
def test_bad_classifier_specs(spec, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_classifier(spec)


@pytest.mark.parametrize("dataset,name,shape", [("cifar10", "Wong2020Fast", (3, 32, 32)),
                                                ("imagenet", "Salman2020Do_R18", (3, 224, 224))])
def test_robustbench_checkpoint_where_load_model_looks(tmp_path, dataset, name, shape):
    from sdo_adv._compat import import_robustbench_utils

    import_robustbench_utils()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_classifier(f"robustbench:{dataset}/Linf/{name}", model_dir=tmp_path)
    net = model_dicts[BenchmarkDataset(dataset)][ThreatModel.Linf][name]["model"]()
    folder = tmp_path / dataset / "Linf"
    folder.mkdir(parents=True)
    state = net.model.state_dict() if dataset == "imagenet" else net.state_dict()
    torch.save({"state_dict": state}, folder / f"{name}.pt")
    clf = load_classifier(f"robustbench:{dataset}/Linf/{name}", model_dir=tmp_path)
    assert clf.input_size == shape and float(clf.std.max()) == 1.0 and float(clf.mean.abs().max()) == 0.0
    out = clf(torch.rand(1, 3, 40, 40))
    assert out.shape == (1, 1000 if dataset == "imagenet" else 10)


def test_robustbench_ensembles_and_torchvision_models_need_no_single_checkpoint(tmp_path):
    """An ensemble's members are <name>.pt_m<i>.pt; ImageNet Standard_R50 reads none under model_dir."""
    from sdo_adv._compat import import_robustbench_utils

    import_robustbench_utils()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    from sdo_adv.loading import _robustbench_files

    zoo = model_dicts[BenchmarkDataset("cifar10")][ThreatModel.Linf]
    members = _robustbench_files(zoo["Chen2020Adversarial"], "cifar10", "Linf", "Chen2020Adversarial", tmp_path)
    assert [p.name for p in members] == [f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3)]
    with pytest.raises(FileNotFoundError, match="Chen2020Adversarial.pt_m0.pt"):
        load_classifier("robustbench:cifar10/Linf/Chen2020Adversarial", model_dir=tmp_path)
    imagenet = model_dicts[BenchmarkDataset("imagenet")][ThreatModel.Linf]
    assert _robustbench_files(imagenet["Standard_R50"], "imagenet", "Linf", "Standard_R50", tmp_path) == []


def test_python_file_factory_imports_modules_beside_it(tmp_path):
    (tmp_path / "helper_layers.py").write_text("import torch\nnet = torch.nn.Sequential(torch.nn.Flatten(), "
                                               "torch.nn.Linear(12, 3))\n")
    (tmp_path / "sibling.py").write_text("from helper_layers import net\ndef create_model():\n    return net\n")
    clf = load_classifier(str(tmp_path / "sibling.py"), input_size=(3, 2, 2))
    assert clf(torch.rand(1, 3, 2, 2)).shape == (1, 3) and str(tmp_path) not in sys.path


def test_python_file_factory(tmp_path):
    (tmp_path / "net.py").write_text("import torch\n"
                                     "def create_model():\n    return torch.nn.Sequential(torch.nn.Flatten(),"
                                     " torch.nn.Linear(12, 3))\n"
                                     "def other():\n    return 5\n")
    clf = load_classifier(str(tmp_path / "net.py"), input_size=(3, 2, 2))
    assert isinstance(clf, ImageClassifier) and clf(torch.rand(1, 3, 9, 9)).shape == (1, 3)
    with pytest.raises(TypeError, match="not an nn.Module"):
        load_classifier(f"{tmp_path / 'net.py'}:other")
    with pytest.raises(ValueError, match="no callable"):
        load_classifier(f"{tmp_path / 'net.py'}:absent")


def test_image_classifier_converts_and_normalizes():
    net = TinyClassifier(channels=3)
    clf = load_classifier(net, input_size=(3, 8, 8), mean=(0.5,), std=(0.5,))
    gray = torch.rand(2, 1, 16, 16)
    expected = net((torch.nn.functional.interpolate(gray.expand(-1, 3, -1, -1), size=(8, 8), mode="bilinear",
                                                    antialias=True) - 0.5) / 0.5)
    assert torch.allclose(clf(gray), expected, atol=1e-6)


def test_python_file_factory_is_checked_before_the_file_runs(tmp_path):
    from sdo_adv.loading import check_classifier_spec

    ran = tmp_path / "ran"
    (tmp_path / "net.py").write_text(f"open({str(ran)!r}, 'w').close()\n"
                                     "import torch as create_alias\n"
                                     "try:\n    from torch.nn import Linear as make\nexcept ImportError:\n    pass\n"
                                     "if True:\n    def create_model():\n        return create_alias.nn.Identity()\n"
                                     "built: object = None\n")
    for factory in ("create_model", "make", "create_alias", "built"):
        check_classifier_spec(f"{tmp_path / 'net.py'}:{factory}")
    (tmp_path / "forms.py").write_bytes("\ufeff# coding: utf-8\nfor loop in range(1): pass\n"
                                        "with open(__file__) as handle: pass\nif (walrus := 1): pass\n"
                                        "try:\n    pass\nexcept Exception as caught:\n    pass\n"
                                        "match 1:\n    case 1:\n        def in_case(): pass\n"
                                        "    case {'k': 1, **rest}: pass\n"
                                        "first, *others = [1, 2]\nimport os.path\n".encode())
    for factory in ("loop", "handle", "walrus", "caught", "in_case", "rest", "others", "os"):
        check_classifier_spec(f"{tmp_path / 'forms.py'}:{factory}")
    with pytest.raises(ValueError, match="no callable 'path'"):
        check_classifier_spec(f"{tmp_path / 'forms.py'}:path")
    for dynamic in ("globals()['made'] = 1\n", "def f():\n    global made\n", "setattr(object, 'x', 1)\n"):
        (tmp_path / "dynamic.py").write_text(dynamic)  # names only running it can tell
        check_classifier_spec(f"{tmp_path / 'dynamic.py'}:made")
    with pytest.raises(ValueError, match="no callable 'absent'"):
        check_classifier_spec(f"{tmp_path / 'net.py'}:absent")
    (tmp_path / "bad.py").write_text(f"open({str(ran)!r}, 'w').close()\ndef create_model(:\n")
    with pytest.raises(ValueError, match="not valid Python"):
        load_classifier(str(tmp_path / "bad.py"))
    assert not ran.exists()
    (tmp_path / "star.py").write_text("from torch.nn import *\n")  # names unknown until it runs
    check_classifier_spec(f"{tmp_path / 'star.py'}:Identity")
    assert isinstance(load_classifier(f"{tmp_path / 'star.py'}:Identity", input_size=(1, 2, 2)).model, torch.nn.Module)
