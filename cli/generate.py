"""``sdo-adv generate``: adversarial images of classes sampled from noise, into a resumable folder."""
from __future__ import annotations

import click

from .common import Depths, OptionalNumber, Rates, click_error


class Classes(click.ParamType):
    """``all`` or comma-separated class indices."""

    name = "all|c[,c...]"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...] | None:
        if value is None or isinstance(value, tuple) or str(value).strip().lower() == "all":
            return value if isinstance(value, tuple) else None
        try:
            return tuple(int(c) for c in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is neither 'all' nor comma-separated class indices", param, ctx)


@click.command()
@click.option("--classifier", required=True, help="Classifier to fool: a spec as listed by `sdo-adv models`.")
@click.option("--generator", required=True, help="Class- or text-conditional diffusion model: sdo-adv:<name>, a "
                                                  "diffusers folder or a hub id.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder; re-running with the same folder resumes (a larger --per-class extends it).")
@click.option("--classes", default="all", show_default=True, type=Classes(), help="Classes to generate.")
@click.option("--per-class", default=10, show_default=True, type=click.IntRange(1), help="Samples per class.")
@click.option("--judge", "--judges", "judges", default="",
              help="Comma-separated classifier specs that judge the images: never attacked, never in the loss.")
@click.option("--estimator", "--gradient", "estimator", default="sdo", show_default=True,
              help="Gradient estimator: sdo, sdo:last, sdo:random, sdo:<i>, skip, truncated:K, checkpoint, full; "
                   "or one per depth, comma-separated; auto: skip at the first of several depths, sdo at the others.")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1), help="Optimization iterations.")
@click.option("--lr", default="0.05", show_default=True, type=Rates(),
              help="Adam learning rate on the latent; or the rate at each depth in turn, comma-separated "
                   "(the last one serves further depths).")
@click.option("--depth", default=(0.3, 0.5), show_default="0.3,0.5", type=Depths(),
              help="Fractions of the draw's trajectory to regenerate, tried in turn (1.0: the start noise).")
@click.option("--fidelity", default=200.0, show_default=True, type=click.FloatRange(0),
              help="Weight of the mean squared pixel error to the plain draw in the loss.")
@click.option("--fidelity-halflife", default="10", show_default=True, type=OptionalNumber(),
              help="Iterations over which the fidelity weight halves; 'none' keeps it constant.")
@click.option("--latent-bound", default="1.0", show_default=True, type=OptionalNumber(),
              help="L-inf bound on the change of the latent; 'none': unbounded.")
@click.option("--shell/--no-shell", default=True, show_default=True,
              help="Keep the norm of the start noise when it is optimized (depth 1.0).")
@click.option("--guidance-scale", default="2.0", show_default=True, type=OptionalNumber(),
              help="Classifier-free guidance toward the class; 'none': the generator's.")
@click.option("--guard", default="auto", show_default=True,
              help="Classifier spec that must keep reading the class (in the loss, gates success); 'none', or "
                   "'auto': the generator's recommended guard, if it names one.")
@click.option("--num-inference-steps", type=click.IntRange(1), help="Sampling steps  [default: the generator's].")
@click.option("--solver", type=click.Choice(["ddim", "dpm++"]), help="Sampling scheduler  [default: the generator's].")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16", "bfloat16"]))
@click.option("--class-names", help="Class names for text-to-image prompts: imagenet, cifar10, cifar100, or a file.")
@click.option("--prompt-template", help="Prompt of a class, {} standing for its name.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int,
              help="Each sample's noise derives from it, its class and its index.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="[default: cuda when available]")
@click.option("--trust-pickle", is_flag=True, help="Load checkpoints that need arbitrary unpickling (trusted only).")
@click.option("--universal", type=click.Path(exists=True, file_okay=False),
              help="Folder of changes learned by `sdo-adv universal`: sample with them (one sampling pass per "
                   "image, no per-image optimization; the attack options are then unused).")
def generate(**values: object) -> None:
    """Generate adversarial images of classes from noise with SDOGenerate: PNGs named
    <class>_<index>.png with their plain draws in draws/, manifest.jsonl, summary.json,
    report.md, grid.png, run.json.

    Runs unchanged under `torchrun --nproc_per_node N` or `accelerate launch`: each process
    takes a fixed shard of the pending samples."""
    from sdo_adv.runs import RunError, summary_line
    from sdo_adv.runs.generate_run import GenerateRun, GenerateRunConfig

    values["judges"] = tuple(s.strip() for s in str(values["judges"] or "").split(",") if s.strip())
    try:
        run = GenerateRun(GenerateRunConfig(**values), notice=lambda message: click.echo(message, err=True))
        s = run.execute()
    except RunError as err:
        raise click_error(err) from err
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted: every finished sample is in {values['out']}; run the same "
                                   "command again to resume") from None
    if s is not None:
        click.echo(summary_line(s))
        click.echo(f"wrote {run.out}: manifest.jsonl, summary.json, report.md, grid.png, run.json, the PNGs and draws/")
