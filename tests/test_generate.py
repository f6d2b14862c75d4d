"""SDOGenerate and `sdo-adv generate` on tiny random-weight models, offline."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sdo_adv import DiffusionGenerator
from sdo_adv.attacks import SDOGenerate
from sdo_adv.cli.main import main
from sdo_adv.distributed import Process
from sdo_adv.frechet import frechet_distance, penultimate_features
from sdo_adv.runs.generate_run import GenerateRun, GenerateRunConfig
from test_cli import NET
from tiny import NUM_CLASSES, NoSampling, TinyClassifier, ddpm_scheduler, save_tiny_ddpm, tiny_models, tiny_unet

models = pytest.fixture(name="models")(tiny_models)
TINY = {"depth": 0.5, "lr": 0.1, "fidelity": 50.0, "fidelity_halflife": None, "steps": 4}


def test_samples_are_fixed_by_their_seeds_and_come_from_the_recorded_latent(models):
    model, gen = models
    labels, seeds = torch.tensor([0, 1, 2, 3, 0, 1]), [11, 12, 13, 14, 15, 16]
    attack = SDOGenerate(model, gen, **TINY)
    adv = attack.generate(labels, seeds)
    r, draws = attack.last_result, attack.last_draws
    assert adv.shape == (6, 1, 8, 8) and 0 <= adv.min() and adv.max() <= 1
    halves = torch.cat([attack.generate(labels[:3], seeds[:3]), attack.generate(labels[3:], seeds[3:])])
    assert torch.allclose(halves, adv, atol=1e-5)  # a sample does not depend on its batch
    again = gen.sample(attack.noise(seeds), cond=attack.generator.condition(labels), estimator="skip")
    assert torch.allclose(again, draws, atol=1e-6)  # the draw is the plain sample of the seed
    cond = attack.generator.condition(labels)
    replay = attack.generator.sample(r.latent, cond=cond, estimator="skip", start=r.start)
    assert torch.allclose(replay, adv, atol=1e-5)  # the recorded latent and start give the image back
    assert r.success.any() and not torch.equal(adv[r.success], draws[r.success])


def test_success_counts_only_draws_the_victim_reads_as_their_class(models):
    _, gen = models
    torch.manual_seed(3)
    from sdo_adv import load_classifier

    victim = load_classifier(TinyClassifier(), input_size=(1, 8, 8))
    labels = torch.arange(12) % NUM_CLASSES
    attack = SDOGenerate(victim, gen, **TINY)
    attack.generate(labels, seeds=0)
    r = attack.last_result
    misread = r.clean_pred != labels
    assert misread.any() and (~misread).any()  # else this would test nothing
    assert not r.success[misread].any()
    with torch.no_grad():
        assert torch.equal(r.clean_pred, victim(attack.last_draws).argmax(1))


def test_the_shell_keeps_the_norm_of_the_optimized_noise(models):
    model, gen = models
    seeds = [1, 2, 3, 4]
    attack = SDOGenerate(model, gen, **{**TINY, "depth": 1.0, "latent_bound": None})
    attack.generate(torch.tensor([0, 1, 2, 3]), seeds)
    r, noise = attack.last_result, attack.noise(seeds)
    assert (r.start == 0 if isinstance(r.start, int) else (r.start == 0).all())
    moved = (r.latent - noise).flatten(1).norm(dim=1) > 1e-3
    assert moved.any()
    assert torch.allclose(r.latent.flatten(1).norm(dim=1), noise.flatten(1).norm(dim=1), rtol=1e-5)
    free = SDOGenerate(model, gen, **{**TINY, "depth": 1.0, "latent_bound": None, "shell": False})
    free.generate(torch.tensor([0, 1, 2, 3]), seeds)
    drift = (free.last_result.latent.flatten(1).norm(dim=1) - noise.flatten(1).norm(dim=1)).abs()
    assert drift.max() > 1e-3  # without the shell the norm moves


def test_guidance_is_set_on_a_copy_of_the_generator(models):
    model, gen = models
    attack = SDOGenerate(model, gen, guidance_scale=3.0)
    assert attack.generator.guidance_scale == 3.0 and gen.guidance_scale == 2.0
    assert attack.generator.unet is gen.unet
    assert SDOGenerate(model, gen, guidance_scale=None).generator is gen


@pytest.mark.parametrize("labels,seeds,match", [
    (torch.tensor([0, NUM_CLASSES]), 0, "class indices"),
    (torch.tensor([[0, 1]]), 0, "1-D"),
    (torch.tensor([0, 1]), [1, 2, 3], "3 seeds for 2 labels"),
])
def test_bad_labels_and_seeds_fail_before_sampling(models, labels, seeds, match):
    model, gen = models
    attack = SDOGenerate(model, gen, **TINY)
    NoSampling(gen)
    with pytest.raises(ValueError, match=match):
        attack.generate(labels, seeds)


def test_labels_beyond_the_classifier_fail_before_sampling(models):
    from sdo_adv import load_classifier

    _, gen = models
    small = load_classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), input_size=(1, 8, 8),
                            num_classes=3)
    attack = SDOGenerate(small, gen, **TINY)
    NoSampling(gen)
    with pytest.raises(ValueError, match="the classifier has 3 classes"):
        attack.generate(torch.tensor([0, 3]), np.int64(5))


def test_generation_needs_a_conditional_generator_and_generate(models):
    model, gen = models
    unconditional = DiffusionGenerator.from_diffusers(tiny_unet(num_class_embeds=None), ddpm_scheduler(),
                                                      num_inference_steps=4)
    with pytest.raises(ValueError, match="class- or text-conditional"):
        SDOGenerate(model, unconditional)
    with pytest.raises(TypeError, match="generate"):
        SDOGenerate(model, gen)(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))


def test_frechet_distance_against_an_exact_gaussian_case():
    a = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = a * 2 + 1  # means m and 2m + 1, covariances S and 4S: FD = |m + 1|^2 + tr(S + 4S - 2 * 2S)
    s, m = torch.cov(a.T), a.mean(0)
    assert frechet_distance(a, b) == pytest.approx(float((m + 1).pow(2).sum() + torch.trace(s)), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    model, _ = tiny_models()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    x = torch.rand(5, 1, 8, 8)
    feats = penultimate_features(model, x)
    with torch.no_grad():
        assert feats.shape == (5, last.in_features) and torch.allclose(last(feats.float()), model(x), atol=1e-5)


# ---- the command line ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_assets")
    save_tiny_ddpm(root, steps=3)
    (root / "net.py").write_text(NET)
    return root


def generate_args(assets, out, *extra):
    return ["generate", "--classifier", f"{assets / 'net.py'}:create_model", "--generator", str(assets / "ddpm"),
            "--out", str(out), "--steps", "3", "--lr", "0.1", "--depth", "0.5", "--device", "cpu", *extra]


def rows(out):
    return [json.loads(line) for line in (Path(out) / "manifest.jsonl").read_text().splitlines()]


def test_generate_cli_writes_a_resumable_folder(assets, tmp_path):
    out, judge = tmp_path / "gen", f"{assets / 'net.py'}:create_other"
    res = CliRunner().invoke(main, generate_args(assets, out, "--classes", "0,2", "--per-class", "2", "--judge", judge))
    assert res.exit_code == 0, res.output
    first = rows(out)
    assert [r["source"] for r in first] == ["0/0", "0/1", "2/0", "2/1"]
    for r in first:
        assert (out / r["file"]).is_file() and (out / r["draw"]).is_file() and r["file"] == f"{r['label']}_{r['source'][-1].zfill(4)}.png"
        assert set(r["judge_preds"]) == {judge}
    summary = json.loads((out / "summary.json").read_text())
    assert {"clean_accuracy", "success_rate", "judge_agreement"} <= set(summary) and summary["n"] == 4
    assert summary["clean_accuracy"] == sum(r["pred_before"] == r["label"] for r in first) / 4
    assert (out / "grid.png").is_file() and "sdo-adv generate" in (out / "report.md").read_text()
    pngs = {r["file"]: (out / r["file"]).read_bytes() for r in first}
    res = CliRunner().invoke(main, generate_args(assets, out, "--classes", "0,2", "--per-class", "3", "--judge", judge))
    assert res.exit_code == 0 and "resuming: 4 of 6" in res.output
    assert [r["source"] for r in rows(out)][:4] == [r["source"] for r in first] and len(rows(out)) == 6
    assert all((out / f).read_bytes() == b for f, b in pngs.items())  # finished samples are kept
    res = CliRunner().invoke(main, generate_args(assets, out, "--classes", "0,2", "--per-class", "3", "--steps", "5"))
    assert res.exit_code == 2 and "other settings" in res.output and "steps: 3 -> 5" in res.output
    assert f"resume with the options it was run with (--judge {judge} --steps 3)" in " ".join(res.output.split())
    moved = tmp_path / "moved"
    out.rename(moved)  # a run folder resumes where it lies
    res = CliRunner().invoke(main, generate_args(assets, moved, "--classes", "0,2", "--per-class", "3", "--judge", judge))
    assert res.exit_code == 0 and "resuming: 6 of 6" in res.output, res.output
    res = CliRunner().invoke(main, ["merge", str(moved)])
    assert res.exit_code != 0 and "is an `sdo-adv generate` folder: re-run" in res.output, res.output
    res = CliRunner().invoke(main, ["evaluate", "--adv", str(moved), "--models", judge])
    assert res.exit_code != 0 and "evaluate reads `sdo-adv attack` folders" in res.output, res.output


def test_generate_with_random_steps_does_not_depend_on_batching(assets, tmp_path):
    images = []
    for out, batch in ((tmp_path / "a", "1"), (tmp_path / "b", "3")):
        res = CliRunner().invoke(main, generate_args(assets, out, "--classes", "0,2", "--per-class", "2",
                                                     "--estimator", "sdo:random", "--steps", "6", "--batch-size", batch))
        assert res.exit_code == 0, res.output
        images.append({r["file"]: (out / r["file"]).read_bytes() for r in rows(out)})
    assert images[0] == images[1] and len(images[0]) == 4


@pytest.mark.parametrize("extra,message", [
    (("--classes", "0,9"), "not among the classifier's 4 classes"),
    (("--classes", "zero"), "neither 'all' nor"),
    (("--estimator", "sdo:99"), "outside"),
    (("--fidelity-halflife", "-3"), "fidelity_halflife must be > 0 or None"),
    (("--latent-bound", "0"), "latent_bound must be > 0 or None"),
    (("--lr", "0.05,-1"), "lr must be a number > 0"),
])
def test_generate_cli_bad_input_is_a_clear_error_before_any_sampling(assets, tmp_path, extra, message):
    res = CliRunner().invoke(main, generate_args(assets, tmp_path / "bad", *extra))
    assert res.exit_code != 0 and message in res.output
    assert not (tmp_path / "bad" / "manifest.jsonl").exists()


def test_sharded_ranks_take_disjoint_samples_and_rank_zero_merges(assets, tmp_path):
    config = GenerateRunConfig(f"{assets / 'net.py'}:create_model", str(assets / "ddpm"), str(tmp_path / "s"),
                               classes=(1,), per_class=4, steps=2, depth=(0.5,), device="cpu")
    rank0 = GenerateRun(config, notice=lambda m: None, process=Process(0, 2))  # both ranks read the folder first
    GenerateRun(config, notice=lambda m: None, process=Process(1, 2)).execute(progress=False)
    part = [json.loads(line) for line in (tmp_path / "s" / "manifest.rank1.jsonl").read_text().splitlines()]
    assert [r["source"] for r in part] == ["1/1", "1/3"]
    summary = rank0.execute(progress=False)
    assert summary["n"] == 4 and sorted(r["source"] for r in rows(tmp_path / "s")) == ["1/0", "1/1", "1/2", "1/3"]
    assert not list((tmp_path / "s").glob("manifest.rank*.jsonl"))


def test_the_class_embedding_can_be_optimized_with_the_latent(models):
    model, gen = models
    attack = SDOGenerate(model, gen, **{**TINY, "optimize": "both"})
    labels = torch.tensor([0, 1, 2, 3])
    adv = attack.generate(labels, seeds=[11, 12, 13, 14])
    r = attack.last_result
    assert r.cond_embeds is not None and r.success.any()
    plain = attack.generator.condition(labels).embeds
    assert not torch.allclose(r.cond_embeds[r.success], plain[r.success])
    replay = attack.generator.sample(r.latent, cond=attack.generator.condition(labels).replace(r.cond_embeds),
                                     estimator="skip", start=r.start)
    assert torch.allclose(replay, adv, atol=1e-5)
