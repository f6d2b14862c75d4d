"""Images per second of ``sdo-adv attack`` on the embedded models: one process against
``torchrun`` with several, on the same cores (threads per process = cores / processes).

    python benchmarks/throughput.py --n 64 --processes 1,2 --out benchmarks/results/throughput_cpu.json

Wall-clock covers the whole command (start-up, model loading, attack, merge, report); the
figure without start-up is the attack's own seconds per image from the manifest.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="held-out digits to attack")
    p.add_argument("--processes", default="1,2")
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    from sdo_adv.data import load_digits

    images, labels = load_digits(a.n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits.npz"
        np.savez(data, images=(images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
                 labels=labels.numpy())
        for procs in (int(v) for v in a.processes.split(",")):
            out = Path(tmp) / f"out{procs}"
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(procs)] if procs > 1 else [sys.executable]
            cmd = [*launcher, "-m", "sdo_adv.cli.main", "attack", "--classifier", "sdo-adv:digits-resnet18",
                   "--generator", "sdo-adv:digits", "--input", str(data), "--out", str(out), "--steps",
                   str(a.steps), "--batch-size", str(a.batch_size), "--device", "cpu"]
            env = os.environ | {"OMP_NUM_THREADS": str(max(1, a.cores // procs))}
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            wall = time.perf_counter() - t0
            manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
            assert len(manifest) == a.n
            attack_s = sum(r["seconds"] for r in manifest) / procs
            rows.append({"processes": procs, "threads_per_process": env["OMP_NUM_THREADS"], "n": a.n,
                         "wall_s": wall, "images_per_s": a.n / wall, "attack_images_per_s": a.n / attack_s,
                         "success_rate": sum(r["success"] for r in manifest) / a.n})
            print(json.dumps(rows[-1]), flush=True)
    if a.out:
        result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
                  "config": vars(a) | {"out": str(a.out)}, "rows": rows}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
