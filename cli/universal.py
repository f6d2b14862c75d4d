"""``sdo-adv universal``: learn per-class universal adversarial changes of a generator (resumable)."""
from __future__ import annotations

import click

from .common import OptionalNumber, click_error
from .generate import Classes


@click.command()
@click.option("--classifier", required=True, help="Classifier to fool: a spec as listed by `sdo-adv models`.")
@click.option("--generator", required=True, help="Class- or text-conditional diffusion model spec.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for offsets.safetensors and universal.json; re-running with it resumes training.")
@click.option("--classes", default="all", show_default=True, type=Classes(), help="Classes to learn changes for.")
@click.option("--train-steps", default=30, show_default=True, type=click.IntRange(1), help="Training steps in all.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1),
              help="Fresh trajectories per class and step.")
@click.option("--variable", default="both", show_default=True, type=click.Choice(["cond", "latent", "both", "lora"]),
              help="What changes: the class's conditioning embedding, the latent where the change starts, both, "
                   "or a low-rank adapter of the UNet shared by the classes (needs peft: the lora extra).")
@click.option("--depth", default=0.3, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Fraction of the schedule, at its end, that the changes act on.")
@click.option("--bound", default=0.35, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Size of the changes: conditioning offset norm / embedding norm, latent offset RMS, "
                   "adapted layer's weight change / weight.")
@click.option("--lr", type=click.FloatRange(0, min_open=True),
              help="Adam learning rate.  [default: 0.1 for the offsets, 0.03 for lora]")
@click.option("--rank", default=4, show_default=True, type=click.IntRange(1), help="The adapter's rank (lora).")
@click.option("--pool", default=16, show_default=True, type=click.IntRange(1), help="Training trajectories per class.")
@click.option("--fidelity", default=10.0, show_default=True, type=click.FloatRange(0),
              help="Weight of the squared pixel distance to the plain sample of the same trajectory.")
@click.option("--kappa", default=0.0, show_default=True, type=click.FloatRange(0), help="Margin of the cw loss.")
@click.option("--guard", default="none", show_default=True, help="Classifier spec that must keep the class, or 'none'.")
@click.option("--guidance-scale", default="2.0", show_default=True, type=OptionalNumber(),
              help="Classifier-free guidance; 'none': the generator's.")
@click.option("--estimator", "--gradient", "estimator", default="sdo", show_default=True, help="Gradient estimator.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds of the training trajectories and batches.")
@click.option("--checkpoint-every", default=10, show_default=True, type=click.IntRange(1),
              help="Save the offsets and optimizer state every this many steps.")
@click.option("--target-fooling", type=click.FloatRange(0, 1, min_open=True),
              help="After training, scale the offsets down to the smallest fraction that fools this share of "
                   "fresh calibration draws (10 per class); sampling then uses that fraction.  [default: whole offsets]")
@click.option("--judge", "--judges", "judges", default="", help="Comma-separated judges for the evaluation.")
@click.option("--eval-per-class", default=20, show_default=True, type=click.IntRange(0),
              help="Held-out seeds per class evaluated after training (0: none).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="[default: cuda when available]")
@click.option("--trust-pickle", is_flag=True, help="Load checkpoints that need arbitrary unpickling (trusted only).")
def universal(**values: object) -> None:
    """Train UniversalSDO: per-class changes of the generator such that fresh samples of the
    class fool the classifier; then `sdo-adv generate --universal OUT` samples with them (one
    sampling pass per image). Evaluates on held-out seeds and stores the figures in
    universal.json."""
    from sdo_adv.runs import RunError
    from sdo_adv.runs.universal_run import UniversalRun

    values["judges"] = tuple(s.strip() for s in str(values["judges"] or "").split(",") if s.strip())
    try:
        run = UniversalRun(notice=lambda message: click.echo(message, err=True), **values)
        figures = run.execute()
    except RunError as err:
        raise click_error(err) from err
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted: training resumes from the last checkpoint in {values['out']}; "
                                   "run the same command again") from None
    click.echo(" | ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
                          if not isinstance(v, dict)))
    click.echo(f"wrote {run.out}: offsets.safetensors, universal.json")
