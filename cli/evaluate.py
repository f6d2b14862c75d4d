"""``sdo-adv evaluate``: transfer of an attack folder's adversarial images to other classifiers."""
from __future__ import annotations

import click

from .common import click_error

# evaluate_run's parameters and this command's flags
FLAGS = {"adv_dir": "--adv", "specs": "--models", "judges": "--judges", "robustbench_dir": "--robustbench-dir",
         "out": "--out"}


@click.command()
@click.option("--adv", "adv_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Output folder of `sdo-adv attack`.")
@click.option("--models", default="", help="Comma-separated classifier specs (see `sdo-adv models`).")
@click.option("--judges", default="",
              help="Comma-separated classifier specs that judge whether the successes keep their class.")
@click.option("--robustbench-dir", default="./models", show_default=True, type=click.Path(file_okay=False),
              help="Where robustbench checkpoints are looked up.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder  [default: the --adv folder].")
@click.option("--trust-pickle", is_flag=True,
              help="Load checkpoints that need arbitrary unpickling (it can run code): trusted files only.")
def evaluate(adv_dir: str, models: str, judges: str, robustbench_dir: str, out: str | None,
             trust_pickle: bool) -> None:
    """Clean and adversarial accuracy, transfer success and fidelity: evaluation.json/.md/.png."""
    from sdo_adv.runs import RunError, evaluate_run, model_line
    from sdo_adv.runs.report import fmt

    specs = [s.strip() for s in models.split(",") if s.strip()]
    judge_specs = [s.strip() for s in judges.split(",") if s.strip()]
    if not specs and not judge_specs:
        raise click.BadParameter("give at least one classifier spec (--models or --judges)", param_hint="'--models'")
    try:
        result = evaluate_run(adv_dir, specs, robustbench_dir, out, notice=lambda m: click.echo(m, err=True),
                              trust_pickle=trust_pickle, judges=judge_specs)
    except RunError as err:
        raise click_error(err, FLAGS, folder=adv_dir) from err
    for record in result["models"]:
        click.echo(model_line(record))
    if judge_specs:
        click.echo(f"judges keep the true label on {fmt(result['judge_agreement'], '.2f')}% of the attack's "
                   "successes")
    click.echo(f"wrote evaluation.json, evaluation.md and evaluation.png to {out or adv_dir}")
