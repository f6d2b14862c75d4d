"""The Python attack API on the embedded models.

Attacks held-out digits with SDOAttack (untargeted, then targeted to the next digit) against
the embedded ResNet-18, and checks whether the other embedded classifiers are fooled too.
With the defaults (16 digits, up to 50 iterations per attack) it takes a few minutes on 2 CPU
cores; ``--quick`` (4 digits, 3 iterations) takes about 15 seconds.

    python examples/attack_digits.py [--quick]
"""
import argparse

import torch

from sdo_adv import load_classifier, load_generator
from sdo_adv.attacks import SDOAttack
from sdo_adv.data import load_digits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    n, steps = (4, 3) if args.quick else (16, 50)

    images, labels = load_digits(n)
    model = load_classifier("sdo-adv:digits-resnet18")
    others = {name: load_classifier(f"sdo-adv:{name}") for name in ("digits-test_efficientnet", "digits-resnet18-pgd")}
    attack = SDOAttack(model, load_generator("sdo-adv:digits"), steps=steps, estimator="auto")

    adv = attack(images, labels)
    r = attack.last_result
    print(f"untargeted: success {r.success.float().mean():.0%}, mean L2 {r.l2.mean():.2f}, "
          f"iterations {r.iterations.tolist()}")
    with torch.no_grad():
        for name, clf in others.items():
            fooled = (clf(adv).argmax(1) != labels)[r.success].float()
            share = f"{fooled.mean():.0%}" if fooled.numel() else "n/a (none successful)"
            print(f"  {name}: fooled by {share} of the successful adversarials")

    attack.set_mode_targeted_by_function(lambda x, y: (y + 1) % 10, quiet=True)
    attack(images, labels)
    r = attack.last_result
    print(f"targeted (label + 1): success {r.success.float().mean():.0%}, targets {r.target.tolist()}")


if __name__ == "__main__":
    main()
