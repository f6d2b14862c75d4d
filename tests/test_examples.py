"""The runnable examples, each as a subprocess in its quick / tiny mode, offline."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.fixture()
def env(tmp_path):
    """Offline, one thread, and an empty Hugging Face cache of the test's own."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf_home"),
            "MPLCONFIGDIR": str(tmp_path / "mpl")}


def run_example(script: str, *args: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def cache_timm_weights(cache: Path, name: str) -> None:
    """Random weights of timm's ``name`` as its default pretrained file in the hub cache ``cache``."""
    import timm
    from safetensors.torch import save_file

    repo_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(timm.create_model(name).state_dict(), str(repo / "snapshots" / commit / "model.safetensors"))


def test_attack_digits_quick(tmp_path, env):
    out = run_example("attack_digits.py", "--quick", cwd=tmp_path, env=env)
    assert "untargeted: success" in out and "targeted (label + 1): success" in out
    assert "digits-resnet18-pgd: fooled by" in out and "nan" not in out


def test_evaluate_panel_quick(tmp_path, env):
    cache_timm_weights(Path(env["HF_HUB_CACHE"]), "resnet10t")
    out = run_example("evaluate_panel.py", "--quick", "--out", "panel", "--timm", "resnet18,resnet10t",
                      cwd=tmp_path, env=env)
    panel = tmp_path / "panel"
    for name in ("evaluation.json", "evaluation.md", "evaluation.png", "attack/manifest.jsonl", "attack/grid.png"):
        assert (panel / name).is_file(), name
    assert len((panel / "attack" / "manifest.jsonl").read_text().splitlines()) == 4

    records = {r["name"].split("@")[0]: r for r in json.loads((panel / "evaluation.json").read_text())["models"]}
    assert list(records) == ["sdo-adv:digits-resnet18", "sdo-adv:digits-test_efficientnet",
                             "sdo-adv:digits-resnet18-pgd", "timm:resnet18", "timm:resnet10t",
                             "robustbench:cifar10/Linf/Wong2020Fast"]
    evaluated = [r for r in records.values() if r["skipped"] is None]
    assert len(evaluated) == 4 and all(r["n_eval"] == 4 and r["clean_acc"] is not None for r in evaluated)
    assert "weights not found" in records["timm:resnet18"]["skipped"]
    assert "pretrained weights for timm:resnet18 are not available" in records["timm:resnet18"]["skipped"]
    assert "Wong2020Fast.pt" in records["robustbench:cifar10/Linf/Wong2020Fast"]["skipped"]
    assert records["timm:resnet10t"]["skipped"] is None and records["timm:resnet10t"]["architecture"] == "ResNet"

    assert "timm:resnet18: skipped (weights not found: pretrained weights for timm:resnet18" in out
    assert "robustbench:cifar10/Linf/Wong2020Fast: skipped (weights not found" in out
    assert "sdo-adv:digits-resnet18: clean" in out and "wrote panel/evaluation.json" in out


def test_stable_diffusion_tiny(tmp_path, env):
    out = run_example("stable_diffusion.py", "--tiny", "--out", "sd", cwd=tmp_path, env=env)
    for name in ("grid.png", "tabby_cat__0.png", "pizza__0.png"):
        assert (tmp_path / "sd" / name).is_file(), name
    assert "tabby cat | clean " in out and "pizza | clean " in out
    assert "of 2 photos; wrote the PNGs and grid.png to sd" in out
