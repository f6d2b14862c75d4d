"""A real `sdo-adv attack` process killed with SIGINT, SIGTERM or SIGKILL at several points,
then started again, finishes with every item exactly once."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sdo_adv.data import load_digits

N = 8


def command(data, out):
    return [sys.executable, "-m", "sdo_adv.cli.main", "attack", "--classifier", "sdo-adv:digits-resnet18",
            "--generator", "sdo-adv:digits", "--input", str(data), "--out", str(out), "--steps", "2",
            "--batch-size", "1", "--device", "cpu"]


def finished(out):
    path = out / "manifest.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize("sig, after", [(signal.SIGKILL, 0), (signal.SIGKILL, 3), (signal.SIGTERM, 2),
                                        (signal.SIGINT, 5)])
def test_killed_run_resumes_with_every_item_once(tmp_path, sig, after):
    images, labels = load_digits(N)
    data = tmp_path / "digits.npz"
    np.savez(data, images=(images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
             labels=labels.numpy())
    out = tmp_path / "out"
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # as from a terminal: SIGINT handled even when this test runs where it is ignored (a
    # background job of a non-interactive shell), which the child would otherwise inherit
    proc = subprocess.Popen(command(data, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while finished(out) < after and proc.poll() is None:
            if time.monotonic() > deadline:  # a timeout is a failure, never a pass
                pytest.fail(f"only {finished(out)} of the {after} items to wait for finished in 300 s")
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the signal"
        assert finished(out) >= after
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not stop within 60 s of {sig.name}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, err[-2000:]
    if sig != signal.SIGKILL:
        assert "interrupted" in err and "Traceback" not in err
    killed_at = finished(out)
    assert after <= killed_at < N  # interrupted past the items waited for, before the end

    try:
        done = subprocess.run(command(data, out), env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the resumed run did not finish in 300 s")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (out / "manifest.jsonl").read_text().splitlines()
    sources = [json.loads(line)["source"] for line in lines]
    assert sorted(sources) == sorted(f"digits.npz#{i}" for i in range(N))  # every item, exactly once
    assert all((out / json.loads(line)["file"]).is_file() for line in lines)
    assert not list(out.glob(".*.tmp"))  # a killed run's temporary files are cleared
    # the second run resumes from what the first one finished (a fresh start when nothing was)
    if killed_at:
        assert f"resuming: {killed_at} of {N}" in done.stderr, done.stderr[-3000:]
    else:
        assert "resuming" not in done.stderr, done.stderr[-3000:]
