"""Runs over datasets: the application layer above the engine and the attacks.

``config`` (the typed settings), ``dataset`` (inputs), ``io`` (atomic writes, images),
``manifest`` (the resumable record), ``attack_run`` (the orchestrator), ``report`` (summary,
report, grid), ``figures``, ``evaluation`` (transfer to other classifiers), ``demo``.
"""
from .attack_run import AttackRun
from .config import TARGET_MODES, AttackRunConfig
from .dataset import Dataset, Item, read_dataset
from .demo import run_demo
from .errors import RunError
from .evaluation import evaluate_run, model_line
from .report import RunOutputs, summary_line

__all__ = ["TARGET_MODES", "AttackRun", "AttackRunConfig", "Dataset", "Item", "RunError", "RunOutputs",
           "evaluate_run", "model_line", "read_dataset", "run_demo", "summary_line"]
