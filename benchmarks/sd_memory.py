"""Stable-Diffusion-1.5-scale memory of one attack iteration on the CPU, per estimator and memory option.

The UNet and VAE have Stable Diffusion 1.5's configuration (runwayml/stable-diffusion-v1-5's
``unet/config.json`` and ``vae/config.json``, written out below) with random weights: memory
and time do not depend on the weights, and nothing is downloaded. No text encoder: the prompt
is a precomputed random ``(1, 77, 768)`` embedding (CLIP ViT-L/14's shape), guidance 1.
512x512 images, batch 1, float32. Victim: timm's ``resnet18`` with random weights at 224x224
(bilinear resize of the generated image, ImageNet normalization).

One figure = one process (``--one``), which builds the models, runs no-grad sampling once and
then one attack iteration: a start latent requiring grad at depth 0.5 of a 2T-step DDIM
schedule (T network calls), sampling with the estimator, decoding, the victim, a loss
(minus cross-entropy to label 0), backward, an Adam step. Reported: the resident-set
high-water (``VmHWM``) after the iteration minus after no-grad sampling, both times, and the
1-minute load average when the figure ended (other jobs share the cores: timings vary with it).
``time:<estimator>:<T>`` times iterations with the default memory option on and off in one
process (on, off, off, on). ``tiled-error`` decodes one random latent with and without tiling and reports the
pixel and latent-gradient differences. The parent runs each figure missing from ``--out`` and
writes the JSON after every figure, so an interrupted run resumes where it stopped.

    OMP_NUM_THREADS=2 python benchmarks/sd_memory.py --threads 2 --out benchmarks/results/sd_memory_cpu.json

``--tiny`` swaps in a small configuration to check the script in seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
                 freq_shift=0, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1, act_fn="silu",
                 norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, act_fn="silu", layers_per_block=2,
                norm_num_groups=32, block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1)
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                 cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4, sample_size=32,
                block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
# estimator, T, memory option; in the order they run
FIGURES = ("sdo:4:checkpoint", "sdo:4:none", "sdo:8:checkpoint", "time:sdo:4", "sdo:4:tiled", "tiled-error",
           "sdo:2:checkpoint", "full:2:checkpoint", "skip:4:checkpoint", "sdo:8:none", "sdo:2:none",
           "checkpoint:2:checkpoint", "full:2:none", "full:4:checkpoint")
GIB = 2 ** 30


def vm_hwm() -> int:
    """The process's resident-set high-water, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def build(tiny: bool, steps: int, memory: str):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from sdo_adv import DiffusionGenerator
    from sdo_adv.generator import Condition

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD15_UNET))
    vae = AutoencoderKL(**(TINY_VAE if tiny else SD15_VAE))
    gen = DiffusionGenerator(unet, DDIMScheduler(**SD15_SCHEDULER), vae, num_inference_steps=steps,
                             guidance_scale=1.0, memory=memory)
    cond = Condition("text", torch.randn(1, 77, unet.config.cross_attention_dim))
    return gen, cond


def victim() -> torch.nn.Module:
    import timm

    torch.manual_seed(1)
    return timm.create_model("resnet18", pretrained=False, num_classes=1000).eval().requires_grad_(False)


def classify(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    x = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return model((x - mean) / std)


def one_iteration(figure: str, tiny: bool) -> dict:
    estimator, steps, memory = figure.rsplit(":", 2)
    steps = int(steps)
    gen, cond = build(tiny, 2 * steps, memory)
    model = victim()
    start = gen.start_index(0.5)
    size = gen.unet.config.sample_size
    latent = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(2))
    resident = vm_hwm()
    t0 = time.perf_counter()
    with torch.no_grad():
        gen.sample(latent, cond=cond, estimator="skip", start=start)
    sampling_s, base = time.perf_counter() - t0, vm_hwm()
    iteration_s = attack_iteration(gen, model, cond, latent, estimator, start)
    extra = vm_hwm() - base
    return {"estimator": estimator, "T": steps, "memory": memory, "extra_peak_gib": round(extra / GIB, 3),
            "iteration_s": round(iteration_s, 1), "no_grad_sampling_s": round(sampling_s, 1),
            "no_grad_peak_gib": round(base / GIB, 3), "after_build_gib": round(resident / GIB, 3),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def attack_iteration(gen, model: torch.nn.Module, cond, latent: torch.Tensor, estimator: str, start: int) -> float:
    """Seconds of one attack iteration from ``latent``."""
    z = latent.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.01)
    t0 = time.perf_counter()
    images = gen.sample(z, cond=cond, estimator=estimator, start=start)
    loss = -F.cross_entropy(classify(model, images), torch.zeros(1, dtype=torch.long))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def paired_timing(figure: str, tiny: bool) -> dict:
    """``time:<estimator>:<T>``: iterations with the memory option on and off in one process,
    in the order on, off, off, on, so that a change of load between them cancels out."""
    _, estimator, steps = figure.split(":")
    gen, cond = build(tiny, 2 * int(steps), "checkpoint")
    model, start = victim(), gen.start_index(0.5)
    size = gen.unet.config.sample_size
    latent = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(2))
    times: dict[str, list[float]] = {"checkpoint": [], "none": []}
    for memory in ("checkpoint", "none", "none", "checkpoint"):
        gen.memory.on = memory == "checkpoint"
        times[memory].append(round(attack_iteration(gen, model, cond, latent, estimator, start), 1))
    return {"figure": figure, "iteration_s": times, "checkpoint_over_none": round(
        sum(times["checkpoint"]) / sum(times["none"]), 3), "load_average_1min": round(os.getloadavg()[0], 2)}


def tiled_error(tiny: bool) -> dict:
    """Pixel and latent-gradient error of tiled decoding against plain decoding (same weights)."""
    out = {}
    for memory in ("checkpoint", "tiled"):
        gen, _ = build(tiny, 2, memory)
        size = gen.unet.config.sample_size
        z = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        images = gen.decode(z)
        w = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
        grad, = torch.autograd.grad((images * w).sum(), z)
        out[memory] = (images.detach(), grad)
        del gen
    (a, ga), (b, gb) = out["checkpoint"], out["tiled"]
    return {"figure": "tiled-error", "pixel_max_abs": round((a - b).abs().max().item(), 4),
            "pixel_mean_abs": round((a - b).abs().mean().item(), 5),
            "grad_relative_l2": round(((ga - gb).norm() / ga.norm()).item(), 4),
            "grad_cosine": round(F.cosine_similarity(ga.flatten(), gb.flatten(), dim=0).item(), 4),
            "note": "random weights; pixels in [0, 1]; gradient of sum(w * image) for a random w"}


def machine(threads: int) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import diffusers
    import timm

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") *
            os.sysconf("SC_PHYS_PAGES") / GIB, 1), "threads": threads, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "timm": timm.__version__, "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sd_memory_cpu.json"))
    parser.add_argument("--figures", default=",".join(FIGURES), help="comma-separated estimator:T:memory, time:estimator:T or tiled-error")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        if args.one == "tiled-error":
            row = tiled_error(args.tiny)
        else:
            row = (paired_timing if args.one.startswith("time:") else one_iteration)(args.one, args.tiny)
        print("RESULT " + json.dumps(row), flush=True)
        return
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.update(machine=machine(args.threads), command="OMP_NUM_THREADS={} python {}".format(
        os.environ.get("OMP_NUM_THREADS", "unset"), " ".join(sys.argv)), setup=__doc__.split("\n\n")[1])
    figures = results.setdefault("figures", {})
    for figure in args.figures.split(","):
        if figure in figures:
            continue
        cmd = [sys.executable, __file__, "--one", figure, "--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(f"{figure}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", flush=True)
            continue
        figures[figure] = json.loads(lines[-1][len("RESULT "):])
        print(figure, figures[figure], flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
