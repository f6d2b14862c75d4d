"""Stable Diffusion v1.5 against an ImageNet classifier: natural adversarial photos.

For a machine with a GPU and network access. Reads photos from ``IMAGES/<class>/`` for the
ImageNet classes in ``CLASSES`` (folder names as written there, spaces or underscores), resizes
them to 512x512, DDIM-inverts each with Stable Diffusion v1.5 (float16 on a GPU) under the
prompt "a photo of a <class>" and optimizes its latent with SDOAttack against timm's
pretrained ResNet-50 (or ``--classifier``, e.g. a RobustBench ImageNet model), with the
Stable Diffusion settings of SDOAttack's docstring: depth 0.3, lr 0.01, latent_bound 0.2,
fidelity 10. Guidance scale 1 (no classifier-free guidance) keeps the inversion close to the
photo. Writes one PNG per photo and ``grid.png`` to ``--out`` and prints a line per photo.
Any diffusers model can stand in for Stable Diffusion, e.g. ``--generator
google/ddpm-cifar10-32`` (unconditional, so no prompts; photos are attacked at 32x32).

The first run downloads Stable Diffusion v1.5 (about 4 GB in float16) and the classifier's
weights. Time: not measured yet on a GPU; expect tens of seconds per photo (each iteration
runs 6 of the 20 sampling steps, the VAE decoder and the classifier, and backpropagates
through one UNet step, the decoder and the classifier).

``--tiny`` builds random-weight stand-ins offline instead (a tiny StableDiffusionPipeline
saved with ``save_pretrained`` to a temporary folder, a tiny 1000-class CNN and two random
images, see ``_standins.py``) and runs the same code path in seconds on a CPU; its images
and results are meaningless.

    python examples/stable_diffusion.py --images photos/ --out sd_adv
    python examples/stable_diffusion.py --images photos/ --classifier robustbench:imagenet/Linf/Salman2020Do_R50 \\
        --robustbench-dir ./models
    python examples/stable_diffusion.py --tiny
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from sdo_adv import load_classifier, load_generator
from sdo_adv.attacks import SDOAttack
from sdo_adv.runs.figures import save_grid
from sdo_adv.runs.io import IMAGE_EXTENSIONS, read_image, save_png, to_tensor

# A few ImageNet classes: folder / prompt name -> ImageNet-1k index.
CLASSES = {"goldfish": 1, "golden retriever": 207, "tabby cat": 281, "airliner": 404, "sports car": 817,
           "strawberry": 949, "pizza": 963}
PROMPT = "a photo of a {}"
# The maintained copy of runwayml/stable-diffusion-v1-5, which was taken off the hub (that id
# still works from a local cache: --generator runwayml/stable-diffusion-v1-5).
STABLE_DIFFUSION = "stable-diffusion-v1-5/stable-diffusion-v1-5"
GRID_ITEMS = 8


def list_photos(folder: Path) -> tuple[list[Path], Tensor]:
    """Photos under ``folder/<class>/`` for the classes of ``CLASSES``, and their ImageNet labels."""
    paths, labels = [], []
    for sub in sorted(d for d in folder.iterdir() if d.is_dir()):
        name = sub.name.replace("_", " ")
        if name not in CLASSES:
            print(f"skipped {sub}: not one of the classes {', '.join(CLASSES)}")
            continue
        found = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += found
        labels += [CLASSES[name]] * len(found)
    if not paths:
        raise SystemExit(f"error: no photos in {folder}/<class>/ for the classes {', '.join(CLASSES)}")
    return paths, torch.tensor(labels)


def attack_photos(images_dir: Path, generator: str | Path, classifier: str | nn.Module, out: Path, *,
                  steps: int, num_inference_steps: int, batch_size: int, robustbench_dir: str) -> None:
    """Attack every photo of ``images_dir``; write the adversarial PNGs and ``grid.png`` to ``out``."""
    from timm.data import ImageNetInfo

    paths, labels = list_photos(images_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    gen = load_generator(generator, torch_dtype=dtype, num_inference_steps=num_inference_steps,
                         guidance_scale=1.0).to(device)
    model = load_classifier(classifier, pretrained=True, model_dir=robustbench_dir).to(device).eval()
    names = {i: c for c, i in CLASSES.items()}
    attack = SDOAttack(model, gen, steps=steps, lr=0.01, depth=0.3, latent_bound=0.2, fidelity=10.0,
                       fidelity_halflife=None, prompts=lambda y: [PROMPT.format(names[int(i)]) for i in y], progress=True)
    imagenet = [d.split(",")[0] for d in ImageNetInfo().label_descriptions()]

    images = torch.stack([to_tensor(read_image(p), 3, (gen.image_size, gen.image_size)) for p in paths])
    out.mkdir(parents=True, exist_ok=True)
    adv, preds, fooled = torch.empty_like(images), [], 0
    for start in range(0, len(paths), batch_size):
        batch = slice(start, start + batch_size)
        adv[batch] = attack(images[batch], labels[batch])
        r = attack.last_result
        for i, path in enumerate(paths[batch]):
            save_png(adv[start + i], out / f"{path.parent.name}__{path.stem}.png")
            print(f"{path}: {names[int(labels[start + i])]} | clean {imagenet[int(r.clean_pred[i])]} -> "
                  f"adversarial {imagenet[int(r.adv_pred[i])]} | {'fooled' if r.success[i] else 'not fooled'} "
                  f"| L2 {r.l2[i]:.2f}")
        preds += r.adv_pred.tolist()
        fooled += int(r.success.sum())
    k = min(GRID_ITEMS, len(paths))
    save_grid(images[:k], adv[:k], labels[:k].tolist(), preds[:k], out / "grid.png", class_names=imagenet,
              title=f"SDOAttack through {generator}")
    print(f"fooled {fooled} of {len(paths)} photos; wrote the PNGs and grid.png to {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, help="folder with one subfolder per class of CLASSES")
    p.add_argument("--generator", default=STABLE_DIFFUSION, help="diffusers hub id or folder")
    p.add_argument("--classifier", default="timm:resnet50", help="classifier spec (timm specs load pretrained)")
    p.add_argument("--robustbench-dir", default="./models", help="where RobustBench checkpoints are looked up")
    p.add_argument("--steps", type=int, default=30, help="attack iterations")
    p.add_argument("--num-inference-steps", type=int, default=20, help="DDIM sampling steps")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("sd_adv"), help="output folder")
    p.add_argument("--tiny", action="store_true", help="random-weight stand-ins, offline, in seconds")
    args = p.parse_args()
    settings = {"steps": args.steps, "num_inference_steps": args.num_inference_steps,
                "batch_size": args.batch_size, "robustbench_dir": args.robustbench_dir}
    if not args.tiny:
        if args.images is None or not args.images.is_dir():
            p.error("--images must name a folder (or pass --tiny)")
        try:
            attack_photos(args.images, args.generator, args.classifier, args.out, **settings)
        except (FileNotFoundError, ValueError) as err:  # models not found, bad specs
            raise SystemExit(f"error: {err}") from err
        return

    from _standins import save_tiny_stable_diffusion, tiny_imagenet_classifier, write_random_images

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = write_random_images(root / "photos", ["tabby_cat", "pizza"])
        attack_photos(photos, save_tiny_stable_diffusion(root / "tiny-sd"), tiny_imagenet_classifier(), args.out,
                      **{**settings, "steps": 3, "num_inference_steps": 10, "batch_size": 2})


if __name__ == "__main__":
    main()
