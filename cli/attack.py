"""``sdo-adv attack``: attack a dataset into a resumable output folder; ``sdo-adv merge``."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .common import Depths, OptionalNumber, Rates, click_error

REQUIRED = ("classifier", "generator", "input", "out")
CLI_ONLY = ("config",)


def _read_config(path: str) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``), TOML (``.toml``) or JSON (``.json``) file of option values."""
    text = Path(path).read_text(encoding="utf-8")
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            import json

            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as err:  # tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError
        raise click.BadParameter(f"cannot parse {path}: {err}", param_hint="'--config'") from err
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of option names to values", param_hint="'--config'")
    return data


def resolve_options(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """Merge ``--config`` into the options (explicit command-line options win) and check the
    required ones; return every option's final value by parameter name."""
    by_flag = {opt.lstrip("-"): p for p in ctx.command.params if isinstance(p, click.Option) for opt in p.opts}
    if values["config"]:
        data = _read_config(values["config"])
        keys = {str(k): str(k).replace("_", "-") for k in data}
        unknown = [k for k, flag in keys.items() if flag not in by_flag or flag == "config"]
        if unknown:
            accepted = ", ".join(sorted(f for f in by_flag if f not in ("config", "help")))
            raise click.BadParameter(f"unknown key(s) {', '.join(unknown)} in {values['config']}; "
                                     f"accepted: {accepted}", param_hint="'--config'")
        for key, flag in keys.items():
            param = by_flag[flag]
            explicit = ctx.get_parameter_source(param.name) in (ParameterSource.COMMANDLINE,
                                                                ParameterSource.ENVIRONMENT)
            if not explicit:
                value = data[key]
                if isinstance(value, list):  # judges, as run.json records them
                    value = ",".join(str(v) for v in value)
                values[param.name] = param.type_cast_value(ctx, value)
    missing = [f"--{name}" for name in REQUIRED if values[name] is None]
    if missing:
        raise click.UsageError(f"missing option(s) {', '.join(missing)} "
                               "(give them on the command line or in --config)")
    if values["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise click.BadParameter("CUDA is not available on this machine", param_hint="'--device'")
    return {p.name: values[p.name] for p in ctx.command.params}


@click.command()
@click.option("--classifier", help="Classifier to attack: a spec as listed by `sdo-adv models`.  [required]")
@click.option("--generator", help="Diffusion model: sdo-adv:<name>, a diffusers folder or a hub id.  [required]")
@click.option("--input", "input", type=click.Path(exists=True),
              help="ImageFolder tree, flat folder (with --labels) or .npz with images and labels.  [required]")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output folder; re-running with the same folder resumes.  [required]")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="CSV with columns file,label and optionally prompt (each image's own prompt).")
@click.option("--targeted", help="random, least-likely, next (label + 1), or a CSV with columns file,target.")
@click.option("--estimator", "--gradient", "estimator", default="auto", show_default=True,
              help="Gradient estimator: sdo, sdo:last, sdo:random, sdo:<i>, skip, truncated:K, checkpoint, full; "
                   "or one per depth, comma-separated; auto: skip at the first of several depths, sdo at the others.")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1), help="Attack iterations.")
@click.option("--lr", default="0.05", show_default=True, type=Rates(),
              help="Adam learning rate on the latent; or the rate at each depth in turn, comma-separated "
                   "(the last one serves further depths).")
@click.option("--depth", default=(0.2, 0.25, 0.5), show_default="0.2,0.25,0.5", type=Depths(),
              help="Inversion depth, a fraction of the sampling schedule; or increasing depths, comma-separated: "
                   "images not yet fooled at one depth start again at the next.")
@click.option("--fidelity", default=40.0, show_default=True, type=click.FloatRange(0),
              help="Weight of the pixel error (--fidelity-norm) to the original in the loss.")
@click.option("--fidelity-norm", default="l1", show_default=True, type=click.Choice(["l1", "l2"]),
              help="Pixel error of the fidelity term: mean absolute (l1: fewer changed pixels, less haze) or "
                   "mean squared (l2: pair it with --fidelity 200).")
@click.option("--fidelity-halflife", default="10", show_default=True, type=OptionalNumber(),
              help="Iterations over which the fidelity weight halves; 'none' keeps it constant.")
@click.option("--loss", default="cw", show_default=True, type=click.Choice(["cw", "ce"]),
              help="Attack loss: cw margin or cross-entropy.")
@click.option("--kappa", default=0.0, show_default=True, type=click.FloatRange(0), help="Confidence margin of the cw loss.")
@click.option("--latent-bound", default="1.0", show_default=True, type=OptionalNumber(),
              help="L-inf bound on the change of the start latent (and conditioning); 'none': unbounded.")
@click.option("--optimize", default="latent", show_default=True, type=click.Choice(["latent", "cond", "both"]),
              help="Optimize the start latent, the conditioning embedding, or both.")
@click.option("--early-stop/--no-early-stop", default=True, show_default=True,
              help="Stop a sample at its first success; otherwise run every step and keep the smallest L2.")
@click.option("--sampler", default="sequential", show_default=True, type=click.Choice(["sequential", "picard"]),
              help="picard: refine the previous iteration's trajectory with batched sweeps (ddim only).")
@click.option("--sweeps", default=1, show_default=True, type=click.IntRange(1), help="Picard sweeps per iteration.")
@click.option("--tol", default="none", show_default=True, type=OptionalNumber(),
              help="Picard: stop the sweeps once the largest relative update falls below it.")
@click.option("--hold", default="output", show_default=True, type=click.Choice(["output", "clean"]),
              help="Picard: what a sweep holds fixed, the network output or the clean-image prediction.")
@click.option("--guard", default="auto", show_default=True,
              help="Classifier spec that must keep reading the true class (it joins the loss and gates success); "
                   "'none', or 'auto': the generator's recommended guard, if it names one.")
@click.option("--guard-weight", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Weight of the guard's hinge in the loss.")
@click.option("--guard-kappa", default=0.0, show_default=True, type=float,
              help="The guard's margin (true-class logit over the largest other) that its hinge asks for and "
                   "success requires.")
@click.option("--mask-dir", type=click.Path(file_okay=False),
              help="Folder of one grayscale PNG mask per input, named as the input (an .npz image: as its output "
                   "PNG), of its size: white may change, black is kept (to within 2/255).")
@click.option("--mask-mode", default="composite", show_default=True, type=click.Choice(["composite", "blend"]),
              help="Keep the unmasked region in pixel space, or also blend it into the latent at every sampling "
                   "step (sequential sampler only).")
@click.option("--num-inference-steps", type=click.IntRange(1), help="Sampling steps  [default: the generator's].")
@click.option("--guidance-scale", type=float, help="Classifier-free guidance  [default: the generator's].")
@click.option("--solver", type=click.Choice(["ddim", "dpm++"]), help="Sampling scheduler  [default: the generator's].")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16", "bfloat16"]),
              help="The generator's weights; the latent, the optimizer state and the loss stay float32.")
@click.option("--class-names",
              help="Class names for the prompts of text-to-image generators: imagenet, cifar10, cifar100, an "
                   "ImageNet subset (imagenet-22k) or a file of one name per line  [default: the classifier's, "
                   "else the generator's].")
@click.option("--prompt-template", help="Prompt of a class, {} standing for its name  [default: the generator's, "
                                        "else 'a photo of a {}'].")
@click.option("--negative-prompt", help="Prompt of the unconditional branch of classifier-free guidance.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int, help="Per-image seeds derive from it and the image.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="[default: cuda when available]")
@click.option("--trust-pickle", is_flag=True,
              help="Load checkpoints that need arbitrary unpickling (it can run code): trusted files only.")
@click.option("--judge", "--judges", "judges", default="",
              help="Comma-separated classifier specs that judge the adversarial images: never attacked, never in "
                   "the loss; summary.json reports the share of successes they all still read as the true class.")
@click.option("--bystanders", default="auto", show_default=True,
              help="Comma-separated classifier specs the change should not move: the victim's gradient loses its "
                   "components along their margin gradients. Not the classifier, never a judge. 'auto': the first "
                   "three of the generator's recommended ones that are not the classifier, the guard or a judge "
                   "(the embedded digits recommend embedded CNNs); 'none': none.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False),
              help="YAML, TOML or JSON file of option values (keys as the option or AttackRunConfig field names); "
                   "command-line options win.")
@click.pass_context
def attack(ctx: click.Context, **values: Any) -> None:
    """Attack a dataset with SDOAttack: adversarial PNGs, manifest.jsonl, summary.json, report.md,
    grid.png, run.json.

    Runs unchanged under `torchrun --nproc_per_node N` or `accelerate launch`: each process
    takes a fixed shard of the pending images; the manifests are merged at the end."""
    from sdo_adv.runs import AttackRun, AttackRunConfig, RunError, summary_line

    options = resolve_options(ctx, values)
    try:
        fields = {k: v for k, v in options.items() if k not in CLI_ONLY}
        for name in ("judges", "bystanders"):
            fields[name] = tuple(s.strip() for s in (fields[name] or "").split(",") if s.strip())
        config = AttackRunConfig(**fields)
        run = AttackRun(config, notice=lambda message: click.echo(message, err=True))
    except RunError as err:
        raise click_error(err) from err
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        s = run.execute()
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted: every finished image is in {run.out}; run the same command "
                                   "again to resume") from None
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    if s is not None:
        click.echo(summary_line(s))
        click.echo(f"wrote {run.out}: manifest.jsonl, summary.json, report.md, grid.png, run.json and the PNGs")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
def merge(out: str) -> None:
    """Merge the per-rank manifests of a sharded attack in OUT (after a crash) and rewrite its
    summary, report and grid."""
    from sdo_adv.runs import RunError, RunOutputs, summary_line

    try:
        outputs = RunOutputs.from_folder(out)
        outputs.merge()
    except RunError as err:
        raise click_error(err, {"out": "OUT"}) from err
    click.echo(summary_line(outputs.write()))
    click.echo(f"merged {out}/manifest.jsonl; wrote summary.json, report.md and grid.png")
