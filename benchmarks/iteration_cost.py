"""Cost of one attack iteration per gradient estimator, against no-grad sampling.

Per estimator and number of steps T: median wall time of one iteration (sample from pure
noise with the estimator, decode, classifier loss, backward) as a ratio to no-grad sampling
measured in the same process; peak memory over no-grad sampling (CPU: the process's
resident-set high-water mark, each estimator in a fresh subprocess; CUDA:
``torch.cuda.max_memory_allocated``); bytes held by the autograd graph (saved tensors); and
network calls (forward with graph, forward without, backward).

The generator is a ~1.1M-parameter class-conditional ``UNet2DModel`` at 32x32 with random
weights (the embedded digit model's architecture) and a small random CNN classifier, or the
embedded generator and standard classifier with ``--embedded``.

    python benchmarks/iteration_cost.py --estimators sdo,full --steps 10,50,200 --batch 4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sdo_adv.files import write_text


def build(embedded: bool, device: str, guidance: float):
    from diffusers import DDPMScheduler, UNet2DModel

    from sdo_adv import DiffusionGenerator, load_classifier, load_generator

    torch.manual_seed(0)
    if embedded:
        gen = load_generator("sdo-adv:digits")
        classifier = load_classifier("sdo-adv:digits-resnet18")
        return gen.to(device), classifier.to(device).eval().requires_grad_(False)
    else:
        unet = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                           layers_per_block=1, norm_num_groups=16, attention_head_dim=32,
                           down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), num_class_embeds=11)
        sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
        gen = DiffusionGenerator.from_diffusers(unet=unet, scheduler=sched, guidance_scale=guidance)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.SiLU(),
                                     torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(256, 10))
    return gen.to(device), classifier.to(device).eval().requires_grad_(False)


class CallCounter:
    """Counts UNet forward calls with and without graph, and backward passes through the UNet."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.graph = self.nograd = self.backward = 0
        unet.register_forward_hook(self._forward)

    def _forward(self, module, inputs, output) -> None:
        if output.sample.requires_grad:
            self.graph += 1
            output.sample.register_hook(self._backward)
        else:
            self.nograd += 1

    def _backward(self, grad):
        self.backward += 1
        return grad


def one_iteration(gen, classifier, latent, cond, labels, estimator: str | None) -> None:
    """One attack iteration; ``estimator=None`` is no-grad sampling plus the classifier forward."""
    if estimator is None:
        with torch.no_grad():
            classifier(gen.sample(latent, cond=cond, estimator="skip"))
        return
    z = latent.clone().requires_grad_(True)
    logits = classifier(gen.sample(z, cond=cond, estimator=estimator))
    torch.nn.functional.cross_entropy(logits, labels).backward()


def graph_bytes(gen, classifier, latent, cond, labels, estimator: str) -> int:
    """Bytes of tensors saved for backward during one iteration's forward pass (deduplicated)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    z = latent.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = classifier(gen.sample(z, cond=cond, estimator=estimator))
    del logits
    return sum(seen.values())


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(args) -> dict:
    """Run in a fresh process: one estimator, one T."""
    torch.set_num_threads(args.threads)
    gen, classifier = build(args.embedded, args.device, args.guidance)
    gen.num_inference_steps = args.T
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(args.batch, 1, gen.image_size, gen.image_size, generator=g).to(args.device)
    labels = torch.arange(args.batch, device=args.device) % 10
    cond = gen.condition(labels)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    one_iteration(gen, classifier, latent, cond, labels, None)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    one_iteration(gen, classifier, latent, cond, labels, None)
    base_peak = peak_bytes(args.device)
    counter = CallCounter(gen.unet)
    one_iteration(gen, classifier, latent, cond, labels, args.estimator)
    calls = {"forward_graph": counter.graph, "forward_nograd": counter.nograd, "backward": counter.backward}
    extra_peak = max(0, peak_bytes(args.device) - base_peak)
    saved = graph_bytes(gen, classifier, latent, cond, labels, args.estimator)

    times = {"nograd": [], "iteration": []}
    for _ in range(args.repeats):
        for key, est in (("nograd", None), ("iteration", args.estimator)):
            sync()
            t0 = time.perf_counter()
            one_iteration(gen, classifier, latent, cond, labels, est)
            sync()
            times[key].append(time.perf_counter() - t0)
    ratios = [it / ng for it, ng in zip(times["iteration"], times["nograd"])]
    return {"estimator": args.estimator, "T": args.T, "batch": args.batch,
            "nograd_s": statistics.median(times["nograd"]), "iteration_s": statistics.median(times["iteration"]),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "extra_peak_bytes": extra_peak, "graph_bytes": saved, "calls": calls, "repeats": args.repeats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--estimators", default="sdo,full")
    p.add_argument("--steps", default="10,50,200", help="comma-separated T values")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--embedded", action="store_true", help="use the embedded digit generator")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--estimator", help=argparse.SUPPRESS)
    p.add_argument("--T", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.estimator:
        print(json.dumps(measure(args)))
        return
    config = {k: v for k, v in vars(args).items() if k not in ("estimator", "T", "out")}
    rows = resumed_rows(args.out, config)
    for T in [int(v) for v in args.steps.split(",")]:
        for est in args.estimators.split(","):
            if any(r["estimator"] == est and r["T"] == T for r in rows):
                continue
            cmd = [sys.executable, __file__, "--estimator", est, "--T", str(T), "--batch", str(args.batch),
                   "--repeats", str(args.repeats), "--threads", str(args.threads), "--device", args.device,
                   "--guidance", str(args.guidance)] + (["--embedded"] if args.embedded else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                reason = (f"killed by signal {-done.returncode} (SIGKILL: most likely the out-of-memory killer)"
                          if done.returncode < 0 else done.stderr.strip().splitlines()[-1])
                rows.append({"estimator": est, "T": T, "batch": args.batch, "failed": reason})
                print(f"T={T:4d} {est:13s} failed: {reason}", flush=True)
                write(args.out, config, rows)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"T={T:4d} {est:13s} iter/nograd {row['ratio_median']:.3f} [{row['ratio_min']:.3f}, "
                  f"{row['ratio_max']:.3f}]  iter {row['iteration_s']:.3f}s  extra peak "
                  f"{row['extra_peak_bytes'] / 2**20:8.1f} MiB  graph {row['graph_bytes'] / 2**20:8.1f} MiB  "
                  f"calls {row['calls']}", flush=True)
            write(args.out, config, rows)
    write(args.out, config, rows)


def resumed_rows(out: Path | None, config: dict) -> list[dict]:
    """Rows already measured by an interrupted run with the same settings (a checkpoint)."""
    if out is None or not out.exists():
        return []
    previous = json.loads(out.read_text())
    if previous.get("config") != json.loads(json.dumps(config, default=str)):
        return []
    rows = [r for r in previous["rows"] if "failed" not in r]
    print(f"resuming {out}: {len(rows)} rows already measured (failed ones are tried again)", flush=True)
    return rows


def write(out: Path | None, config: dict, rows: list[dict]) -> None:
    """Write the results so far atomically, so an interrupted run resumes from them."""
    if out is None:
        return
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "threads": config["threads"], "device": config["device"],
                          "torch": torch.__version__},
              "config": config, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
