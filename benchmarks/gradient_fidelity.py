"""Gradient fidelity of each estimator against the exact gradient, on the embedded generator.

In float64: held-out digits are DDIM-inverted (true class) to several depths; the objective
is the standard classifier's summed CW margin on the regenerated images. The exact gradient
is ``full`` backpropagation (checked against finite differences in the test suite). For each
estimator: per-sample cosine similarity and relative norm error ``|g - g*| / |g*|`` for the
start latent and for the class embedding, averaged over the digits.

    python benchmarks/gradient_fidelity.py --n 8 --depths 0.25,0.5,1.0 --out fidelity.json
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from sdo_adv import load_classifier, load_generator
from sdo_adv.data import load_digits
from sdo_adv.losses import attack_loss

ESTIMATORS = ("full", "checkpoint", "truncated:1", "truncated:5", "skip", "sdo:first", "sdo:last", "sdo:random")


def gradients(gen, clf, z, cond, labels, estimator, start):
    z = z.clone().requires_grad_(True)
    e = cond.embeds.clone().requires_grad_(True)
    images = gen.sample(z, cond=cond.replace(e), estimator=estimator, start=start)
    loss = attack_loss(clf(images), labels, "cw").sum()
    gz, ge = torch.autograd.grad(loss, (z, e), allow_unused=True)
    return gz, (torch.zeros_like(e) if ge is None else ge)


def compare(g, ref):
    g, ref = g.flatten(1), ref.flatten(1)
    cos = F.cosine_similarity(g, ref, dim=1, eps=1e-30)
    rel = (g - ref).norm(dim=1) / ref.norm(dim=1)
    valid = g.norm(dim=1) > 0
    return {"cosine": cos[valid].mean().item() if valid.any() else None, "relative_error": rel.mean().item()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--depths", default="0.25,0.5,0.75,1.0")
    p.add_argument("--estimators", default=",".join(ESTIMATORS))
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gen = load_generator("sdo-adv:digits").double()
    clf = load_classifier("sdo-adv:digits-resnet18").double()
    images, labels = load_digits(a.n)
    images = images.double()
    cond = gen.condition(labels)
    rows = []
    for depth in (float(d) for d in a.depths.split(",")):
        inv = gen.invert(images, depth, cond=cond)
        ref_z, ref_e = gradients(gen, clf, inv.latent, cond, labels, "full", inv.start)
        for est in a.estimators.split(","):
            gz, ge = gradients(gen, clf, inv.latent, cond, labels, est, inv.start)
            row = {"depth": depth, "steps": gen.num_inference_steps - inv.start, "estimator": est,
                   "latent": compare(gz, ref_z), "class_embedding": compare(ge, ref_e)}
            rows.append(row)
            print(f"depth {depth:.2f} ({row['steps']:3d} steps) {est:12s} latent cos "
                  f"{row['latent']['cosine']:.4f} rel.err {row['latent']['relative_error']:.4f} | embedding cos "
                  f"{row['class_embedding']['cosine'] if row['class_embedding']['cosine'] is None else format(row['class_embedding']['cosine'], '.4f')} "
                  f"rel.err {row['class_embedding']['relative_error']:.4f}", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"config": vars(a) | {"out": str(a.out)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
