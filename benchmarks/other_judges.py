"""Does the judge agreement hold for judges of other families? SDOAttack's defaults on the 200
shipped held-out digits, judged by the shipped RBF-SVM (`sdo-adv:digits-judge`) and by two
classifiers fitted here on the same training split (never attacked, never in any loss): a
3-nearest-neighbour vote and a 300-tree random forest on raw [0, 1] pixels. A control measures
each judge on the clean digits plus random noise no person would notice: Gaussian (std 0.08,
clipped to [0, 1]) and its absolute value (a faint positive haze, std 0.04 before folding).

    python benchmarks/other_judges.py --victims sdo-adv:digits-mlp,sdo-adv:digits-lenet \
        --out benchmarks/results/other_judges_cpu.json
    python benchmarks/other_judges.py --attack "fidelity_norm=l1,fidelity=40" --out l1.json

``--attack`` overrides SDOAttack's defaults as ``natural_quality.py``'s attacks do.

Needs the ``train`` extra (scikit-learn).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from sdo_adv import load_classifier, load_generator
from sdo_adv.attacks import SDOAttack
from sdo_adv.data import load_digits
from sdo_adv.files import write_text
from sdo_adv.judging import attack_success

sys.path.insert(0, str(Path(__file__).resolve().parent))
from natural_quality import parse_attack  # noqa: E402

VICTIMS = ("sdo-adv:digits-mlp", "sdo-adv:digits-lenet", "sdo-adv:digits-resnet18",
           "sdo-adv:digits-test_efficientnet", "sdo-adv:digits-cnn-aug")


def judges() -> dict:
    """Name -> function from [0, 1] images (N, 1, 32, 32) to predicted labels (N,)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from digits_data import load_split, to_unit

    data = load_split()
    x, y = to_unit(data["x_train"]).flatten(1).numpy(), data["y_train"]
    svm = load_classifier("sdo-adv:digits-judge")
    fitted = {"knn3": KNeighborsClassifier(3).fit(x, y), "forest300": RandomForestClassifier(300, random_state=0).fit(x, y)}

    def sklearn_judge(model):
        return lambda images: torch.from_numpy(model.predict(images.flatten(1).numpy()))

    return {"sdo-adv:digits-judge": lambda images: svm(images).argmax(1),
            **{name: sklearn_judge(model) for name, model in fitted.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victims", default=",".join(VICTIMS))
    p.add_argument("--attack", default="default", help="SDOAttack overrides, key=value,...")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    images, labels = load_digits(200)
    judged = judges()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    controls = {"clean": images, "gaussian 0.08": (images + 0.08 * noise).clamp(0, 1),
                "haze 0.04": (images + 0.04 * noise.abs()).clamp(0, 1)}
    with torch.no_grad():
        result = {"controls": {c: {j: (f(x) == labels).float().mean().item() for j, f in judged.items()}
                               for c, x in controls.items()}, "victims": {}}
        for victim in a.victims.split(","):
            model = load_classifier(victim)
            attack = SDOAttack(model, load_generator("sdo-adv:digits"), **parse_attack(a.attack))
            torch.manual_seed(0)
            with torch.enable_grad():
                adv = torch.cat([attack(images[i:i + 50], labels[i:i + 50]) for i in range(0, len(images), 50)])
            ok = attack_success(model(images).argmax(1), model(adv).argmax(1), labels)
            keeps = {j: f(adv)[ok] == labels[ok] for j, f in judged.items()}
            result["victims"][victim] = {"successes": int(ok.sum()),
                                         "judge_agreement": {j: k.float().mean().item() for j, k in keeps.items()},
                                         "every_judge": torch.stack(list(keeps.values())).all(0).float().mean().item()}
            print(victim, json.dumps(result["victims"][victim]), flush=True)
    print(json.dumps(result["controls"]))
    if a.out:
        write_text(a.out, json.dumps({"machine": {"platform": platform.platform(), "threads": a.threads,
                                                  "torch": torch.__version__},
                                      "command": " ".join(sys.argv), "attack": a.attack, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
