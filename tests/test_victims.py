"""The extra embedded digit victims, the judge and the guard: loading, accuracy, the guard's
robustness, the torch RBF-SVM, checksums."""
import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sdo_adv import architectures, load_classifier
from sdo_adv.data import load_digits
from sdo_adv.loading import MODELS_DIR

# Accuracy bars on the 200 shipped held-out digits, a few points under the recorded
# accuracy on all 1000 held-out digits (config.json "metrics").
BARS = {"digits-mlp": 0.94, "digits-lenet": 0.96, "digits-cnn-aug": 0.96, "digits-judge": 0.93,
        "digits-guard": 0.94}
ARCHITECTURES = {"digits-mlp": "sdo-adv/mlp", "digits-lenet": "sdo-adv/lenet", "digits-cnn-aug": "sdo-adv/cnn",
                 "digits-judge": "sdo-adv/rbf_svm", "digits-guard": "sdo-adv/lenet"}


def config(name: str) -> dict:
    return json.loads((MODELS_DIR / name / "config.json").read_text())


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.mark.parametrize("name", sorted(BARS))
def test_config_records_the_model(name):
    cfg = config(name)
    assert cfg["architecture"] == ARCHITECTURES[name]
    assert architectures.is_model(cfg["architecture"])
    pc = cfg["pretrained_cfg"]
    assert pc["num_classes"] == 10 and len(pc["input_size"]) == 3 and len(pc["mean"]) == len(pc["std"]) == 1
    metrics, training = cfg["metrics"], cfg["training"]
    assert metrics["n_heldout"] == 1000
    assert metrics["heldout_accuracy"] >= BARS[name] + 0.02
    assert training["command"].startswith("OMP_NUM_THREADS=1 python training/")
    assert training["wall_time_s"] > 0 and training["hardware"] == "2-core x86_64, no GPU"
    assert "4000 training digits only" in training["data"]
    size_mib = (MODELS_DIR / name / "model.safetensors").stat().st_size / 2**20
    assert size_mib < (6.5 if name == "digits-judge" else 2), f"{name}: {size_mib:.1f} MiB"


@pytest.mark.parametrize("name", sorted(BARS))
def test_loads_and_meets_its_bar(name, digits):
    images, labels = digits
    clf = load_classifier(f"sdo-adv:{name}")
    assert clf.input_size == tuple(config(name)["pretrained_cfg"]["input_size"])
    with torch.no_grad():
        logits = clf(images)
    assert logits.shape == (200, 10) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy >= BARS[name], f"{name}: {accuracy:.3f} on the shipped digits"
    recorded = config(name)["metrics"].get("shipped_200_accuracy")
    if recorded is not None:
        assert abs(accuracy - recorded) <= 0.01, f"{name}: {accuracy:.3f}, recorded {recorded:.3f}"


def test_guard_is_adversarially_robust(digits):
    """The guard keeps its reading under PGD at eps 0.3 where an ordinary CNN does not (its
    gradients are what steer SDOAttack towards the true class)."""
    import torchattacks

    images, labels = digits[0][:64], digits[1][:64]
    robust = {}
    for name in ("digits-guard", "digits-lenet"):
        model = load_classifier(f"sdo-adv:{name}")
        torch.manual_seed(0)
        adv = torchattacks.PGD(model, eps=0.3, alpha=0.05, steps=10, random_start=True)(images, labels)
        with torch.no_grad():
            robust[name] = (model(adv).argmax(1) == labels).float().mean().item()
    assert robust["digits-guard"] >= 0.75 and robust["digits-lenet"] <= 0.2, robust
    assert config("digits-guard")["metrics"]["pgd40_robust_accuracy"] >= 0.8


def test_lenet_resizes_to_28():
    cfg = config("digits-lenet")
    assert cfg["pretrained_cfg"]["input_size"] == [1, 28, 28] and "not cropped" in cfg["input_note"]
    clf = load_classifier("sdo-adv:digits-lenet")
    seen = []
    hook = clf.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    with torch.no_grad():
        clf(torch.rand(2, 1, 32, 32))
    hook.remove()
    assert seen == [(2, 1, 28, 28)]


def numpy_svm_scores(x: np.ndarray, params: dict, n_support: list, sv_scale: float, border: int) -> np.ndarray:
    """Reference: libsvm's one-vs-one decision, votes and scikit-learn's ovr tie-break, looped,
    on ``(B, 1, H, W)`` images; the stored support vectors get their zero frame back."""
    side = x.shape[-1] - 2 * border
    sv = params["support_vectors"].astype(np.float64).reshape(-1, side, side) * sv_scale
    sv = np.pad(sv, ((0, 0), (border, border), (border, border))).reshape(len(sv), -1)
    coef, rho, gamma = params["dual_coef"], params["intercept"], float(params["gamma"])
    start = np.concatenate([[0], np.cumsum(n_support)])
    k = len(n_support)
    scores = np.zeros((len(x), k))
    for b, row in enumerate(x.reshape(len(x), -1).astype(np.float64)):
        kernel = np.exp(-gamma * ((sv - row) ** 2).sum(1))
        votes, summed, p = np.zeros(k), np.zeros(k), 0
        for i in range(k):
            for j in range(i + 1, k):
                si, sj = slice(start[i], start[i + 1]), slice(start[j], start[j + 1])
                dec = coef[j - 1, si] @ kernel[si] + coef[i, sj] @ kernel[sj] + rho[p]
                votes[i if dec >= 0 else j] += 1
                summed[i] += dec
                summed[j] -= dec
                p += 1
        scores[b] = votes + summed / (3 * (np.abs(summed) + 1))
    return scores


def test_torch_rbf_svm_matches_a_numpy_evaluation(digits):
    from safetensors.numpy import load_file

    images, _ = digits
    cfg = config("digits-judge")
    params = load_file(str(MODELS_DIR / "digits-judge" / "model.safetensors"))
    assert params["support_vectors"].dtype == np.uint8
    assert params["dual_coef"].shape == (9, sum(cfg["model_args"]["n_support"]))
    x = images[:6].double()
    args = cfg["model_args"]
    expected = numpy_svm_scores(x.numpy(), params, args["n_support"], args["sv_scale"], args.get("border", 0))
    judge = load_classifier("sdo-adv:digits-judge")
    with torch.no_grad():
        got = judge(x).numpy()
        got32 = judge(images[:6]).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got32, expected, rtol=0, atol=1e-5)
    assert (got32.argmax(1) == expected.argmax(1)).all()
    votes = np.round(expected)  # 45 pairwise votes, the tie-break stays within (-1/3, 1/3)
    assert (votes.sum(1) == 45).all() and (np.abs(expected - votes) < 1 / 3).all()


def test_rbf_svm_votes_on_a_tiny_problem():
    # Three classes, one support vector each, a huge gamma: the kernel is the indicator of x == sv.
    svm = architectures.create("rbf_svm", n_features=2, n_support=[1, 1, 1])
    svm.load_state_dict({"support_vectors": torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
                         "dual_coef": torch.tensor([[1.0, -1.0, -1.0], [1.0, 1.0, -1.0]], dtype=torch.float64),
                         "intercept": torch.zeros(3, dtype=torch.float64),
                         "gamma": torch.tensor(50.0, dtype=torch.float64)})
    scores = svm(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert scores.argmax(1).tolist() == [0, 1, 2]
    assert scores.max(1).values.round().tolist() == [2, 2, 2]


def test_judge_is_documented_and_needs_no_sklearn():
    cfg = config("digits-judge")
    assert "never attacked" in cfg["summary"] and "never in a loss" in cfg["summary"]
    assert cfg["metrics"]["agreement_with_sklearn"] == 1.0
    code = ("import sys, torch, sdo_adv; j = sdo_adv.load_classifier('sdo-adv:digits-judge'); "
            "j(torch.rand(1, 1, 32, 32)); assert 'sklearn' not in sys.modules, 'sklearn imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry():
    assert {"mlp", "lenet", "cnn", "rbf_svm"} <= set(architectures.list_models())
    with pytest.raises(ValueError, match="unknown sdo-adv architecture"):
        architectures.create("sdo-adv/nope")
    net = architectures.create("sdo-adv/cnn", widths=[8, 16], blocks=[1, 1])
    assert not net.training and net(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    tree = ast.parse(Path(architectures.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {f"{'.' * n.level}{n.module or ''}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"torch", "__future__", "collections.abc", "typing"}, imported


def test_checksums_cover_the_new_weights():
    listed = dict(reversed(line.split(maxsplit=1)) for line in (MODELS_DIR / "SHA256SUMS").read_text().splitlines())
    for name in BARS:
        path = MODELS_DIR / name / "model.safetensors"
        assert listed.get(f"{name}/model.safetensors") == hashlib.sha256(path.read_bytes()).hexdigest(), name


def test_models_command_lists_them():
    from click.testing import CliRunner
    from sdo_adv.cli.main import main

    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for name, arch in ARCHITECTURES.items():
        line = next(line for line in result.output.splitlines() if line.startswith(f"sdo-adv:{name} "))
        assert arch in line and "heldout_accuracy" in line
