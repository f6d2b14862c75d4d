"""Stable-Diffusion-1.5-scale cost on a GPU: one attack iteration per estimator, and Picard.

A ``UNet2DConditionModel`` and VAE with Stable Diffusion 1.5's configuration, random weights
(speed and memory do not depend on the weights, so nothing is downloaded), 64x64 latents
(512x512 images), half precision, prompt embeddings of CLIP's shape (77 x 768).

- ``cost``: for each estimator, median iteration time (sample from pure noise over T steps,
  decode, a loss on the image, backward) and ``torch.cuda.max_memory_allocated``; an
  out-of-memory error is reported as such, with the size it asked for.
- ``picard``: per-iteration wall-clock of sequential SDO against Picard SDO (``--sweeps``,
  warm-started from the previous iteration) for n steps and batch sizes.

    python benchmarks/gpu_scale.py --part cost --steps 50 --out gpu_cost.json
    python benchmarks/gpu_scale.py --part picard --steps 25,50 --batch 1,4 --out gpu_picard.json

``--tiny`` swaps in a small configuration so the script can be checked on a CPU.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import torch

from sdo_adv import DiffusionGenerator
from sdo_adv.picard import PicardSampler

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                 cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
                block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2)
ESTIMATORS = "sdo,skip,truncated:1,checkpoint,full"


def build(tiny: bool, device: str, dtype: torch.dtype) -> tuple[DiffusionGenerator, int, int]:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD15_UNET))
    vae = AutoencoderKL(**(TINY_VAE if tiny else SD15_VAE))
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    gen = DiffusionGenerator.from_diffusers(unet=unet, scheduler=sched, vae=vae).to(device=device, dtype=dtype)
    return gen, unet.config.sample_size, unet.config.cross_attention_dim


def prompt_condition(gen: DiffusionGenerator, batch: int, dim: int, device: str):
    from sdo_adv.generator import Condition

    return Condition("text", torch.randn(batch, 77, dim, device=device, dtype=gen.dtype))


def timed(fn, device: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def oom_size(err: Exception) -> str | None:
    match = re.search(r"Tried to allocate ([\d.]+ [KMGT]i?B)", str(err))
    return match.group(1) if match else None


def cost(gen, size, dim, device, steps: int, batch: int, estimators: list[str], repeats: int) -> list[dict]:
    rows = []
    latent = torch.randn(batch, 4, size, size, device=device)
    cond = prompt_condition(gen, batch, dim, device)
    gen.num_inference_steps = steps
    with torch.no_grad():
        nograd = statistics.median(timed(lambda: gen.sample(latent, cond=cond, estimator="skip"), device, repeats))
    for est in estimators:
        def iteration() -> None:
            z = latent.clone().requires_grad_(True)
            gen.sample(z, cond=cond, estimator=est).float().mean().backward()
        row = {"estimator": est, "T": steps, "batch": batch, "nograd_s": nograd}
        try:
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            times = timed(iteration, device, repeats)
            row |= {"iteration_s": statistics.median(times), "spread_s": [min(times), max(times)],
                    "ratio": statistics.median(times) / nograd,
                    "peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None}
        except torch.OutOfMemoryError as err:
            row |= {"out_of_memory": True, "asked_for": oom_size(err)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def picard(gen, size, dim, device, steps: int, batch: int, sweeps: list[int], repeats: int,
           max_batch: int | None) -> list[dict]:
    gen.num_inference_steps = steps
    latent = torch.randn(batch, 4, size, size, device=device)
    cond = prompt_condition(gen, batch, dim, device)

    def sequential() -> None:
        z = latent.clone().requires_grad_(True)
        gen.sample(z, cond=cond, estimator="sdo").float().mean().backward()

    rows = [{"sampler": "sequential", "n": steps, "batch": batch,
             "iteration_s": statistics.median(timed(sequential, device, repeats))}]
    for k in sweeps:
        sampler = PicardSampler(gen, sweeps=k, max_batch=max_batch)
        with torch.no_grad():
            state = {"trajectory": sampler.sample(latent, cond=cond, estimator="skip")[1]}

        def iteration() -> None:
            z = (latent + 0.01 * torch.randn_like(latent)).requires_grad_(True)
            images, state["trajectory"] = sampler.sample(z, cond=cond, estimator="sdo", trajectory=state["trajectory"])
            images.float().mean().backward()
        try:
            t = statistics.median(timed(iteration, device, repeats))
            rows.append({"sampler": f"picard:{k}", "n": steps, "batch": batch, "max_batch": max_batch, "iteration_s": t,
                         "ratio_to_sequential": t / rows[0]["iteration_s"]})
        except torch.OutOfMemoryError as err:
            rows.append({"sampler": f"picard:{k}", "n": steps, "batch": batch, "out_of_memory": True,
                         "asked_for": oom_size(err)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("cost", "picard"), default="cost")
    p.add_argument("--steps", default="50")
    p.add_argument("--batch", default="1")
    p.add_argument("--estimators", default=ESTIMATORS)
    p.add_argument("--sweeps", default="1,2,4")
    p.add_argument("--max-batch", type=int, default=None,
                   help="most latents per Picard network call (a sliding window over the steps)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="small configuration, to check the script on a CPU")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    dtype = torch.float16 if a.device == "cuda" else torch.float32
    gen, size, dim = build(a.tiny, a.device, dtype)
    rows = []
    for steps in (int(s) for s in a.steps.split(",")):
        for batch in (int(b) for b in a.batch.split(",")):
            if a.part == "cost":
                rows += cost(gen, size, dim, a.device, steps, batch, a.estimators.split(","), a.repeats)
            else:
                rows += picard(gen, size, dim, a.device, steps, batch, [int(k) for k in a.sweeps.split(",")],
                               a.repeats, a.max_batch)
    device_name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    result = {"device": device_name, "dtype": str(dtype), "tiny": a.tiny, "torch": torch.__version__,
              "config": vars(a) | {"out": str(a.out)}, "rows": rows}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
