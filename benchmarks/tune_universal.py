"""Tuning probe for UniversalSDO on one victim: train on its own seeds, then fool rate, judge
agreement and L2 on 20 samples per class of seeds 500000 + i (not the report seeds).

    python benchmarks/tune_universal.py sdo-adv:digits-mlp '{"variable":"both","bound":0.35}' 30

Arguments: victim, JSON of UniversalSDO overrides (``guard`` as a classifier spec), training
steps[, number of classes].
"""
import json
import sys
import time
from pathlib import Path

import torch

from sdo_adv import load_classifier
from sdo_adv.attacks import UniversalSDO
from sdo_adv.runs.report import fmt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from universal_quality import figures, fresh_samples  # noqa: E402

torch.set_num_threads(1)
victim, kw, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
classes = list(range(int(sys.argv[4]) if len(sys.argv) > 4 else 10))
model, judge = load_classifier(victim).eval(), load_classifier("sdo-adv:digits-judge").eval()
if "guard" in kw:  # a classifier spec
    kw["guard"] = load_classifier(kw["guard"]).eval()
u = UniversalSDO(model, "sdo-adv:digits", classes, **kw)
t = time.time(); losses = u.train(steps); tt = time.time() - t
f = figures(fresh := fresh_samples(model, u, 20, 500000, judge))
pool = torch.tensor(classes).repeat_interleave(4)
pool_seeds = [u.settings["seed"] * 10**6 + int(c) * 10**4 + i for c in classes for i in range(4)]
with torch.no_grad():
    train_fool = (model(u.sample(pool, pool_seeds)[0]).argmax(1) != pool).float().mean()
print(victim, sys.argv[2], steps, f"fool on training seeds {train_fool:.2f}",
      f"train {tt:.0f}s loss {losses[0]:.3f}->{sum(losses[-5:]) / 5:.3f} fool {f['fooling_rate']:.2f} "
      f"judge {fmt(f['judge_agreement'], '.2f')} L2 {fmt(f['mean_l2'], '.2f')} "
      f"sample {fresh['seconds'] / len(fresh['labels']) * 1000:.0f} ms/img", flush=True)
