"""Measure the embedded digit generator on held-out data and store the figures beside it.

- class consistency: DDIM samples (``--sample-steps``, guidance ``--guidance``) from pure
  noise, 100 per class, read by the standard embedded classifier;
- inversion: held-out digits DDIM-inverted with their true class to ``--depth`` of the
  ``--steps`` schedule (the stored attack defaults, guidance included) and regenerated: share
  of the classifier's labels kept, mean PSNR;
- Frechet distance in the standard classifier's penultimate features between the samples and
  the 1000 held-out digits, beside the distance between two halves of the held-out set.

    python training/evaluate_generator.py --generator sdo_adv/models/digits --write
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from digits_data import load_split, to_unit
from sdo_adv import load_classifier, load_generator
from sdo_adv.metrics import psnr


def features(classifier, images: torch.Tensor) -> np.ndarray:
    """Penultimate (pre-logits) features of the wrapped timm model."""
    net = classifier.model
    x = (images - classifier.mean) / classifier.std
    with torch.no_grad():
        return net.forward_head(net.forward_features(x), pre_logits=True).double().numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean.real))


def predict(classifier, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([classifier(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--generator", default="sdo_adv/models/digits")
    p.add_argument("--classifier", default="sdo-adv:digits-resnet18")
    p.add_argument("--guidance", type=float, default=2.0, help="guidance for the samples from pure noise")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--steps", type=int, default=None, help="inversion schedule (default: stored)")
    p.add_argument("--depth", type=float, default=0.5)
    p.add_argument("--n-heldout", type=int, default=1000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="store the figures in the folder's sdo_adv.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    clf = load_classifier(a.classifier)
    gen = load_generator(a.generator, num_inference_steps=a.sample_steps, guidance_scale=a.guidance)
    data = load_split()
    held = to_unit(data["x_held"][:a.n_heldout])
    held_y = torch.from_numpy(data["y_held"][:a.n_heldout])

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(a.per_class)
    samples = []
    with torch.no_grad():
        for i in range(0, len(labels), a.batch):
            y = labels[i:i + a.batch]
            noise = torch.randn(len(y), 1, gen.image_size, gen.image_size, generator=g)
            samples.append(gen.sample(noise, cond=gen.condition(y), estimator="skip"))
    samples = torch.cat(samples)
    consistency = (predict(clf, samples) == labels).float().mean().item()
    print(f"class consistency {consistency:.3f} ({time.time() - t0:.0f}s)", flush=True)

    inv_gen = load_generator(a.generator, **({"num_inference_steps": a.steps} if a.steps else {}))
    recon = []
    for i in range(0, len(held), a.batch):
        x, y = held[i:i + a.batch], held_y[i:i + a.batch]
        recon.append(inv_gen.invert(x, a.depth, cond=inv_gen.condition(y)).reconstruction)
    recon = torch.cat(recon)
    pred_held, pred_recon = predict(clf, held), predict(clf, recon)
    kept = (pred_recon == pred_held).float().mean().item()
    mean_psnr = psnr(recon, held).mean().item()
    print(f"inversion keeps {kept:.3f} of labels, PSNR {mean_psnr:.2f} dB ({time.time() - t0:.0f}s)", flush=True)

    f_held, f_samples = features(clf, held), features(clf, samples)
    fd = frechet(f_samples, f_held)
    half = len(f_held) // 2
    fd_halves = frechet(f_held[:half], f_held[half:])
    print(f"Frechet distance samples vs held-out {fd:.3f}; held-out halves {fd_halves:.3f}", flush=True)
    figures = {
        "class_consistency": consistency, "class_consistency_setup":
            f"DDIM-{a.sample_steps}, guidance {gen.guidance_scale}, {a.per_class} samples per class, "
            f"read by {a.classifier}",
        "inversion_label_kept": kept, "inversion_psnr_db": mean_psnr, "inversion_setup":
            f"{len(held)} held-out digits, true class, depth {a.depth} of DDIM-{inv_gen.num_inference_steps}, "
            f"guidance {inv_gen.guidance_scale}",
        "frechet_samples_vs_heldout": fd, "frechet_heldout_halves": fd_halves,
        "frechet_setup": f"penultimate features of {a.classifier}; {len(samples)} samples vs {len(held)} "
                         f"held-out; halves {half} vs {len(f_held) - half}",
        "evaluation_wall_time_s": round(time.time() - t0, 1),
    }
    print(json.dumps(figures, indent=2))
    if a.write:
        info = Path(a.generator) / "sdo_adv.json"
        stored = json.loads(info.read_text())
        stored["metrics"] = figures
        info.write_text(json.dumps(stored, indent=2))


if __name__ == "__main__":
    main()
