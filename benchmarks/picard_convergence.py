"""How warm-started Picard sweeps approach the exact trajectory, for both ``hold`` modes.

Embedded generator, held-out digits inverted to depth 0.5 of its schedule (n steps); the
exact trajectory of those latents is the warm start; the start latent then moves by
``--delta`` per entry (random signs), as an attack step does. Prints the relative error of
the final state against the new exact one after 1..n sweeps, and that of not updating;
``--out`` also writes them, with the settings and the machine, as JSON.

    python benchmarks/picard_convergence.py --n 8 --delta 0.1 --out benchmarks/results/picard_convergence_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

import torch

from sdo_adv import load_generator
from sdo_adv.data import load_digits
from sdo_adv.picard import HOLDS, PicardSampler
from sdo_adv.files import write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8, help="held-out digits")
    p.add_argument("--delta", type=float, default=0.1, help="change of the start latent per entry")
    p.add_argument("--depth", type=float, default=0.5, help="inversion depth, a fraction of the schedule")
    p.add_argument("--out", type=Path, default=None, help="also write the measurements as JSON here")
    a = p.parse_args()
    torch.set_num_threads(1)
    gen = load_generator("sdo-adv:digits")
    images, labels = load_digits(a.n)
    cond = gen.condition(labels)
    inverted = gen.invert(images, a.depth, cond=cond)
    exact = PicardSampler(gen)
    old = exact.init_trajectory(inverted.latent, inverted.start, cond)
    signs = torch.randn(inverted.latent.shape, generator=torch.Generator().manual_seed(0)).sign()
    moved = inverted.latent + a.delta * signs
    ref = exact.init_trajectory(moved, inverted.start, cond).states[-1]

    def error(final: torch.Tensor) -> float:
        return ((final - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).mean().item()

    steps = len(old.states) - 1
    result = {"steps": steps, "delta": a.delta, "not_updating": error(old.states[-1])}
    for hold in HOLDS:
        result[hold] = [error(PicardSampler(gen, sweeps=k, hold=hold).refine(moved, old, cond).states[-1])
                        for k in range(1, steps + 1)]
    print(json.dumps(result))
    if a.out is not None:
        record = {"command": shlex.join(["python", *sys.argv]),
                  "settings": {"n": a.n, "delta": a.delta, "depth": a.depth, "threads": torch.get_num_threads()},
                  "machine": {"platform": platform.platform(), "processor": platform.processor(),
                              "cpu_count": os.cpu_count()},
                  "versions": {dist: metadata.version(dist) for dist in ("torch", "diffusers")},
                  "relative_error": result}
        write_text(a.out, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
