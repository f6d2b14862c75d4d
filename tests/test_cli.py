"""`sdo-adv attack` and `sdo-adv evaluate` on tiny random-weight models and 8x8 inputs, offline."""
import dataclasses
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sdo_adv import DiffusionGenerator, ImageClassifier
from sdo_adv.runs import AttackRun, AttackRunConfig, RunError, attack_run
from sdo_adv.cli.main import main
from tiny import FORMER_FIDELITY, NUM_CLASSES, ddpm_scheduler, tiny_unet

NET = '''
import torch
from torch import nn
from sdo_adv import ImageClassifier


def _build(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))
    return ImageClassifier(net, (1, 8, 8), (0.5,), (0.5,), 4)


def create_model():
    return _build(0)


def create_other():
    return _build(1)
'''
MANIFEST_FIELDS = {"source", "file", "label", "prompt", "target", "pred_before", "pred_after", "success", "judge_preds",
                   "natural", "l2", "linf",
                   "ssim", "psnr", "iterations", "reconstruction_error", "seconds", "failure"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny class-conditional DDPM folder (3 sampling steps), a classifier factory file and an
    ImageFolder of 8 grayscale 8x8 PNGs, two per class, each drawn so that the classifier reads
    its folder's class (so that a success means the attack changed the prediction)."""
    root = tmp_path_factory.mktemp("assets")
    from diffusers import DDPMPipeline

    torch.manual_seed(0)
    DDPMPipeline(unet=tiny_unet(), scheduler=ddpm_scheduler()).save_pretrained(root / "ddpm")
    (root / "ddpm" / "sdo_adv.json").write_text(json.dumps({"num_inference_steps": 3}))
    (root / "net.py").write_text(NET)
    from sdo_adv import load_classifier

    model, rng = load_classifier(f"{root / 'net.py'}:create_model"), np.random.default_rng(0)
    for i in range(8):
        folder = root / "digits" / str(i % NUM_CLASSES)
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            with torch.no_grad():
                if int(model(torch.from_numpy(pixels).float().div(255)[None, None]).argmax()) == i % NUM_CLASSES:
                    break
        Image.fromarray(pixels).save(folder / f"img {i}.png")
    return root


# the squared pixel error, weight 200 (the default before the mean absolute one): it lets these tiny
# random models be fooled within one or two steps, which the tests below rely on
FORMER_FIDELITY_OPTIONS = ("--fidelity-norm", FORMER_FIDELITY["fidelity_norm"], "--fidelity", str(FORMER_FIDELITY["fidelity"]))


def attack_args(assets, out, *extra, input=None):
    return ["attack", "--classifier", f"{assets / 'net.py'}:create_model", "--generator", str(assets / "ddpm"),
            "--input", str(input or assets / "digits"), "--out", str(out), "--steps", "1", "--seed", "0",
            "--device", "cpu", *FORMER_FIDELITY_OPTIONS, *extra]


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def manifest(out):
    return [json.loads(line) for line in (Path(out) / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def attacked(assets, tmp_path_factory):
    """One finished attack run over the ImageFolder, batches of 3."""
    out = tmp_path_factory.mktemp("run") / "out"
    result = invoke(*attack_args(assets, out, "--batch-size", "3", "--num-inference-steps", "2", "--steps", "2"))
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture()
def no_compute(monkeypatch):
    """Make any classifier forward or generator inversion fail, to prove checks come first."""
    def fail(*_, **__):
        raise AssertionError("model compute happened before the input was checked")

    monkeypatch.setattr(ImageClassifier, "forward", fail)
    monkeypatch.setattr(DiffusionGenerator, "invert", fail)


def test_outputs_and_manifest(assets, attacked):
    out, result = attacked
    rows = manifest(out)
    assert [r["source"] for r in rows] == [f"{c}/img {i}.png" for c in range(4) for i in (c, c + 4)]
    assert all(set(r) == MANIFEST_FIELDS for r in rows)
    assert {r["file"] for r in rows} == {f"{c}__img_{i}.png" for c in range(4) for i in (c, c + 4)}
    assert all(r["label"] == int(r["source"][0]) and r["target"] is None for r in rows)
    # every image starts correctly classified, so each success is a prediction the attack changed
    assert all(r["pred_before"] == r["label"] for r in rows)
    assert sum(r["success"] for r in rows) >= 4, [(r["pred_after"], r["label"]) for r in rows]
    for name in ("report.md", "grid.png", "run.json"):
        assert (out / name).is_file()
    report = (out / "report.md").read_text()
    assert "| 8 |" in report and "success rate" in report and "## Skipped files (0)" in report
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["steps"] == 2 and run["config"]["num_inference_steps"] == 2
    assert run["config"]["lr"] == 0.05 and run["config"]["guidance_scale"] == 1.0 and run["config"]["depth"] == [0.2, 0.25, 0.5]
    assert (run["config"]["fidelity"], run["config"]["fidelity_norm"]) == (200.0, "l2")  # FORMER_FIDELITY
    assert run["config"]["fidelity_halflife"] == 10.0
    assert set(run["config"]) == {f.name for f in dataclasses.fields(AttackRunConfig)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 8 and summary["success_rate"] == sum(r["success"] for r in rows) / 8
    assert set(run["versions"]) == {"python", "torch", "diffusers", "timm", "torchattacks", "robustbench", "sdo-adv"}
    assert "success" in result.output and "of 8 images" in result.output

    # predictions, success and fidelity are those of the PNG as saved
    from sdo_adv import load_classifier

    model = load_classifier(f"{assets / 'net.py'}:create_model")
    for r in rows:
        adv = torch.from_numpy(np.asarray(Image.open(out / r["file"]))).float().div(255)[None, None]
        orig = torch.from_numpy(np.asarray(Image.open(assets / "digits" / r["source"]))).float().div(255)[None, None]
        with torch.no_grad():
            pred = int(model(adv).argmax(1))
        assert pred == r["pred_after"] and r["success"] == (pred != r["label"])
        assert r["l2"] == pytest.approx(float((adv - orig).norm()), abs=1e-5)


def test_resume_after_interruption(assets, tmp_path, monkeypatch):
    out = tmp_path / "out"
    save, calls = attack_run.save_png, []

    def failing_save(image, path):
        calls.append(path)
        if len(calls) == 4:
            raise RuntimeError("killed")
        save(image, path)

    monkeypatch.setattr(attack_run, "save_png", failing_save)
    result = invoke(*attack_args(assets, out, "--batch-size", "3"))
    assert isinstance(result.exception, RuntimeError)
    assert len(manifest(out)) == 3
    with (out / "manifest.jsonl").open("a") as f:
        f.write('{"source": "3/img 7.png", "file": "3__im')  # torn last line
    monkeypatch.setattr(attack_run, "save_png", save)
    result = invoke(*attack_args(assets, out, "--batch-size", "2"))
    assert result.exit_code == 0, result.output
    assert "resuming: 3 of 8" in result.output
    sources = [r["source"] for r in manifest(out)]
    assert len(sources) == 8 and len(set(sources)) == 8
    assert len(list(out.glob("*__img_*.png"))) == 8 and not list(out.glob(".*.tmp"))
    assert "| 8 |" in (out / "report.md").read_text()


def test_settings_change_refuses_resume_and_names_the_options_that_resume(assets, attacked, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(attacked[0], out)
    result = invoke(*attack_args(assets, out, "--lr", "0.5"))
    assert result.exit_code != 0 and "other settings" in result.output and "lr: 0.05 -> 0.5" in result.output
    changed = ("--steps", "2", "--lr", "0.03,0.1", "--fidelity-halflife", "none", "--no-early-stop", "--depth", "0.5")
    result = invoke(*attack_args(assets, out, *changed))
    assert result.exit_code != 0 and "lr: 0.05 -> [0.03, 0.1]" in result.output
    remedy = re.search(r"resume with the options it was run with \((.*?)\)", " ".join(result.output.split()))
    assert remedy, result.output
    options = shlex.split(remedy.group(1))
    assert options == ["--lr", "0.05", "--depth", "0.2,0.25,0.5", "--fidelity-halflife", "10.0", "--early-stop"]
    result = invoke(*attack_args(assets, out, *changed, *options))
    assert result.exit_code == 0 and "resuming: 8 of 8" in result.output, result.output


def test_a_refused_resume_names_the_recorded_arguments_to_python_callers(assets, attacked):
    config = json.loads((attacked[0] / "run.json").read_text())["config"]
    with pytest.raises(RunError, match=re.escape("fidelity: 200.0 -> 40.0; fidelity_norm: 'l2' -> 'l1'); resume with "
                                                 "the settings it was run with (fidelity=200.0, fidelity_norm='l2')")):
        AttackRun(AttackRunConfig(**{**config, "fidelity": 40.0, "fidelity_norm": "l1"}))


def test_resume_takes_the_settings_the_run_left_to_the_generator(assets, attacked, tmp_path):
    """A resume that leaves the sampling steps to the generator uses the run's, not the generator's default."""
    out = tmp_path / "out"
    shutil.copytree(attacked[0], out)
    rows = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(rows[:2]) + "\n")  # a run killed after two images
    result = invoke(*attack_args(assets, out, "--batch-size", "3", "--steps", "2"))
    assert result.exit_code == 0, result.output
    assert "resuming with the run's num_inference_steps 2" in result.output and "resuming: 2 of 8" in result.output
    assert json.loads((out / "run.json").read_text())["config"]["num_inference_steps"] == 2
    result = invoke(*attack_args(assets, out, "--batch-size", "3", "--steps", "2", "--num-inference-steps", "3"))
    assert result.exit_code != 0 and "num_inference_steps: 2 -> 3" in result.output


def test_an_input_added_to_a_run_never_overwrites_a_finished_result(assets, tmp_path):
    """0/img 0.jpg would take 0/img 0.png's name (it sorts first); the finished name stays."""
    data, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(assets / "digits", data)
    assert invoke(*attack_args(assets, out, input=data)).exit_code == 0
    finished = {r["source"]: r["file"] for r in manifest(out)}
    written = {f: (out / f).read_bytes() for f in finished.values()}
    Image.open(data / "0" / "img 0.png").save(data / "0" / "img 0.jpg", quality=100)
    result = invoke(*attack_args(assets, out, input=data))
    assert result.exit_code == 0 and "resuming: 8 of 9" in result.output, result.output
    rows = {r["source"]: r["file"] for r in manifest(out)}
    assert {s: rows[s] for s in finished} == finished and all((out / f).read_bytes() == b for f, b in written.items())
    assert rows["0/img 0.jpg"] not in written and (out / rows["0/img 0.jpg"]).is_file()


def test_resume_compares_the_rates_each_depth_runs_at(assets, attacked, no_compute, tmp_path):
    """A rate beyond the number of depths is unused, so it changes nothing; one for all three depths does."""
    out = tmp_path / "out"
    shutil.copytree(attacked[0], out)
    same = ("--batch-size", "3", "--num-inference-steps", "2", "--steps", "2")
    result = invoke(*attack_args(assets, out, *same, "--lr", "0.05,0.03"))
    assert result.exit_code != 0 and "lr: 0.05 -> [0.05, 0.03]" in result.output
    result = invoke(*attack_args(assets, out, *same, "--lr", "0.05,0.05,0.05,0.9"))
    assert result.exit_code == 0 and "resuming: 8 of 8" in result.output, result.output


def test_random_targets_do_not_depend_on_batching(assets, tmp_path):
    """Also with sdo:random, which runs one image at a time for the same reason."""
    targets = []
    for bs, gradient in (("1", "sdo"), ("4", "sdo:random")):
        result = invoke(*attack_args(assets, tmp_path / bs, "--targeted", "random", "--batch-size", bs,
                                     "--num-inference-steps", "1", "--gradient", gradient))
        assert result.exit_code == 0, result.output
        rows = manifest(tmp_path / bs)
        assert all(r["target"] != r["label"] and r["success"] == (r["pred_after"] == r["target"]) for r in rows)
        targets.append({r["source"]: r["target"] for r in rows})
    assert targets[0] == targets[1]
    assert "attacking one image at a time" in result.output
    assert json.loads((tmp_path / "4" / "run.json").read_text())["config"]["batch_size"] == 1


def test_targets_csv_next_and_npz_input(assets, tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "set.npz", images=rng.integers(0, 256, (3, 3, 16, 16), dtype=np.uint8),
             labels=np.array([0, 1, 3]))
    (tmp_path / "targets.csv").write_text("file,target\nset.npz#0,2\nset.npz#1,2\nset.npz#2,0\n")
    result = invoke(*attack_args(assets, tmp_path / "csv", "--targeted", str(tmp_path / "targets.csv"),
                                 input=tmp_path / "set.npz"))
    assert result.exit_code == 0, result.output
    assert "the data is RGB and the generator grayscale: the attack converts explicitly" in result.output
    assert "3 of 3 images are not the generator's 8x8" in result.output
    rows = manifest(tmp_path / "csv")
    assert [r["target"] for r in rows] == [2, 2, 0]
    assert [r["file"] for r in rows] == ["set_0.png", "set_1.png", "set_2.png"]
    assert Image.open(tmp_path / "csv" / "set_0.png").size == (8, 8)
    assert Image.open(tmp_path / "csv" / "set_0.png").mode == "RGB"

    result = invoke(*attack_args(assets, tmp_path / "next", "--targeted", "next", input=tmp_path / "set.npz"))
    assert result.exit_code == 0, result.output
    assert [r["target"] for r in manifest(tmp_path / "next")] == [1, 2, 0]


def test_flat_folder_with_labels_and_corrupt_files(assets, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).save(flat / name)
    (flat / "broken.png").write_bytes(b"not an image")
    (flat / "cut.png").write_bytes((flat / "a.png").read_bytes()[:40])
    (tmp_path / "labels.csv").write_text("file,label\na.png,1\nbroken.png,2\nb.png,0\ncut.png,3\nabsent.png,1\n")
    result = invoke(*attack_args(assets, tmp_path / "out", "--labels", str(tmp_path / "labels.csv"), input=flat))
    assert result.exit_code == 0, result.output
    assert "skipped 3 unreadable file(s): broken.png, cut.png, absent.png" in result.output
    assert [(r["source"], r["label"]) for r in manifest(tmp_path / "out")] == [("a.png", 1), ("b.png", 0)]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Skipped files (3)" in report and "`absent.png`: file not found" in report
    assert "`broken.png`: unreadable" in report and "`cut.png`: unreadable" in report


def bad_inputs(assets, tmp):
    """(extra args, input, expected message) for inputs that must fail before any compute."""
    flat = tmp / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(flat / "a.png")
    (tmp / "no_label_col.csv").write_text("file,class\na.png,1\n")
    (tmp / "word.csv").write_text("file,label\na.png,cat\n")
    (tmp / "big.csv").write_text("file,label\na.png,7\n")
    (tmp / "targets.csv").write_text("file,target\n0/img 0.png,1\n")
    return [
        (["--labels", str(tmp / "absent.csv")], flat, "does not exist"),
        (["--labels", str(tmp / "no_label_col.csv")], flat, "expected columns file,label, found file,class"),
        (["--labels", str(tmp / "word.csv")], flat, "label 'cat' of 'a.png' is not a class index"),
        (["--labels", str(tmp / "big.csv")], flat, "label 7 of a.png is outside the classifier's 4 classes"),
        ([], flat, "has no class subfolders"),
        (["--classifier", "keras:resnet"], None, "unknown classifier spec 'keras:resnet'; accepted forms"),
        (["--generator", "no/such/thing"], None, "no such folder: no/such/thing"),
        (["--generator", "sdo-adv:nope"], None, "unknown embedded generator 'nope'"),
        (["--gradient", "sdo:99"], None, "index 99 is outside the 1 sampled steps"),
        (["--gradient", "bptt"], None, "unknown gradient estimator"),
        (["--lr", "0.02,inf"], None, "lr must be a number > 0 or a sequence of them (one per depth), got (0.02, inf)"),
        (["--lr", "0.02,-1"], None, "lr must be a number > 0 or a sequence of them (one per depth), got (0.02, -1.0)"),
        (["--targeted", "sideways"], None, "neither random, least-likely, next nor an existing CSV"),
        (["--targeted", str(tmp / "targets.csv")], None, "the targets CSV has no row for 7 item(s)"),
    ]


def test_bad_inputs_fail_before_compute(assets, tmp_path, no_compute):
    for i, (extra, input, message) in enumerate(bad_inputs(assets, tmp_path)):
        out = tmp_path / f"out{i}"
        result = invoke(*attack_args(assets, out, *extra, input=input))
        assert result.exit_code == 2, (message, result.output, result.exception)
        assert message in " ".join(result.output.split()), (message, result.output)
        assert not (out / "manifest.jsonl").exists()


def test_bystanders_reach_the_attack_and_the_run_record(assets, tmp_path):
    """`--bystanders`: loaded and handed to SDOAttack (its images differ from a run without),
    recorded in run.json; the attacked classifier or a judge as a bystander is refused."""
    other = f"{assets / 'net.py'}:create_other"
    res = invoke(*attack_args(assets, tmp_path / "a", "--bystanders", other, "--no-early-stop"))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "a" / "run.json").read_text())["config"]["bystanders"] == [other]
    assert invoke(*attack_args(assets, tmp_path / "b", "--no-early-stop")).exit_code == 0
    changed = [r["file"] for r in manifest(tmp_path / "a")
               if not (tmp_path / "a" / r["file"]).read_bytes() == (tmp_path / "b" / r["file"]).read_bytes()]
    assert changed
    res = invoke(*attack_args(assets, tmp_path / "b", "--no-early-stop", "--bystanders", other))
    assert res.exit_code == 2 and "bystanders: [] -> " in res.output and "(--bystanders '')" in res.output, res.output
    for bad in (f"{assets / 'net.py'}:create_model", other):
        res = invoke(*attack_args(assets, tmp_path / "c", "--bystanders", bad, "--judge", other))
        assert res.exit_code == 2 and "cannot be a bystander" in res.output, res.output


def test_auto_bystanders_are_the_generators_recommended_ones_but_never_the_classifier_or_a_judge(assets, tmp_path):
    """By default a run takes the generator's recommended bystanders (sdo_adv.json), leaving out
    the attacked classifier and the judges, and records the specs; a resume takes the recorded
    ones, and a run folder of an earlier version (no bystanders recorded) resumes with none; a
    resume with another judge is refused as such; a bystander cannot judge the run later."""
    import shutil

    victim, other = (f"{assets / 'net.py'}:{name}" for name in ("create_model", "create_other"))
    generator = tmp_path / "ddpm"
    shutil.copytree(assets / "ddpm", generator)
    (generator / "sdo_adv.json").write_text(json.dumps({"num_inference_steps": 3, "bystanders": [victim, other]}))
    args = lambda out, *extra: [a if a != str(assets / "ddpm") else str(generator)  # noqa: E731
                                for a in attack_args(assets, out, *extra)]
    recorded = lambda out: json.loads((out / "run.json").read_text())["config"]["bystanders"]  # noqa: E731
    for out, extra, expected in ((tmp_path / "a", (), [other]), (tmp_path / "b", ("--judge", other), []),
                                 (tmp_path / "c", ("--bystanders", "none"), [])):
        res = invoke(*args(out, *extra))
        assert res.exit_code == 0 and recorded(out) == expected, res.output
    (generator / "sdo_adv.json").write_text(json.dumps({"num_inference_steps": 3, "bystanders": []}))
    res = invoke(*args(tmp_path / "a"))  # under auto, the recorded ones, not the generator's new advice
    assert res.exit_code == 0 and f"bystanders ['{other}']" in res.output and recorded(tmp_path / "a") == [other]
    res = invoke(*args(tmp_path / "a", "--judge", other))  # the recorded bystander: refused as a new judge
    assert res.exit_code == 2 and f"judges: [] -> ['{other}']" in res.output, res.output
    res = invoke("evaluate", "--adv", str(tmp_path / "a"), "--judges", other, "--out", str(tmp_path / "eval"))
    assert res.exit_code == 2 and "was the run's guard or a bystander" in res.output, res.output
    res = invoke(*args(tmp_path / "a", "--bystanders", "none"))
    assert res.exit_code == 2 and f"bystanders: ['{other}'] -> []" in res.output, res.output
    run = json.loads((tmp_path / "c" / "run.json").read_text())
    del run["config"]["bystanders"]
    (tmp_path / "c" / "run.json").write_text(json.dumps(run))
    res = invoke(*args(tmp_path / "c"))
    assert res.exit_code == 0 and "resuming with the run's" in res.output and "bystanders []" in res.output
    assert recorded(tmp_path / "c") == []
    res = invoke(*args(tmp_path / "d", "--bystanders", f"auto,{other}"))
    assert res.exit_code == 2 and "'auto' and 'none' stand alone" in res.output, res.output


def test_depths_on_one_step_are_checked_as_the_attack_plans_them(assets, tmp_path):
    """Of the generator's 3 sampling steps, depths 0.3 and 0.4 both run the last one, so they are
    one depth with the first estimator, for the run's checks as for SDOAttack: the second
    estimator (an index outside that step) goes unused; given first, it is refused."""
    used = invoke(*attack_args(assets, tmp_path / "a", "--depth", "0.3,0.4", "--estimator", "sdo:0,sdo:5"))
    assert used.exit_code == 0, used.output
    assert len(manifest(tmp_path / "a")) == 8
    refused = invoke(*attack_args(assets, tmp_path / "b", "--depth", "0.3,0.4", "--estimator", "sdo:5,sdo:0"))
    assert refused.exit_code == 2 and "index 5 is outside the 1 sampled steps" in refused.output, refused.output


@pytest.mark.parametrize("suffix", ["yaml", "toml"])
def test_config_file(assets, tmp_path, suffix):
    cfg = tmp_path / f"run.{suffix}"
    values = {"classifier": f"{assets / 'net.py'}:create_model", "generator": str(assets / "ddpm"),
              "input": str(assets / "digits"), "batch-size": 8, "steps": 1, "seed": 3, "num_inference_steps": 1,
              "lr": [0.02, 0.05]}
    if suffix == "yaml":
        import yaml

        cfg.write_text(yaml.safe_dump(values))
    else:
        cfg.write_text("".join(f'"{k}" = {json.dumps(v)}\n' for k, v in values.items()))
    result = invoke("attack", "--config", str(cfg), "--out", str(tmp_path / "out"), "--seed", "5")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "out" / "run.json").read_text())["config"]
    assert config["seed"] == 5 and config["batch_size"] == 8 and config["num_inference_steps"] == 1
    assert config["lr"] == [0.02, 0.05]  # one rate per depth
    assert config["classifier"] == values["classifier"] and len(manifest(tmp_path / "out")) == 8


def test_config_file_errors(assets, tmp_path, no_compute):
    (tmp_path / "bad.yaml").write_text("classifier: x\nstepz: 3\n")
    result = invoke("attack", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "unknown key(s) stepz" in result.output and "accepted:" in result.output
    (tmp_path / "bad.toml").write_text("steps = 'many'\n")
    result = invoke("attack", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "'many' is not a valid integer" in result.output
    (tmp_path / "part.toml").write_text("steps = 2\n")
    result = invoke("attack", "--config", str(tmp_path / "part.toml"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "missing option(s) --classifier, --generator, --input" in result.output


def test_evaluate(assets, attacked, tmp_path):
    out, _ = attacked
    net = assets / "net.py"
    specs = f"{net}:create_model,{net}:create_other,robustbench:cifar10/Linf/Standard"
    result = invoke("evaluate", "--adv", str(out), "--models", specs, "--robustbench-dir", str(tmp_path / "rb"),
                    "--out", str(tmp_path / "eval"))
    assert result.exit_code == 0, result.output
    ev = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    records = {r["name"]: r for r in ev["models"]}
    assert len(records) == 3 and ev["n_eval"] == 8
    rows = manifest(out)
    own = records[f"{net}:create_model"]
    assert own["threat_model"] == "natural-diffusion" and own["skipped"] is None and own["n_eval"] == 8
    assert own["clean_acc"] == pytest.approx(100 * np.mean([r["pred_before"] == r["label"] for r in rows]), abs=0.01)
    assert own["adv_acc"] == pytest.approx(100 * np.mean([r["pred_after"] == r["label"] for r in rows]), abs=0.01)
    if any(r["success"] for r in rows):
        assert own["transfer_success"] == 100.0
    assert records[f"{net}:create_other"]["skipped"] is None
    rb = records["robustbench:cifar10/Linf/Standard"]
    assert rb["skipped"].startswith("weights not found") and rb["clean_acc"] is None
    assert ev["image_metrics"]["mean_l2"] == pytest.approx(np.mean([r["l2"] for r in rows]), abs=1e-5)
    assert "weights not present locally" in ev["lpips"]["skipped"] and "skipped" in ev["fid"]
    table = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| `robustbench:cifar10/Linf/Standard` | skipped: weights not found" in table
    assert (tmp_path / "eval" / "evaluation.png").is_file()
    assert "robustbench:cifar10/Linf/Standard: skipped" in result.output


def test_evaluate_with_a_judge(assets, attacked, tmp_path):
    out, _ = attacked
    judge = f"{assets / 'net.py'}:create_other"
    result = invoke("evaluate", "--adv", str(out), "--judges", judge, "--out", str(tmp_path / "eval"))
    assert result.exit_code == 0, result.output
    ev = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    rows = manifest(out)
    assert any(r["success"] for r in rows)
    from sdo_adv import load_classifier

    model = load_classifier(judge)
    kept = []
    for r in rows:
        if r["success"]:
            adv = torch.from_numpy(np.asarray(Image.open(out / r["file"]))).float().div(255)[None, None]
            with torch.no_grad():
                kept.append(int(model(adv).argmax(1)) == r["label"])
    assert ev["judges"] == [judge] and ev["judge_agreement"] == pytest.approx(100 * np.mean(kept), abs=0.01)
    assert ev["models"][0]["keeps_label"] == ev["judge_agreement"]
    assert "judges keep the true label" in result.output
    own = f"{assets / 'net.py'}:create_model"
    refused = invoke("evaluate", "--adv", str(out), "--judges", own)
    assert refused.exit_code == 2 and "cannot judge its own attack" in refused.output and "'--judges'" in refused.output


def test_evaluate_unknown_spec_fails_at_once(attacked, no_compute):
    out, _ = attacked
    result = invoke("evaluate", "--adv", str(out), "--models", "keras:resnet")
    assert result.exit_code == 2 and "accepted forms: sdo-adv:<embedded name>, timm:<name>" in result.output
    assert not (out / "evaluation.json").exists()


def test_evaluate_checks_every_spec_before_loading_any(attacked, monkeypatch):
    import sdo_adv.runs.evaluation as evaluation

    out, _ = attacked
    monkeypatch.setattr(evaluation, "load_classifier", lambda *a, **k: pytest.fail("loaded a model first"))
    result = invoke("evaluate", "--adv", str(out), "--models", "sdo-adv:digits-mlp,sdo-adv:digits-mpl")
    assert result.exit_code == 2 and "digits-mpl" in result.output


def test_outputs_stay_inside_the_output_folder(assets, tmp_path):
    """File names from a labels CSV that climb out of the input folder, or are absolute, still
    give PNGs inside --out; a planted symlink leading outside is refused."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    source = next((assets / "digits" / "0").iterdir())
    shutil.copy(source, work / "above.png")
    shutil.copy(source, tmp_path / "abs.png")
    csv_path = work / "labels.csv"
    csv_path.write_text(f"file,label\n../above.png,1\n{tmp_path / 'abs.png'},2\n")
    out = work / "data" / "out"
    before = sorted(p.name for p in tmp_path.iterdir()) + sorted(p.name for p in work.iterdir())
    result = invoke(*attack_args(assets, out, "--labels", str(csv_path), input=work / "data"))
    assert result.exit_code == 0, result.output
    rows = manifest(out)
    assert [r["source"] for r in rows] == ["../above.png", (tmp_path / "abs.png").as_posix()]
    assert all((out / r["file"]).resolve().parent == out.resolve() for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) + sorted(p.name for p in work.iterdir()) == before

    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / rows[0]["file"]).symlink_to(tmp_path / "elsewhere.png")
    result = invoke(*attack_args(assets, out2, "--labels", str(csv_path), input=work / "data"))
    assert result.exit_code != 0 and "outside" in result.output
    assert not (tmp_path / "elsewhere.png").exists()


def test_the_fidelity_defaults_agree():
    """SDOAttack, the attack run's settings and ``sdo-adv attack`` share one default fidelity (the
    mean absolute error, weight 40); SDOGenerate and ``sdo-adv generate`` keep the squared error."""
    import inspect

    from sdo_adv.attacks import SDOAttack, SDOGenerate
    from sdo_adv.runs.generate_run import GenerateRunConfig

    def click_defaults(command):
        return {p.name: p.default for p in main.commands[command].params}

    attack, generate = inspect.signature(SDOAttack).parameters, inspect.signature(SDOGenerate).parameters
    fields = {f.name: f.default for f in dataclasses.fields(AttackRunConfig)}
    for name, value in (("fidelity", 40.0), ("fidelity_norm", "l1")):
        assert attack[name].default == fields[name] == click_defaults("attack")[name] == value, name
    assert (generate["fidelity"].default, generate["fidelity_norm"].default) == (200.0, "l2")
    assert {f.name: f.default for f in dataclasses.fields(GenerateRunConfig)}["fidelity"] == 200.0
    assert click_defaults("generate")["fidelity"] == 200.0
