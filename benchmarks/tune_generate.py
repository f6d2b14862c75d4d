"""Tuning probe for SDOGenerate on one victim: success, judge agreement on the draws and the
adversarial images, L2, for N samples of seeds 1000 + i (not the report seeds).

    python benchmarks/tune_generate.py sdo-adv:digits-mlp '[0.3,0.5]' 30 '{"guidance_scale":2.0}'

Arguments: victim, depth (JSON), N, JSON of SDOGenerate overrides (``guidance_scale`` 2 unless given).
"""
import sys, time, torch, json
from sdo_adv import load_classifier, load_generator
from sdo_adv.attacks import SDOGenerate
from sdo_adv.judging import judge_predictions
torch.set_num_threads(1)
victim, depth, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
kw = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
gsc = kw.pop("guidance_scale", 2.0)
model = load_classifier(victim).eval(); gen = load_generator("sdo-adv:digits")
judge = load_classifier("sdo-adv:digits-judge").eval()
a = SDOGenerate(model, gen, depth=tuple(depth) if isinstance(depth, list) else depth, guidance_scale=gsc, **kw)
labels = torch.arange(n) % 10
t = time.time(); adv = a.generate(labels, seeds=1000); dt = time.time() - t
r = a.last_result
jd = judge_predictions({"j": judge}, a.last_draws)["j"]; ja = judge_predictions({"j": judge}, adv)["j"]
s = r.success
print(victim, depth, kw, f"clean {float((r.clean_pred==labels).float().mean()):.2f} draw-judge {float((jd==labels).float().mean()):.2f} "
      f"success {float(s.sum()/(r.clean_pred==labels).sum()):.2f} judge-keeps {float((ja[s]==labels[s]).float().mean()):.2f} "
      f"L2 {float(r.l2[s].mean()):.2f} {dt/n:.1f}s/img")
