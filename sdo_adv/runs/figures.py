"""Figures people look at: the original / adversarial / difference grid."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ..files import atomic_write


def save_grid(originals: Tensor, adversarials: Tensor, labels: Sequence[int], predictions: Sequence[int],
              path: str | Path, *, amplify: float = 5.0, class_names: Sequence[str] | None = None,
              title: str | None = None) -> Path:
    """Write a PNG with three rows per image column: original (captioned with its true label),
    adversarial (captioned with the classifier's prediction, red when it differs from the
    label), and the absolute difference times ``amplify``. Images ``(B, C, H, W)`` in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = (lambda i: class_names[int(i)]) if class_names else (lambda i: str(int(i)))
    n = originals.shape[0]
    diff = ((adversarials - originals).abs() * amplify).clamp(0, 1)
    fig, axes = plt.subplots(3, n, figsize=(1.1 * n + 0.9, 3.9), squeeze=False)
    rows = [("original", originals), ("adversarial", adversarials), (f"|diff| x{amplify:g}", diff)]
    for r, (row_name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            img = imgs[c].detach().float().cpu().permute(1, 2, 0).clamp(0, 1)
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"true {name(labels[c])}", fontsize=8)
            elif r == 1:
                fooled = int(predictions[c]) != int(labels[c])
                ax.set_title(f"pred {name(predictions[c])}", fontsize=8, color="red" if fooled else "black")
            if c == 0:
                ax.set_ylabel(row_name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: object, path: str | Path) -> Path:
    """Write a matplotlib figure as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
