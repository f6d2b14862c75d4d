"""Tuning sweep on a GPU: SDOAttack settings against several victims, then UniversalSDO with
larger training pools than a CPU affords; rows written as they finish, within a time budget.

    python -c "import sys, torch; sys.path.insert(0, 'training'); from digits_data import load_split, to_unit; \
        d = load_split(); torch.save({'x': to_unit(d['x_held'][350:750]), 'y': torch.from_numpy(d['y_held'][350:750])}, \
        'tune.pt')"                                   # here (needs the train extra): tune digits 350-749
    python benchmarks/gpu_tuning_sweep.py tune.pt OUT_DIR 470 [N] [DEVICE]   # on the GPU machine

Writes OUT_DIR/sweep.json (attack rows as ``benchmarks/natural_quality.py`` measures them:
success over clean-correct digits, the SVM judge's agreement, mean L2, UNet images per digit;
universal rows as ``benchmarks/universal_quality.py``'s ``figures`` gives them) and
OUT_DIR/adv_<victim>.pt (the adversarial digits as uint8, for judges of other families
afterwards). ``SWEEP_B_SECONDS`` (default 200) is the time kept for the universal part. Runs
from a checkout without installing (the repository root is put on ``sdo_adv``'s path).
"""
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # the repository root
sys.path.insert(0, str(ROOT))
import sdo_adv  # noqa: E402
sdo_adv.__path__.append(str(ROOT))  # sdo_adv.attacks -> ROOT/attacks without installing
from sdo_adv import load_classifier, load_generator  # noqa: E402
from sdo_adv.attacks import UniversalSDO  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from natural_quality import run  # noqa: E402
from universal_quality import figures, fresh_samples  # noqa: E402

data_file, out, budget = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
n = int(sys.argv[4]) if len(sys.argv) > 4 else 400
dev = sys.argv[5] if len(sys.argv) > 5 else "cuda"
t_start = time.time()
left = lambda: budget - (time.time() - t_start)  # noqa: E731
data = torch.load(data_file)
out.mkdir(parents=True, exist_ok=True)
x, y = data["x"][:n], data["y"][:n]
judge = load_classifier("sdo-adv:digits-judge").to(dev).eval()
rows, advs = [], {}
info = {"device": torch.cuda.get_device_name() if dev == "cuda" else dev, "torch": torch.__version__, "n": n,
        "digits": "tune held-out 350-%d" % (350 + n - 1)}


def dump():
    (out / "sweep.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    for v in {k.split()[0] for k in advs}:
        torch.save({k: a for k, a in advs.items() if k.split()[0] == v}, out / f"adv_{v}.pt")


A = [  # (victims, kwargs)
    ("mlp,lenet,cnn-aug,pgd", {}),
    ("mlp,lenet,cnn-aug", {"lr": [0.02, 0.05]}),
    ("mlp,lenet,cnn-aug", {"lr": [0.01, 0.05]}),
    ("mlp,lenet,cnn-aug", {"fidelity": 400}),
    ("mlp,lenet,cnn-aug", {"estimator": "full"}),
    ("mlp,lenet,cnn-aug", {"fidelity_norm": "l1", "fidelity": 40}),
    ("mlp,lenet,cnn-aug", {"steps": 100, "lr": [0.01, 0.05]}),
    ("mlp,lenet,cnn-aug", {"num_inference_steps": 50}),
    ("mlp,lenet,cnn-aug", {"early_stop": False}),
    ("mlp,lenet,cnn-aug", {"fidelity_norm": "l1", "fidelity": 40, "lr": [0.02, 0.05]}),
    ("mlp,lenet,cnn-aug", {"depth": [0.15, 0.5]}),
    ("mlp,lenet,cnn-aug", {"depth": [0.3, 0.5], "lr": [0.02, 0.05]}),
    ("mlp,lenet,cnn-aug", {"fidelity": 800, "fidelity_halflife": 5}),
    ("mlp,lenet,cnn-aug", {"guard": "sdo-adv:digits-guard"}),
    ("mlp,lenet,cnn-aug", {"latent_bound": 0.5, "lr": [0.02, 0.05]}),
    ("pgd", {"estimator": "full"}),
    ("pgd", {"lr": [0.03, 0.08], "steps": 100}),
    ("pgd", {"depth": [0.2, 0.35, 0.5]}),
    ("pgd", {"num_inference_steps": 50}),
    ("mlp,lenet,cnn-aug", {"guidance_scale": 2}),
    ("mlp,lenet,cnn-aug", {"kappa": 0.5}),
    ("mlp,lenet,cnn-aug", {"optimize": "both"}),
]


# the defaults the sweep ran under; rows override
FORMER_DEFAULTS = {"fidelity_norm": "l2", "fidelity": 200.0, "estimator": "sdo", "depth": [0.2, 0.5]}


def spec_of(kw: dict) -> str:
    """``kw`` as a natural_quality.py attack spec."""
    return ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(kw.items())) or "default"


for victims, kw in A:
    for v in victims.split(","):
        if left() < float(os.environ.get("SWEEP_B_SECONDS", 200)):
            break
        kw_repr = json.dumps(kw, sort_keys=True)
        try:
            row, adv = run("sdo-adv:digits-" + {"pgd": "resnet18-pgd"}.get(v, v), spec_of(kw), x, y, len(x), dev,
                           base=FORMER_DEFAULTS)
            advs[f"{v} {kw_repr}"] = (adv * 255).round().to(torch.uint8)
        except Exception as e:  # keep going: one bad setting must not lose the rest
            row = {"victim": v, "attack": spec_of(kw), "error": repr(e)[:500]}
        row["t"] = time.time() - t_start
        rows.append(row)
        print(json.dumps(row), flush=True)
        dump()

# ---- part B: universal changes, larger pools and more steps than a CPU affords
B = [
    ("mlp", {"pool": 128, "batch_size": 16}, 100),
    ("cnn-aug", {"pool": 128, "batch_size": 16}, 100),
    ("lenet", {"pool": 128, "batch_size": 16}, 100),
    ("mlp", {"pool": 128, "batch_size": 16, "bound": 0.5}, 100),
    ("lenet", {"pool": 128, "batch_size": 16, "bound": 0.5}, 100),
    ("cnn-aug", {"pool": 128, "batch_size": 16, "bound": 0.5}, 100),
    ("mlp", {"pool": 16, "batch_size": 4}, 30),
]
for vname, kw, steps in B:
    if left() < 45:
        break
    victim = load_classifier("sdo-adv:digits-" + vname).to(dev).eval()
    gen = load_generator("sdo-adv:digits").to(dev)
    try:
        torch.manual_seed(0)
        t = time.time()
        u = UniversalSDO(victim, gen, range(10), **kw)
        u.train(steps)
        tt = time.time() - t
        f = figures(fresh_samples(victim, u, 50, 500000, judge))  # seeds 500000+, apart from training
        row = {"part": "universal", "victim": vname, "kwargs": json.dumps(kw), "steps": steps, "train_s": tt, **f}
    except Exception as e:
        row = {"part": "universal", "victim": vname, "kwargs": json.dumps(kw), "error": repr(e)[:500]}
    row["t"] = time.time() - t_start
    rows.append(row)
    print(json.dumps(row), flush=True)
    dump()
print("done", time.time() - t_start)
