"""Stable Diffusion v1.5 against an ImageNet classifier: a thin wrapper over `sdo-adv attack`.

For a machine with a GPU and network access. ``IMAGES/<class>/`` holds photos per class,
the class named by its ImageNet synset id (``n01440764``), its ImageNet-1k index, or one of
its ImageNet names (``tabby_cat``, ``golden retriever``: then a labels CSV with the label and
the prompt "a photo of a <folder name>" of each photo is written to ``OUT/labels.csv``). It
runs ``sdo-adv attack`` with Stable Diffusion v1.5 (float16 on a GPU), timm's pretrained
ResNet-50 (or ``--classifier``, e.g. a RobustBench ImageNet model with its checkpoint under
``./models``) and the Stable Diffusion settings of SDOAttack's docstring (:data:`SETTINGS`),
then prints a line per photo with the ImageNet names of the predictions. Any other option of
``sdo-adv attack`` given here is passed on (and wins over :data:`SETTINGS`). With synset or
index folders the wrapper adds nothing: the command alone (README, "Stable Diffusion and
ImageNet") does the same. GPU timings are not yet measured.

``--tiny`` builds random-weight stand-ins offline instead (a tiny Stable Diffusion folder,
random weights for timm's 1000-class ``test_efficientnet`` and two random photos, see
``_standins.py``) and runs the same command in seconds on a CPU; its images and results are
meaningless.

    python examples/stable_diffusion.py --images photos/ --out sd_adv
    python examples/stable_diffusion.py --images photos/ --classifier robustbench:imagenet/Linf/Salman2020Do_R50
    python examples/stable_diffusion.py --tiny
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from sdo_adv.class_names import SYNSET
from sdo_adv.runs.io import IMAGE_EXTENSIONS

# The maintained copy of runwayml/stable-diffusion-v1-5, which was taken off the hub (that id
# still works from a local cache: --generator runwayml/stable-diffusion-v1-5).
STABLE_DIFFUSION = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# SDOAttack's settings for Stable Diffusion; DDIM-20 without classifier-free guidance keeps the inversion close.
SETTINGS = ("--num-inference-steps", "20", "--guidance-scale", "1", "--depth", "0.3", "--lr", "0.01",
            "--latent-bound", "0.2", "--fidelity", "10", "--fidelity-norm", "l2", "--fidelity-halflife", "none",
            "--steps", "30", "--batch-size", "1")
TINY = ("--num-inference-steps", "10", "--steps", "3", "--batch-size", "2", "--device", "cpu")


def imagenet_index() -> dict[str, int]:
    """ImageNet-1k class index by each of its names, lower case, spaces for underscores."""
    from timm.data import ImageNetInfo

    index: dict[str, int] = {}
    for i, description in enumerate(ImageNetInfo().label_descriptions()):
        for name in description.split(", "):
            index.setdefault(name.lower(), i)
    return index


def labels_csv(images: Path, out: Path) -> list[str]:
    """For class folders named by ImageNet names: write ``out/labels.csv`` (file, label, prompt)
    and return the ``--labels`` option; nothing for synset or index folders."""
    folders = sorted(d for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
    if all(SYNSET.fullmatch(d.name) or d.name.isdecimal() for d in folders):
        return []
    index, rows = imagenet_index(), []
    for folder in folders:
        name = folder.name.replace("_", " ")
        if name.lower() not in index:
            raise SystemExit(f"error: {folder} is named by no ImageNet class (use a synset id, an index or a name)")
        rows += [(p.relative_to(images).as_posix(), index[name.lower()], f"a photo of a {name}")
                 for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("file", "label", "prompt"), *rows])
    return ["--labels", str(out / "labels.csv")]


def attack(images: Path, out: Path, generator: str, classifier: str, options: list[str]) -> None:
    """Run ``sdo-adv attack`` on ``images`` into ``out``; print a line per photo."""
    import torch
    from timm.data import ImageNetInfo

    dtype = "float16" if torch.cuda.is_available() else "float32"
    command = [sys.executable, "-m", "sdo_adv.cli.main", "attack", "--generator", generator, "--classifier",
               classifier, "--input", str(images), "--out", str(out), "--dtype", dtype, *SETTINGS,
               *labels_csv(images, out), *options]
    if subprocess.run(command).returncode != 0:
        raise SystemExit(1)
    names = [d.split(",")[0] for d in ImageNetInfo().label_descriptions()]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        print(f"{r['source']}: {r['prompt']} | clean {names[r['pred_before']]} -> adversarial "
              f"{names[r['pred_after']]} | {'fooled' if r['success'] else 'not fooled'} | L2 {r['l2']:.2f}")
    print(f"fooled {sum(r['success'] for r in rows)} of {len(rows)} photos; wrote the PNGs and grid.png to {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, help="folder with one subfolder per ImageNet class")
    p.add_argument("--generator", default=STABLE_DIFFUSION, help="diffusers hub id or folder")
    p.add_argument("--classifier", default="timm:resnet50", help="classifier spec (timm specs load pretrained)")
    p.add_argument("--out", type=Path, default=Path("sd_adv"), help="output folder")
    p.add_argument("--tiny", action="store_true", help="random-weight stand-ins, offline, in seconds")
    args, options = p.parse_known_args()
    if not args.tiny:
        if args.images is None or not args.images.is_dir():
            p.error("--images must name a folder (or pass --tiny)")
        attack(args.images, args.out, args.generator, args.classifier, options)
        return

    from _standins import save_tiny_stable_diffusion, tiny_timm_checkpoint, write_random_images

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = write_random_images(root / "photos", ["tabby_cat", "pizza"])
        attack(photos, args.out, str(save_tiny_stable_diffusion(root / "tiny-sd")),
               f"timm:test_efficientnet@{tiny_timm_checkpoint(root / 'effnet.safetensors')}", [*TINY, *options])


if __name__ == "__main__":
    main()
