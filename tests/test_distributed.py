"""Sharded runs: 2 CPU processes (gloo) under torchrun and accelerate launch against one
process, the merge after a crash, and out-of-memory batch halving."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdo_adv.data import load_digits
from sdo_adv.runs import AttackRun, AttackRunConfig

# six iterations with a light fidelity weight, so that some digits are fooled and the comparison has successes
ATTACK = ["attack", "--classifier", "sdo-adv:digits-resnet18", "--generator", "sdo-adv:digits",
          "--steps", "6", "--batch-size", "2", "--seed", "3", "--device", "cpu", "--depth", "0.5", "--lr", "0.1",
          "--fidelity", "50", "--fidelity-norm", "l2", "--fidelity-halflife", "none"]
N = 6


def digits_npz(path, n=N):
    images, labels = load_digits(n)
    pixels = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.savez(path, images=pixels, labels=labels.numpy())
    return path


def run(cmd, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def pixels(out, name):
    return np.asarray(Image.open(out / name), dtype=np.int16)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    data = digits_npz(tmp / "digits.npz")
    run([sys.executable, "-m", "sdo_adv.cli.main", *ATTACK, "--input", str(data), "--out", "out"], tmp)
    return data, tmp / "out"


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "sdo_adv.cli.main"],
    # accelerate's multi-process launcher (its --cpu flag launches a single process); the ranks
    # run on CPU with gloo through PartialState(cpu=True)
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "-m", "sdo_adv.cli.main"],
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_processes_match_one(single, tmp_path, launcher):
    data, reference = single
    done = run([*LAUNCHERS[launcher], *ATTACK, "--input", str(data), "--out", "out"], tmp_path)
    assert "2 processes" in done.stderr
    out = tmp_path / "out"
    rows, ref = manifest(out), manifest(reference)
    assert [r["source"] for r in rows] == [f"digits.npz#{i}" for i in range(N)]  # each once, in order
    assert not list(out.glob("manifest.rank*.jsonl"))
    assert any(r["success"] for r in ref)
    for a, b in zip(rows, ref):
        assert (a["label"], a["success"], a["pred_after"], a["target"]) == (b["label"], b["success"],
                                                                          b["pred_after"], b["target"])
        assert np.abs(pixels(out, a["file"]) - pixels(reference, b["file"])).max() <= 2
    assert (out / "report.md").is_file() and (out / "grid.png").is_file()


def test_merge_after_a_crash_restores_every_item_once(single, tmp_path):
    from click.testing import CliRunner

    from sdo_adv.cli.main import main

    _, reference = single
    out = shutil.copytree(reference, tmp_path / "out")
    rows = manifest(out)
    # as a crash of 2 ranks leaves it: parts only, one row in both (a merge cut short)
    (out / "manifest.jsonl").write_text(json.dumps(rows[0]) + "\n")
    for rank in (0, 1):
        (out / f"manifest.rank{rank}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[rank::2]))
    (out / "report.md").unlink()
    result = CliRunner().invoke(main, ["merge", str(out)])
    assert result.exit_code == 0, result.output
    assert manifest(out) == rows
    assert not list(out.glob("manifest.rank*.jsonl"))
    assert f"of {N} images" in result.output and (out / "report.md").is_file()


def test_merge_refuses_a_folder_without_a_run(tmp_path):
    from click.testing import CliRunner

    from sdo_adv.cli.main import main

    result = CliRunner().invoke(main, ["merge", str(tmp_path)])
    assert result.exit_code == 2 and "run.json" in result.output


def test_out_of_memory_halves_the_batch_and_says_so(tmp_path):
    data = digits_npz(tmp_path / "digits.npz", n=5)
    config = AttackRunConfig("sdo-adv:digits-resnet18", "sdo-adv:digits", str(data), str(tmp_path / "out"),
                             steps=1, batch_size=4, device="cpu")
    notices = []
    run_ = AttackRun(config, notice=notices.append)
    forward, sizes = run_.attack.forward, []

    def small_memory(images, labels):
        sizes.append(len(images))
        if len(images) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(images, labels)

    run_.attack.forward = small_memory
    summary = run_.execute(progress=False)
    assert summary["n"] == 5
    assert sizes == [4, 2, 1, 1, 1, 1, 1]
    assert any("batch of 4: retrying with batches of 2" in m for m in notices)
    assert any("batch of 2: retrying with batches of 1" in m for m in notices)
    assert [r["source"] for r in manifest(tmp_path / "out")] == [f"digits.npz#{i}" for i in range(5)]


def test_merge_refuses_while_an_attack_writes(single, tmp_path):
    from click.testing import CliRunner

    from sdo_adv.cli.main import main
    from sdo_adv.runs.manifest import run_lock

    out = shutil.copytree(single[1], tmp_path / "out")
    with run_lock(out):
        result = CliRunner().invoke(main, ["merge", str(out)])
    assert result.exit_code == 2 and "still writing" in result.output
    assert CliRunner().invoke(main, ["merge", str(out)]).exit_code == 0
