"""Tuning probe: does the generator's own diffusion classifier (Li et al. 2023: the class whose
conditional noise prediction has the smallest error) tell the adversarial digits the judge
rejects from those it keeps? Attacks held-out tune digits 264-363 with SDOAttack (depths
(0.3, 0.5), the defaults when it ran), then scores clean and adversarial digits with 6 timesteps (100-600), one fixed noise each.

    python benchmarks/tune_diffusion_classifier.py sdo-adv:digits-mlp
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from natural_quality import digits  # noqa: E402
from sdo_adv import load_classifier, load_generator  # noqa: E402
from sdo_adv.attacks import SDOAttack  # noqa: E402

torch.set_num_threads(1)
victim = sys.argv[1]
x, y = digits("tune", 164)
x, y = x[64:], y[64:]
model, judge = load_classifier(victim), load_classifier("sdo-adv:digits-judge")
gen = load_generator("sdo-adv:digits")
attack = SDOAttack(model, gen, depth=(0.3, 0.5), estimator="sdo")
torch.manual_seed(0)
adv = attack(x, y)
succ = attack.last_result.success
with torch.no_grad():
    kept = judge(adv).argmax(1) == y
ts = torch.tensor([100, 200, 300, 400, 500, 600])
noise = torch.randn(len(ts), 1, 32, 32, generator=torch.Generator().manual_seed(0))
abar = gen.scheduler.alphas_cumprod


@torch.no_grad()
def errors(images: torch.Tensor) -> torch.Tensor:
    """``(N, 10)`` summed noise-prediction errors per class."""
    x0 = gen.encode(gen.to_generator(images))
    out = torch.zeros(len(images), 10)
    for k, t in enumerate(ts):
        xt = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * noise[k]
        for c in range(10):
            cond = gen.condition(labels=torch.full((len(images),), c))
            eps = gen.denoise(xt, t.expand(len(images)), cond)
            out[:, c] += (eps - noise[k]).flatten(1).pow(2).mean(1)
    return out


started = time.perf_counter()
dc_clean, dc_adv = errors(x).argmin(1) == y, errors(adv).argmin(1) == y
print(f"{victim}: success {succ.float().mean():.3f}, judge keeps {kept[succ].float().mean():.3f}; "
      f"diffusion classifier: clean accuracy {dc_clean.float().mean():.3f}, keeps the class on "
      f"{dc_adv[succ & kept].float().mean():.3f} of the judge-kept and {dc_adv[succ & ~kept].float().mean():.3f} "
      f"of the judge-rejected successes ({time.perf_counter() - started:.0f} s for {2 * len(x)} images)")
