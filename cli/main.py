"""``sdo-adv``: natural adversarial images from diffusion models. Heavy libraries load lazily."""
from __future__ import annotations

import click

from sdo_adv.cli.attack import attack, merge
from sdo_adv.cli.evaluate import evaluate
from sdo_adv.cli.generate import generate
from sdo_adv.cli.universal import universal


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sdo-adv")
def main() -> None:
    """Natural adversarial images from diffusion models with shortcut (SDO) gradients."""


@main.command()
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for grid.png and report.json.")
@click.option("--n", "n_images", default=16, show_default=True, type=click.IntRange(1, 200),
              help="Number of held-out digits to attack.")
@click.option("--steps", default=None, type=click.IntRange(1), help="Attack iterations (default: SDOAttack's).")
@click.option("--seed", default=0, show_default=True, type=int)
def demo(out: str, n_images: int, steps: int | None, seed: int) -> None:
    """Attack held-out digits with the embedded models, offline; write a grid and a report."""
    from sdo_adv.runs import run_demo
    from sdo_adv.runs.report import fmt

    report = run_demo(out, n=n_images, seed=seed, **({"steps": steps} if steps else {}))
    click.echo(f"success {fmt(report['success_rate'], '.0%')} of {report['n']} digits "
               f"(clean accuracy {report['clean_accuracy']:.0%}) | judges keep the class "
               f"{fmt(report['judge_agreement'], '.0%')} | mean L2 {fmt(report['mean_l2'], '.2f')} "
               f"| mean SSIM {fmt(report['mean_ssim'], '.3f')} | {report['seconds_per_image']:.2f} s/image")
    click.echo(f"wrote {out}/grid.png, {out}/report.json and {out}/adversarial.npz")


@main.command()
@click.option("--quick", is_flag=True, help="Tiny settings (about a minute), for checking the pipeline.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--out", default="bench", show_default=True, type=click.Path(file_okay=False))
def bench(quick: bool, device: str, out: str) -> None:
    """Benchmark the gradient estimators: cost, gradient fidelity, attack quality (benchmarks/run_all.py)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"
    if not script.is_file():
        raise click.ClickException(f"sdo-adv bench runs from a source checkout: {script} not found")
    cmd = [sys.executable, str(script), "--device", device, "--out", out] + (["--quick"] if quick else [])
    if subprocess.run(cmd).returncode != 0:
        raise click.ClickException("a benchmark failed (see above)")


@main.command()
def models() -> None:
    """List the embedded models and the accepted spec forms."""
    from sdo_adv.loading import CLASSIFIER_FORMS, GENERATOR_FORMS, embedded_models

    for name, entry in embedded_models().items():
        cfg = entry["config"]
        if entry["kind"] == "generator":
            click.echo(f"sdo-adv:{name}  generator  {cfg.get('resolution', '?')}x{cfg.get('resolution', '?')} "
                       f"classes {cfg.get('num_classes', '?')}  {cfg.get('summary', '')}"
                       + (f"  bystanders {', '.join(cfg['bystanders'])}" if cfg.get("bystanders") else ""))
        else:
            pc, m = cfg["pretrained_cfg"], cfg.get("metrics", {})
            figures = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())
            click.echo(f"sdo-adv:{name}  classifier  {cfg['architecture']}  input {pc['input_size']}  "
                       f"classes {pc['num_classes']}  {figures}")
    click.echo("generator specs: " + "; ".join(GENERATOR_FORMS))
    click.echo("classifier specs: " + "; ".join(CLASSIFIER_FORMS))


main.add_command(attack)
main.add_command(merge)
main.add_command(evaluate)
main.add_command(generate)
main.add_command(universal)

if __name__ == "__main__":
    main()
