"""Attack quality per gradient estimator (and sampler) on held-out embedded digits.

For each configuration: success rate after each iteration and against wall-clock seconds,
final fidelity (L2, SSIM) of the successful images, transfer success to the embedded
second-architecture and adversarially trained classifiers, and network calls per iteration
of the sampler (its sequential depth) and the images they evaluate, and all network calls
per iteration (inversion and Picard's exact checks included). Untargeted, against
``sdo-adv:digits-resnet18``, SDOAttack defaults unless overridden.

    python benchmarks/attack_quality.py --configs sdo,skip,full --n 200 --out results.json
    python benchmarks/attack_quality.py --configs sdo,sdo@picard:1,sdo@picard:2,sdo@picard:4

A configuration is ``<estimator>``, ``<estimator>@picard:<sweeps>`` (sweeps hold the network
output fixed) or ``<estimator>@picard-clean:<sweeps>`` (they hold the clean-image prediction).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from sdo_adv import load_classifier, load_generator
from sdo_adv.attacks import AttackStep, SDOAttack
from sdo_adv.data import load_digits
from sdo_adv.metrics import l2, ssim
from sdo_adv.files import write_text
from sdo_adv.runs.report import fmt

TARGET = "sdo-adv:digits-resnet18"
TRANSFER = ("sdo-adv:digits-test_efficientnet", "sdo-adv:digits-resnet18-pgd")


def parse_config(config: str) -> dict:
    estimator, _, sampler = config.partition("@")
    if not sampler:
        return {"estimator": estimator, "sampler": "sequential"}
    kind, _, sweeps = sampler.partition(":")
    if kind not in ("picard", "picard-clean") or not sweeps.isdigit():
        raise SystemExit(f"bad configuration {config!r}: use <estimator>, <estimator>@picard:<sweeps> or "
                         "<estimator>@picard-clean:<sweeps>")
    return {"estimator": estimator, "sampler": "picard", "sweeps": int(sweeps),
            "hold": "clean" if kind == "picard-clean" else "output"}


def run(config: str, n: int, batch: int, steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    images, labels = load_digits(n)
    model = load_classifier(TARGET)
    others = {spec: load_classifier(spec) for spec in TRANSFER}
    gen = load_generator("sdo-adv:digits")
    calls = {"all": 0, "sampler": 0, "sampler_images": 0, "iterations": 0}

    def count_iteration(step: AttackStep) -> None:
        calls["iterations"] += 1
        calls["sampler"] += step.network_calls
        calls["sampler_images"] += step.network_images

    def count_call(module, inputs, output) -> None:
        calls["all"] += 1

    # one depth: success per iteration of one pass (the default adds a deeper pass for failures)
    attack = SDOAttack(model, gen, steps=steps, callback=count_iteration, **{"depth": 0.3, **parse_config(config)})
    gen.unet.register_forward_hook(count_call)
    history, seconds, adv, success = [], [], [], []
    for i in range(0, n, batch):
        out = attack(images[i:i + batch], labels[i:i + batch])
        r = attack.last_result
        k = len(out)
        history.append(torch.tensor(r.history) * k)
        seconds.append(r.seconds)
        adv.append(out)
        success.append(r.success)
    adv, success = torch.cat(adv), torch.cat(success)
    curve = (torch.stack(history).sum(0) / n).tolist()
    # batches run one after another: success at iteration t counts every batch's first t
    # iterations, and the time to reach it adds up the batches' times at t
    times = torch.tensor(seconds).sum(0).tolist()
    with torch.no_grad():
        transfer = {spec: (clf(adv).argmax(1) != labels)[success].float().mean().item() if success.any() else None
                    for spec, clf in others.items()}
    return {
        "config": config, **parse_config(config), "n": n, "batch": batch, "steps": steps,
        "success_after_iteration": curve, "seconds_at_iteration": times,
        "final_success": success.float().mean().item(),
        "mean_l2": l2(adv, images)[success].mean().item() if success.any() else None,
        "mean_ssim": ssim(adv, images)[success].mean().item() if success.any() else None,
        "transfer_success": transfer,
        # per attack iteration: network calls (sequential depth) and images evaluated by the
        # sampler, and all calls including inversion and Picard's exact checks
        "sampler_calls_per_iteration": calls["sampler"] / calls["iterations"],
        "sampler_images_per_iteration": calls["sampler_images"] / calls["iterations"],
        "all_calls_per_iteration": calls["all"] / calls["iterations"],
        "iterations_to_90": next((t for t, s in enumerate(curve) if s >= 0.9), None),
        "seconds_to_90": next((times[t] for t, s in enumerate(curve) if s >= 0.9), None),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="sdo,skip,full")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    settings = {k: v for k, v in vars(a).items() if k not in ("out", "configs")}
    rows = []
    if a.out and a.out.exists() and json.loads(a.out.read_text()).get("settings") == settings:
        rows = [r for r in json.loads(a.out.read_text())["rows"] if r["config"] in a.configs.split(",")]
        print(f"resuming {a.out}: {', '.join(r['config'] for r in rows)} already measured", flush=True)
    for config in a.configs.split(","):
        if any(r["config"] == config for r in rows):
            continue
        t0 = time.perf_counter()
        row = run(config, a.n, a.batch, a.steps, a.seed)
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{config:18s} success {row['final_success']:.3f}  to 90%: {fmt(row['iterations_to_90'], 'd')} it, "
              f"{fmt(row['seconds_to_90'], '.1f')} s  L2 {fmt(row['mean_l2'], '.3f')}  SSIM "
              f"{fmt(row['mean_ssim'], '.3f')}  transfer {row['transfer_success']}  wall {row['wall_s']:.0f} s",
              flush=True)
        if a.out:
            result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                  "threads": a.threads, "torch": torch.__version__},
                      "config": vars(a) | {"out": str(a.out)}, "settings": settings, "rows": rows}
            a.out.parent.mkdir(parents=True, exist_ok=True)
            write_text(a.out, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
