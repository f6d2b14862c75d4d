"""Write ``sdo_adv/models/SHA256SUMS`` for every shipped weight file and the shipped digits."""
import hashlib
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "sdo_adv" / "models"

files = sorted(MODELS.rglob("*.safetensors")) + [MODELS.parent / "data" / "digits_heldout.npz"]
lines = []
for f in files:
    name = str(f.relative_to(MODELS)) if f.is_relative_to(MODELS) else "../data/" + f.name
    lines.append(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {name}")
(MODELS / "SHA256SUMS").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
