"""The shipped models and digits: checksums, loading through every path, accuracy, the demo."""
import hashlib
import json

import numpy as np
import pytest
import torch

from sdo_adv import embedded_models, load_classifier, load_generator
from sdo_adv.data import DIGITS_FILE, load_digits
from sdo_adv.loading import MODELS_DIR

CLASSIFIER_BARS = {"digits-resnet18": 0.98, "digits-test_efficientnet": 0.98, "digits-resnet18-pgd": 0.95}


def test_checksums_of_shipped_weights():
    listed = {}
    for line in (MODELS_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    shipped = {str(p.relative_to(MODELS_DIR)) for p in MODELS_DIR.rglob("*.safetensors")}
    shipped.add(str(DIGITS_FILE.relative_to(MODELS_DIR.parent)).replace("data/", "../data/"))
    assert shipped == set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((MODELS_DIR / name).read_bytes()).hexdigest() == digest, name


def test_shipped_size_budget():
    total = sum(p.stat().st_size for p in MODELS_DIR.rglob("*") if p.is_file())
    assert total <= 25 * 2**20


def test_every_model_is_listed():
    kinds = {name: e["kind"] for name, e in embedded_models().items()}
    assert kinds.get("digits") == "generator"
    assert {k for k, v in kinds.items() if v == "classifier"} == set(CLASSIFIER_BARS) | {
        "digits-mlp", "digits-lenet", "digits-cnn-aug", "digits-judge", "digits-guard"}  # bars of these: test_victims.py


def test_generator_loads_with_plain_diffusers_and_by_spec():
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(MODELS_DIR / "digits")
    assert pipe.unet.config.num_class_embeds == 11 and pipe.unet.config.sample_size == 32
    gen = load_generator("sdo-adv:digits")
    assert gen.num_classes == 10 and gen.null_class == 10 and gen.image_size == 32 and gen.image_channels == 1
    info = json.loads((MODELS_DIR / "digits" / "sdo_adv.json").read_text())
    assert gen.num_inference_steps == info["num_inference_steps"] and gen.guidance_scale == info["guidance_scale"]


@pytest.mark.parametrize("name", sorted(CLASSIFIER_BARS))
def test_classifier_loads_with_plain_timm_and_meets_its_bar(name):
    import timm
    from safetensors.torch import load_file

    cfg = json.loads((MODELS_DIR / name / "config.json").read_text())
    net = timm.create_model(cfg["architecture"], **cfg["model_args"])
    net.load_state_dict(load_file(str(MODELS_DIR / name / "model.safetensors")))
    clf = load_classifier(f"sdo-adv:{name}")
    images, labels = load_digits()
    x = (images - cfg["pretrained_cfg"]["mean"][0]) / cfg["pretrained_cfg"]["std"][0]
    with torch.no_grad():
        plain, wrapped = net.eval()(x), clf(images)
    assert torch.allclose(plain, wrapped, atol=1e-5)
    accuracy = (wrapped.argmax(1) == labels).float().mean().item()
    assert accuracy >= CLASSIFIER_BARS[name], f"{name}: {accuracy:.3f} on the shipped digits"


def test_shipped_digits():
    with np.load(DIGITS_FILE) as data:
        assert data["images"].dtype == np.uint8 and data["images"].shape == (200, 32, 32)
        assert sorted(set(data["labels"].tolist())) == list(range(10))
    with pytest.raises(ValueError, match="n must be"):
        load_digits(201)


def test_quick_demo_measures_success(tmp_path):
    from sdo_adv.runs import run_demo

    report = run_demo(tmp_path, n=3, steps=2, progress=False)
    for key in ("n", "clean_accuracy", "success_rate", "judge_agreement", "natural_success_rate", "mean_l2",
                "mean_linf", "mean_ssim", "mean_psnr", "seconds_per_image", "items"):  # summary.json's figures
        assert key in report
    assert (tmp_path / "grid.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["success_rate"] == report["success_rate"]
    assert saved["lr"] == 0.05 and saved["depth"] == [0.2, 0.25, 0.5]  # the settings it ran with
    assert saved["bystanders"] == [f"sdo-adv:digits-{n}" for n in ("lenet", "cnn-aug", "mlp")]
    assert (saved["fidelity"], saved["fidelity_norm"], saved["fidelity_halflife"]) == (40.0, "l1", 10.0)
    with np.load(tmp_path / "adversarial.npz") as data:
        adv = torch.from_numpy(data["images"])
    clf = load_classifier("sdo-adv:digits-resnet18")
    with torch.no_grad():
        pred = clf(adv).argmax(1).tolist()
    assert pred == [item["adv_pred"] for item in report["items"]]
    labels = [item["label"] for item in report["items"]]
    correct = [i for i, item in enumerate(report["items"]) if item["clean_pred"] == item["label"]]
    fooled = [i for i in correct if pred[i] != labels[i]]
    assert report["success_rate"] == len(fooled) / max(1, len(correct))
    # the judges' verdicts, re-measured on the saved images
    judges = {spec: load_classifier(spec) for spec in report["judges"]}
    with torch.no_grad():
        verdicts = {spec: judge(adv).argmax(1).tolist() for spec, judge in judges.items()}
    kept = [all(verdicts[s][i] == labels[i] for s in judges) for i in fooled]
    assert report["judge_agreement"] == (sum(kept) / len(kept) if kept else None)
    assert [item["natural"] for item in report["items"]] == [i in fooled and kept[fooled.index(i)]
                                                             for i in range(len(labels))]


def test_demo_command(tmp_path):
    from click.testing import CliRunner

    from sdo_adv.cli.main import main

    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--n", "2", "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert "success" in result.output and (tmp_path / "report.json").exists()
    listing = CliRunner().invoke(main, ["models"])
    assert "sdo-adv:digits-resnet18" in listing.output and "sdo-adv:digits " in listing.output
    assert "bystanders sdo-adv:digits-lenet, sdo-adv:digits-resnet18, sdo-adv:digits-cnn-aug, sdo-adv:digits-mlp" \
        in listing.output


def test_attack_and_evaluate_commands_on_the_embedded_models(tmp_path):
    from click.testing import CliRunner

    from sdo_adv.cli.main import main

    images, labels = load_digits(3)
    np.savez(tmp_path / "digits.npz", images=(images[:, 0] * 255).round().numpy().astype(np.uint8),
             labels=labels.numpy())
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["attack", "--classifier", "sdo-adv:digits-resnet18", "--generator",
                                       "sdo-adv:digits", "--input", str(tmp_path / "digits.npz"), "--out",
                                       str(out), "--steps", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == labels.tolist()
    clf = load_classifier("sdo-adv:digits-resnet18")
    from PIL import Image

    saved = torch.stack([torch.from_numpy(np.array(Image.open(out / r["file"]))).float().div(255)[None] for r in rows])
    with torch.no_grad():
        assert clf(saved).argmax(1).tolist() == [r["pred_after"] for r in rows]
    result = CliRunner().invoke(main, ["evaluate", "--adv", str(out), "--models",
                                       "sdo-adv:digits-test_efficientnet,sdo-adv:digits-resnet18-pgd",
                                       "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["models"]
    assert [r["name"] for r in records] == ["sdo-adv:digits-test_efficientnet", "sdo-adv:digits-resnet18-pgd"]
    assert all(r["skipped"] is None and r["n_eval"] == 3 for r in records)
