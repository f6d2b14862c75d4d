"""Copy an exported generator folder into the package as ``sdo-adv:digits`` with its defaults.

    python training/ship_generator.py /work/train/generator/export --guidance 1.0
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

DEST = Path(__file__).resolve().parents[1] / "sdo_adv" / "models" / "digits"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("export", type=Path)
    p.add_argument("--guidance", type=float, default=1.0, help="default guidance for attacks")
    p.add_argument("--steps", type=int, default=20, help="default DDIM steps for attacks")
    a = p.parse_args()
    if DEST.exists():
        shutil.rmtree(DEST)
    DEST.mkdir(parents=True)
    for item in ("unet", "scheduler", "model_index.json"):
        src = a.export / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, DEST / item)
    training = json.loads((a.export / "training_info.json").read_text())
    training["command"] = "python training/train_generator.py --steps 4500 --threads 1"
    info = {
        "summary": "class-conditional DDPM (UNet2DModel, 10 digits + null class), eps prediction, cosine schedule",
        "resolution": 32, "channels": 1, "num_classes": 10, "null_class": 10,
        "class_names": [str(i) for i in range(10)],
        "num_inference_steps": a.steps, "guidance_scale": a.guidance, "solver": "ddim", "input_mapping": "pad",
        "training": training,
    }
    (DEST / "sdo_adv.json").write_text(json.dumps(info, indent=2))
    print(f"shipped {a.export} to {DEST}")


if __name__ == "__main__":
    main()
