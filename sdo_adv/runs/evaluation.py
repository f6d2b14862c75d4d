"""Transfer evaluation of an attack output folder (see :mod:`sdo_adv.runs`) against classifiers.

For each classifier: accuracy on the originals and on the adversarial PNGs, and transfer
success (the share of the attack's successful images that also fool it, and of all images).
Records follow RobustBench's ``model_info`` entries where fields apply (accuracies and rates
in percent); image metrics (L2, L-inf, SSIM, PSNR) are measured once over the set.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import metrics
from ..files import write_text
from ..imaging import fit
from ..loading import UnsafeCheckpointError, check_classifier_spec, load_classifier
from .config import AttackRunConfig
from .dataset import read_dataset
from .errors import RunError
from .figures import save_figure
from .io import read_image, to_tensor
from .manifest import MANIFEST, PART_GLOB, Manifest
from .prompts import recorded_synsets
from .report import RUN, fmt, mean

THREAT_MODEL = "natural-diffusion"
# Weights the optional metrics would need, in torch hub's checkpoint folder.
OPTIONAL_METRICS = {"lpips": "alexnet-owt-7be5be79.pth", "fid": "pt_inception-2015-12-05-6726825d.pth"}
BATCH = 64
JSON, TABLE, CHART = "evaluation.json", "evaluation.md", "evaluation.png"


def optional_metrics() -> dict[str, dict[str, str]]:
    """LPIPS and FID, reported as skipped with the reason."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return {name: {"skipped": "not implemented in this version" if (folder / file).is_file()
                   else f"weights not present locally ({folder / file})"}
            for name, file in OPTIONAL_METRICS.items()}


def evaluate_run(adv_dir: str | Path, specs: Sequence[str], robustbench_dir: str | Path = "./models",
                 out: str | Path | None = None, notice: Callable[[str], None] = print,
                 trust_pickle: bool = False, judges: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate the attack folder ``adv_dir`` against the classifiers ``specs`` and ``judges``;
    write evaluation.json, evaluation.md and evaluation.png to ``out`` (default ``adv_dir``)
    and return the evaluation. Every model's record has ``keeps_label``, the share of the
    attack's successes it reads as the true label; ``judge_agreement`` is the share that
    every judge reads so (definitions in :mod:`sdo_adv.judging`). A classifier whose weights
    are absent is skipped with the reason; an unknown spec raises :class:`RunError` before
    any compute. ``trust_pickle``: see :func:`sdo_adv.load_classifier`."""
    adv_dir = Path(adv_dir)
    out = Path(out) if out is not None else adv_dir
    if not (adv_dir / RUN).is_file():
        raise RunError(f"{adv_dir} has no {RUN}: not an sdo-adv attack folder", "adv_dir")
    info = json.loads((adv_dir / RUN).read_text())
    if info.get("command") == "generate":
        raise RunError(f"{adv_dir} is an `sdo-adv generate` folder; evaluate reads `sdo-adv attack` folders "
                       "(a generate folder's summary.json and manifest hold its figures)", "adv_dir")
    config, mapping = AttackRunConfig.recorded(info["config"]), info["dataset"].get("input_mapping", "resize")
    parts = sorted(p.name for p in adv_dir.glob(PART_GLOB))
    if parts:
        raise RunError(f"{adv_dir} holds the per-rank manifests of an unfinished sharded run ({', '.join(parts)})",
                       "adv_dir", fix="merge")
    rows = list(Manifest(adv_dir / MANIFEST).rows.values())
    if not rows:
        raise RunError(f"{adv_dir / MANIFEST} holds no finished items", "adv_dir")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config["classifier"] in judges:
        raise RunError(f"the attacked classifier {config['classifier']} cannot judge its own attack", "judges")
    in_loss = [j for j in judges if j in (config.get("guard"), *config.get("bystanders", ()))]
    if in_loss:
        raise RunError(f"{in_loss[0]} was the run's guard or a bystander (in the attack's loss or gradient): it "
                       "cannot judge it", "judges")
    models = _load_models(list(dict.fromkeys([*specs, *judges])), robustbench_dir, device, trust_pickle)
    dataset = read_dataset(config["input"], config["labels"], recorded_synsets(config))
    by_source = {it.source: it for it in dataset.items}
    lost = [r["source"] for r in rows if r["source"] not in by_source]
    if lost:
        notice(f"notice: {len(lost)} item(s) are no longer readable in {config['input']}, e.g. {lost[0]}: "
               "left out of the evaluation")
        rows = [r for r in rows if r["source"] in by_source]

    measured: dict[str, list[float | None]] = {"l2": [], "linf": [], "ssim": [], "psnr": []}
    preds: dict[str, tuple[list[int], list[int]]] = {s: ([], []) for s, m in models.items()
                                                     if isinstance(m, nn.Module)}
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        adv = torch.stack([to_tensor(read_image(adv_dir / r["file"]), dataset.channels) for r in chunk])
        orig = dataset.load([by_source[r["source"]] for r in chunk], fit=lambda x: fit(x, adv.shape[-1], mapping))
        for key, values in metrics.measure(adv, orig).items():
            measured[key] += values
        with torch.no_grad():
            for spec, (clean, attacked) in preds.items():
                clean += models[spec](orig.to(device)).argmax(1).tolist()
                attacked += models[spec](adv.to(device)).argmax(1).tolist()

    dataset_name = Path(config["input"]).name
    result = {"adv_dir": str(adv_dir.resolve()),
              "attack": {k: config[k] for k in ("classifier", "generator", "estimator", "targeted", "steps")},
              "n_eval": len(rows), "n_attack_success": sum(r["success"] for r in rows),
              "judges": list(judges), "judge_agreement": _agreement(judges, preds, rows),
              "image_metrics": {f"mean_{k}": mean(v) for k, v in measured.items()}, **optional_metrics(),
              "models": [_record(spec, model, preds.get(spec), rows, dataset_name)
                         for spec, model in models.items()]}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / JSON, json.dumps(result, indent=2) + "\n")
    write_text(out / TABLE, _markdown(result))
    _bar_chart([r for r in result["models"] if r["skipped"] is None], out / CHART)
    return result


def _load_models(specs: Sequence[str], robustbench_dir: str | Path, device: torch.device,
                 trust_pickle: bool) -> dict[str, nn.Module | str]:
    """Classifiers by spec; a string (the reason) for those whose weights are absent."""
    for spec in specs:  # every spec's form and name before any weights load
        try:
            check_classifier_spec(spec)
        except FileNotFoundError:
            pass  # absent weights: skipped below
        except (ValueError, TypeError) as err:
            raise RunError(str(err), "specs") from err
    models: dict[str, nn.Module | str] = {}
    for spec in specs:
        try:
            models[spec] = load_classifier(spec, pretrained=True, model_dir=robustbench_dir,
                                           trust_pickle=trust_pickle).to(device).eval()
        except FileNotFoundError as err:
            models[spec] = f"weights not found: {err}"
        except UnsafeCheckpointError as err:
            raise RunError(err.problem, "specs", fix="trust_pickle") from err
        except (ValueError, TypeError) as err:
            raise RunError(str(err), "specs") from err
    return models


def _agreement(judges: Sequence[str], preds: dict[str, tuple[list[int], list[int]]],
               rows: list[dict[str, Any]]) -> float | None:
    """Percent of the attack's successes that every judge reads as the true label (None
    without successes, without judges, or when a judge's weights are absent)."""
    if not judges or any(j not in preds for j in judges):
        return None
    kept = [all(preds[j][1][i] == r["label"] for j in judges) for i, r in enumerate(rows) if r["success"]]
    return _percent(mean([float(k) for k in kept]))


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _record(spec: str, model: nn.Module | str, preds: tuple[list[int], list[int]] | None,
            rows: list[dict[str, Any]], dataset_name: str) -> dict[str, Any]:
    """One model's record; ``transfer_success``: share of the attack's successful images that
    fool this model (targeted: predicted as the target), ``transfer_success_all``: of all."""
    record: dict[str, Any] = {"name": spec, "dataset": dataset_name, "threat_model": THREAT_MODEL, "eps": None,
                              "architecture": None, "number_forward_passes": 1, "clean_acc": None,
                              "adv_acc": None, "transfer_success": None, "transfer_success_all": None,
                              "keeps_label": None,
                              "n_eval": 0, "skipped": model if isinstance(model, str) else None}
    if preds is None:
        return record
    clean, attacked = preds
    fooled = [p == r["target"] if r["target"] is not None else p != r["label"] for p, r in zip(attacked, rows)]
    return {**record, "architecture": type(getattr(model, "model", model)).__name__,
            "clean_acc": _percent(mean([float(p == r["label"]) for p, r in zip(clean, rows)])),
            "adv_acc": _percent(mean([float(p == r["label"]) for p, r in zip(attacked, rows)])),
            "transfer_success": _percent(mean([float(f) for f, r in zip(fooled, rows) if r["success"]])),
            "transfer_success_all": _percent(mean([float(f) for f in fooled])),
            "keeps_label": _percent(mean([float(p == r["label"]) for p, r in zip(attacked, rows) if r["success"]])),
            "n_eval": len(rows)}


def _markdown(result: dict[str, Any]) -> str:
    a, f = result["attack"], result["image_metrics"]
    lines = [f"# sdo-adv evaluation of {result['adv_dir']}", "",
             f"{result['n_eval']} adversarial images from {a['classifier']} through {a['generator']} "
             f"(estimator {a['estimator']}, {a['steps']} steps, targeted: {a['targeted'] or 'no'}); "
             f"{result['n_attack_success']} of them fool the attacked classifier. Threat model: {THREAT_MODEL}.", "",
             f"Judges: {', '.join(result['judges']) or 'none'}; they all still read the true label on "
             f"{fmt(result['judge_agreement'], '.2f')}% of the attack's successes.", "",
             "| model | clean acc (%) | adv acc (%) | transfer success (% of the attack's successes) "
             "| transfer success (% of all) | keeps the label (% of successes) | n |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["models"]:
        if r["skipped"] is not None:
            lines.append(f"| `{r['name']}` | skipped: {r['skipped']} | | | | | |")
        else:
            lines.append(f"| `{r['name']}` | {fmt(r['clean_acc'], '.2f')} | {fmt(r['adv_acc'], '.2f')} "
                         f"| {fmt(r['transfer_success'], '.2f')} | {fmt(r['transfer_success_all'], '.2f')} "
                         f"| {fmt(r['keeps_label'], '.2f')} | {r['n_eval']} |")
    lines += ["", f"Image metrics over the set (PNG against the original): mean L2 {fmt(f['mean_l2'], '.3f')}, "
                  f"L-inf {fmt(f['mean_linf'], '.3f')}, SSIM {fmt(f['mean_ssim'], '.3f')}, "
                  f"PSNR {fmt(f['mean_psnr'], '.2f')} dB.", "",
              f"LPIPS: skipped ({result['lpips']['skipped']}). FID: skipped ({result['fid']['skipped']})."]
    return "\n".join(lines) + "\n"


def _bar_chart(records: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars per evaluated model: clean accuracy, adversarial accuracy, transfer success."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = (("clean_acc", "clean accuracy"), ("adv_acc", "adversarial accuracy"),
            ("transfer_success", "transfer success"))
    fig, ax = plt.subplots(figsize=(2 + 1.6 * max(1, len(records)), 3.4))
    width = 0.8 / len(bars)
    for j, (key, label) in enumerate(bars):
        ax.bar([i + (j - 1) * width for i in range(len(records))], [r[key] or 0.0 for r in records], width,
               label=label)
    ax.set_xticks(range(len(records)), [r["name"] for r in records], rotation=15, ha="right", fontsize=7)
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("%")
    ax.set_title("transfer of sdo-adv adversarial images" if records else "no model evaluated", fontsize=9)
    ax.legend(fontsize=7, ncols=3, loc="upper center")
    fig.tight_layout()
    save_figure(fig, path)


def model_line(record: dict[str, Any]) -> str:
    """One line of an evaluated model's record (see :func:`evaluate_run`)."""
    if record["skipped"] is not None:
        return f"{record['name']}: skipped ({record['skipped']})"
    pct = lambda v: fmt(v, "") + ("%" if v is not None else "")  # noqa: E731
    return (f"{record['name']}: clean {pct(record['clean_acc'])} | adversarial {pct(record['adv_acc'])} | transfer "
            f"{pct(record['transfer_success'])} of the attack's successes, {pct(record['transfer_success_all'])} of all "
            f"| keeps the label on {pct(record['keeps_label'])} of the successes")
