"""What a finished run reports: its summary (``summary.json``), ``report.md`` and ``grid.png``,
rebuilt from the manifest alone (no models), so a merge after a crash writes them too."""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..files import write_text
from ..imaging import fit
from .config import AttackRunConfig
from .dataset import Dataset, read_dataset
from .errors import RunError
from .figures import save_grid
from .io import read_image, to_tensor
from .manifest import finished_rows, merge_manifests, run_lock
from .prompts import recorded_synsets

REPORT, GRID, RUN, SUMMARY = "report.md", "grid.png", "run.json", "summary.json"
GRID_ITEMS = 16
VERSIONED = ("torch", "diffusers", "timm", "torchattacks", "robustbench", "sdo-adv")


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``n/a`` for None."""
    return "n/a" if value is None else format(value, spec)


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the finite values, None when there are none."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def versions() -> dict[str, str | None]:
    """Versions of Python and the packages a run depends on (None if not installed)."""
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def summary_line(s: dict[str, Any]) -> str:
    """One line of a run's summary (see :meth:`RunOutputs.summary`)."""
    judged = f" | judges keep the class {fmt(s['judge_agreement'], '.0%')}" if s["judges"] else ""
    return (f"success {fmt(s['success_rate'], '.0%')} of {s['n']} images (clean accuracy "
            f"{fmt(s['clean_accuracy'], '.0%')}){judged} | mean L2 {fmt(s['mean_l2'], '.3f')} "
            f"| mean SSIM {fmt(s['mean_ssim'], '.3f')} | {fmt(s['seconds_per_image'], '.2f')} s/image "
            f"| failed {len(s['failed'])} | skipped {len(s['skipped'])}")


@dataclass
class RunOutputs:
    """The summary, ``summary.json``, ``report.md`` and ``grid.png`` of an output folder, from
    its manifest rows. ``settings``: the run's recorded settings, by field name."""

    out: Path
    dataset: Dataset
    settings: dict[str, Any]
    size: tuple[int, int]
    notices: list[str]
    rows: dict[str, dict[str, Any]]
    input_mapping: str = "resize"
    command: str = "attack"
    """``attack`` (originals are the inputs) or ``generate`` (originals are the plain draws)."""

    @classmethod
    def from_folder(cls, out: str | Path) -> RunOutputs:
        """The outputs of the run recorded in ``out/run.json``, with the dataset re-read."""
        out = Path(out)
        if not (out / RUN).is_file():
            raise RunError(f"{out} holds no {RUN}: not an sdo-adv attack output folder", "out")
        info = json.loads((out / RUN).read_text())
        if info.get("command") == "generate":
            raise RunError(f"{out} is an `sdo-adv generate` folder: re-run the same `sdo-adv generate` command, "
                           "which resumes and merges its manifests", "out")
        settings = AttackRunConfig.recorded(info["config"])
        return cls(out, read_dataset(settings["input"], settings["labels"], recorded_synsets(settings)), settings,
                   tuple(info["dataset"]["image_size"]), info.get("notices", []), finished_rows(out),
                   info["dataset"].get("input_mapping", "resize"))

    def merge(self) -> None:
        """:meth:`fold`, unless an attack is still writing to the folder."""
        with run_lock(self.out, exclusive=True):
            self.fold()

    def fold(self) -> None:
        """Fold the ranks' manifest parts into ``manifest.jsonl`` (see
        :func:`~sdo_adv.runs.manifest.merge_manifests`) and take the merged rows; no lock
        (rank 0 of the run itself folds at its end)."""
        self.rows = merge_manifests(self.out, [it.source for it in self.dataset.items])

    def ordered(self) -> list[dict[str, Any]]:
        """Manifest rows of the dataset's items, in dataset order."""
        return [self.rows[it.source] for it in self.dataset.items if it.source in self.rows]

    def summary(self) -> dict[str, Any]:
        """Totals over the manifest (definitions in :mod:`sdo_adv.judging`): ``n``,
        ``clean_accuracy``, ``success_rate`` (untargeted: of the images the victim read
        correctly; targeted: of all), ``judge_agreement`` (of the successes, None without
        judges), ``natural_success_rate`` (same denominator as ``success_rate``), means over
        the successful images (``mean_l2``, ``mean_linf``, ``mean_ssim``, ``mean_psnr``),
        ``seconds_per_image``, ``failed`` (source -> reason: non-finite loss or gradient) and
        ``skipped`` (source -> reason)."""
        rows = self.ordered()
        ok = [r for r in rows if r["success"]]
        attackable = [r for r in rows if self.settings["targeted"] or r["pred_before"] == r["label"]]
        judged = bool(self.settings.get("judges"))
        natural = [r for r in ok if r.get("natural")]
        return {"n": len(rows), "clean_accuracy": mean([float(r["pred_before"] == r["label"]) for r in rows]),
                "success_rate": len(ok) / len(attackable) if attackable else None,
                "judge_agreement": len(natural) / len(ok) if judged and ok else None,
                "natural_success_rate": len(natural) / len(attackable) if judged and attackable else None,
                "judges": list(self.settings.get("judges", [])),
                **{f"mean_{k}": mean([r[k] for r in ok]) for k in ("l2", "linf", "ssim", "psnr")},
                "seconds_per_image": mean([r["seconds"] for r in rows]),
                "failed": {r["source"]: r["failure"] for r in rows if r.get("failure")},
                "skipped": dict(self.dataset.skipped)}

    def write(self) -> dict[str, Any]:
        """Write ``summary.json``, ``report.md`` and ``grid.png``; return the summary."""
        s = self.summary()
        write_text(self.out / SUMMARY, json.dumps(s, indent=2) + "\n")
        self._write_report(s)
        self._write_grid(s)
        return s

    def _write_report(self, s: dict[str, Any]) -> None:
        o = self.settings
        rule = ("the victim reads the target, of all images" if o["targeted"] else
                "the victim read the original correctly and reads the PNG as another class, of the images it "
                "read correctly")
        judges = ", ".join(s["judges"]) or "none"
        lines = [f"# sdo-adv {self.command}: {o['classifier']} through {o['generator']}", "",
                 "| images | clean accuracy | success rate | judge agreement | natural success | mean L2 "
                 "| mean L-inf | mean SSIM | mean PSNR (dB) | seconds / image |",
                 "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                 f"| {s['n']} | {fmt(s['clean_accuracy'], '.1%')} | {fmt(s['success_rate'], '.1%')} "
                 f"| {fmt(s['judge_agreement'], '.1%')} | {fmt(s['natural_success_rate'], '.1%')} "
                 f"| {fmt(s['mean_l2'], '.3f')} | {fmt(s['mean_linf'], '.3f')} | {fmt(s['mean_ssim'], '.3f')} "
                 f"| {fmt(s['mean_psnr'], '.2f')} | {fmt(s['seconds_per_image'], '.2f')} |", "",
                 f"Success is measured on the saved 8-bit PNGs: {rule} (targeted: {o['targeted'] or 'no'}). "
                 + ("The originals are the plain draws of each sample's seed (draws/). " if self.command == "generate"
                    else "") +
                 f"Judges (never attacked, never in the loss): {judges}; judge agreement is the share of "
                 "successes that every judge still reads as the true label. "
                 f"Fidelity means are over the successful images, PNG against the original at "
                 f"{self.size[0]}x{self.size[1]}. Estimator {o['estimator']}, {o['steps']} steps, lr {o['lr']}, "
                 f"depth {o['depth']}, {o['num_inference_steps']} sampling steps, guidance "
                 f"{o['guidance_scale']}, seed {o['seed']}; all settings in {RUN}.", "",
                 f"## Failed images ({len(s['failed'])})", ""]
        lines += [f"- `{src}`: {reason}" for src, reason in s["failed"].items()] or ["none"]
        lines += ["", f"## Skipped files ({len(s['skipped'])})", ""]
        lines += [f"- `{src}`: {reason}" for src, reason in s["skipped"].items()] or ["none"]
        lines += ["", "## Notices", ""] + ([f"- {m}" for m in self.notices] or ["none"])
        write_text(self.out / REPORT, "\n".join(lines) + "\n")

    def _write_grid(self, s: dict[str, Any]) -> None:
        rows = self.ordered()[:GRID_ITEMS]
        if not rows:
            return
        by_source = {it.source: it for it in self.dataset.items}
        originals = self.dataset.load([by_source[r["source"]] for r in rows],
                                      fit=lambda x: fit(x, self.size[0], self.input_mapping))
        adversarials = torch.stack([to_tensor(read_image(self.out / r["file"]), originals.shape[1]) for r in rows])
        save_grid(originals, adversarials, [r["label"] for r in rows], [r["pred_after"] for r in rows],
                  self.out / GRID, title=f"{'SDOGenerate' if self.command == 'generate' else 'SDOAttack'} on "
                                         f"{self.settings['classifier']}: "
                                         f"{fmt(s['success_rate'], '.0%')} of {s['n']} successful")
