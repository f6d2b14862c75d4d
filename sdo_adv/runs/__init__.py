"""Runs over datasets: the application layer above the engine and the attacks.

``config`` (the typed settings), ``dataset`` (inputs), ``io`` (images, output names; atomic
writes are :mod:`sdo_adv.files`), ``manifest`` (the resumable record), ``attack_run`` (the
orchestrator), ``generate_run`` (adversarial samples of classes), ``universal_run`` (training
universal changes), ``report`` (summary, report, grid), ``figures``, ``evaluation`` (transfer
to other classifiers), ``demo``.
"""
from .attack_run import AttackRun
from .config import TARGET_MODES, AttackRunConfig
from .dataset import Dataset, Item, read_dataset
from .demo import run_demo
from .errors import RunError
from .evaluation import evaluate_run, model_line
from .generate_run import GenerateRun, GenerateRunConfig
from .report import RunOutputs, summary_line
from .universal_run import UniversalRun

__all__ = ["TARGET_MODES", "AttackRun", "AttackRunConfig", "Dataset", "GenerateRun", "GenerateRunConfig", "Item",
           "RunError", "RunOutputs", "UniversalRun", "evaluate_run", "model_line", "read_dataset", "run_demo",
           "summary_line"]
