"""Property-based fuzzing of the input checks of SDOAttack and `sdo-adv attack` on tiny models.

Every input either gives a correct result, or a ValueError/TypeError (on the command line: a
clean usage error) that names the problem; never an error from deep inside torch, nor a silent
wrong output."""
import contextlib
import csv
import functools
import json
import math
import os
import re
import shutil
import tempfile
import traceback
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from sdo_adv import load_classifier
from sdo_adv.attacks import SDOAttack
from sdo_adv.cli.main import main
from sdo_adv.runs.io import IMAGE_EXTENSIONS
from tiny import NUM_CLASSES, TinyClassifier, pixel_generator, save_tiny_ddpm

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, phases=set(Phase) - {Phase.explain},
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- SDOAttack.forward ------------------------------------------------------------------------------
@functools.cache
def tiny_attack() -> SDOAttack:
    """One attack iteration on a random-weight 8x8 classifier and a 2-step generator, shared."""
    torch.manual_seed(0)
    model = load_classifier(TinyClassifier(), input_size=(1, 8, 8))
    return SDOAttack(model, pixel_generator(steps=2), steps=1)


IMAGE_FAULTS = ("rank", "batch 0", "channels", "side 0", "dtype", "below 0", "above 1", "nan", "inf", "numpy",
                "list")
LABEL_FAULTS = ("length", "scalar", "column", "float", "bool", "complex", "negative", "too large", "huge",
                "numpy", "list", "none")


def faults(draw, kinds: tuple[str, ...], second: int) -> set[str]:
    """None, one or two of ``kinds``: about half the draws have none."""
    first = draw(st.sampled_from((None,) * len(kinds) + kinds))
    other = draw(st.sampled_from((None,) * second * len(kinds) + kinds))
    return {f for f in (first, other) if f is not None}


@st.composite
def images_st(draw):
    """Images ``(B, C, H, W)`` of float dtypes and values in [0, 1] (memory layouts and exact 0 and
    1 included), with up to two faults: rank, sizes, dtype, values or container."""
    found = faults(draw, IMAGE_FAULTS, 4)
    side = st.integers(1, 40)
    shape = [draw(st.integers(1, 3)), draw(st.sampled_from([1, 3])), draw(side), draw(side)]
    if "batch 0" in found:
        shape[0] = 0
    if "channels" in found:
        shape[1] = draw(st.sampled_from([0, 2, 4, 5]))
    if "side 0" in found:
        shape[draw(st.sampled_from([2, 3]))] = 0
    if "rank" in found:
        shape = draw(st.lists(st.integers(0, 5), max_size=5).filter(lambda s: len(s) != 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    flat = x.view(-1)
    if flat.numel():
        if draw(st.booleans()):
            flat[0], flat[-1] = 0.0, 1.0
        spots = {"below 0": -draw(st.floats(1e-3, 1e3)), "above 1": 1 + draw(st.floats(1e-3, 1e3)),
                 "nan": math.nan, "inf": draw(st.sampled_from([math.inf, -math.inf]))}
        for fault, value in spots.items():
            if fault in found:
                flat[draw(st.integers(0, flat.numel() - 1))] = value
    if "dtype" in found:
        dtype = draw(st.sampled_from([torch.uint8, torch.int64, torch.bool, torch.complex64]))
        x = (x > 0.5) if dtype == torch.bool else x.to(dtype) if dtype.is_complex else \
            (x.nan_to_num() * 255).round().clamp(-10, 300).to(dtype)
    else:
        x = x.to(draw(st.sampled_from(FLOATS)))
    if x.dim() == 4 and x.is_floating_point():
        layout = draw(st.sampled_from(["contiguous", "channels_last", "transposed"]))
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "transposed":
            x = x.transpose(2, 3).contiguous().transpose(2, 3)
    if "numpy" in found or "list" in found:
        x = x.float() if x.dtype == torch.bfloat16 else x
        return x.numpy() if "numpy" in found else x.tolist()
    return x


@st.composite
def labels_st(draw, batch: int):
    """Labels ``(batch,)`` of integer dtypes in [0, NUM_CLASSES), with up to two faults: length,
    rank, dtype, values or container."""
    found = faults(draw, LABEL_FAULTS, 4)
    length = batch
    if "length" in found:
        length = draw(st.integers(0, 5).filter(lambda n: n != batch))
    y = torch.tensor(draw(st.lists(st.integers(0, NUM_CLASSES - 1), min_size=length, max_size=length)))
    if y.numel():
        spots = {"negative": -draw(st.integers(1, 100)), "too large": draw(st.integers(NUM_CLASSES, 127)),
                 "huge": 2**40}
        for fault, value in spots.items():
            if fault in found:
                y[draw(st.integers(0, length - 1))] = value
    if found & {"float", "bool", "complex"}:
        dtype = {"float": draw(st.sampled_from(FLOATS)), "bool": torch.bool, "complex": torch.complex64}
        y = y.to(dtype[draw(st.sampled_from(sorted(found & set(dtype))))])
    elif not found & {"negative", "huge"}:
        y = y.to(draw(st.sampled_from([torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8])))
    if "scalar" in found and y.numel():
        y = y[0]
    if "column" in found:
        y = y.reshape(-1, 1)
    if "none" in found:
        return None
    if "numpy" in found or "list" in found:
        y = y.float() if y.dtype == torch.bfloat16 else y
        return y.numpy() if "numpy" in found else y.tolist()
    return y


def problem(images, labels) -> tuple[str, str] | None:
    """What is wrong with the input (the first problem checked), as two words its error message
    must contain; None for a valid input."""
    if not isinstance(images, torch.Tensor):
        return "images", "torch.Tensor"
    if images.dim() != 4:
        return "images", "shape"
    if images.shape[0] == 0:
        return "images", "empty"
    if images.shape[1] not in (1, 3):
        return "images", "channels"
    if images.numel() == 0:
        return "images", "empty"
    if not images.is_floating_point():
        return "images", "dtype"
    if not torch.isfinite(images).all():
        return "images", "NaN"
    if images.min() < 0 or images.max() > 1:
        return "images", "[0, 1]"
    if not isinstance(labels, torch.Tensor):
        return "labels", "torch.Tensor"
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        return "labels", "dtype"
    if labels.shape != (images.shape[0],):
        return "labels", "shape"
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        return "labels", f"[0, {NUM_CLASSES})"
    return None


def check_call(attack, images, labels, expected: tuple[str, str] | None, name: str = "labels") -> None:
    """``attack(images, labels)`` returns a correct result for a valid input, or raises an error
    naming the ``expected`` problem, whose labels are called ``name``."""
    words = expected and (name if expected[0] == "labels" else expected[0], expected[1])
    event("refused: " + " ".join(words) if words else "attacked")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*converting explicitly")
            adv = attack(images, labels)
    except (ValueError, TypeError) as err:
        assert words, f"valid input refused: {err!r}"
        assert all(word in str(err) for word in words), (words, repr(err))
        return
    assert not expected, f"invalid input accepted ({expected})"
    assert adv.shape == images.shape and adv.dtype == images.dtype and adv.device == images.device
    assert torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1
    r = attack.last_result
    assert r.success.shape == r.adv_pred.shape == (images.shape[0],)


@fuzz(150)
@given(data=st.data())
def test_attack_inputs(data):
    attack = tiny_attack()
    images = data.draw(images_st(), "images")
    batch = images.shape[0] if isinstance(images, torch.Tensor) and images.dim() else 1
    labels = data.draw(labels_st(batch), "labels")
    check_call(attack, images, labels, problem(images, labels))


@fuzz(30)
@given(data=st.data())
def test_attack_target_labels(data):
    """Targets from a function: checked like labels, under the name ``target labels``."""
    attack = tiny_attack()
    batch = data.draw(st.integers(1, 3), "batch")
    images = torch.rand(batch, 1, 8, 8)
    labels = torch.arange(batch) % NUM_CLASSES
    targets = data.draw(labels_st(batch), "targets")
    attack.set_mode_targeted_by_function(lambda x, y: targets, quiet=True)
    try:
        expected = problem(images, targets)
        check_call(attack, images, labels, expected, name="target labels")
        if expected is None:
            assert torch.equal(attack.last_result.target, targets.long())
    finally:
        with contextlib.redirect_stdout(None):
            attack.set_mode_default()


# ---- sdo-adv attack ------------------------------------------------------------------------------------
NET = """
import torch
from torch import nn
from sdo_adv import ImageClassifier


def create_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))
    return ImageClassifier(net, (1, 8, 8), (0.5,), (0.5,), 4)
"""
ODD_NAMES = ("-a", "--help", "-", " lead", "trail ", "two  spaces", "it's", 'say "hi"', "ünïcödé", "数字", "😀",
             "a,b", "#1", "new\nline", "tab\tx", "back\\slash", "x" * 200, "é" * 100, "..a", "a..b", "grid",
             "manifest.jsonl")
NAMES = st.one_of(st.sampled_from(ODD_NAMES),
                  st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=12),
                  ).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 200)
EXTENSIONS = (".png", ".PNG", ".jpg", ".bmp", ".txt", "")
KINDS = ("L", "RGB", "RGBA", "P", "I;16", "1", "LA", "corrupt", "empty", "truncated")
IMAGE_FILES = st.tuples(NAMES, st.sampled_from(EXTENSIONS), st.sampled_from(KINDS), st.integers(1, 12),
                        st.integers(1, 12))
BAD_LABELS = ("-1", "1.5", "cat", "", "4", "07", "+1", "1e3", "²", "0x1", "None", "9" * 30)
GOOD_LABELS = ("0", "1", "2", "3", " 2 ", "03", "٣")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A class-conditional DDPM folder (one sampling step) and a classifier factory file."""
    root = tmp_path_factory.mktemp("assets")
    save_tiny_ddpm(root, steps=1)
    (root / "net.py").write_text(NET)
    return root


def write_image(path: Path, kind: str, size: tuple[int, int]) -> bool:
    """Write a PNG of PIL mode ``kind`` (whatever the extension) or a broken file; return whether
    it is readable."""
    rng = np.random.default_rng(size[0] * 13 + size[1])
    gray = rng.integers(0, 256, size, dtype=np.uint8)
    image = {"L": lambda: Image.fromarray(gray), "P": lambda: Image.fromarray(gray).convert("P"),
             "1": lambda: Image.fromarray(gray).convert("1"),
             "I;16": lambda: Image.fromarray(gray.astype(np.uint16) * 257),
             "RGB": lambda: Image.fromarray(np.stack([gray] * 3, -1)),
             "RGBA": lambda: Image.fromarray(np.stack([gray] * 4, -1)),
             "LA": lambda: Image.merge("LA", [Image.fromarray(gray)] * 2)}
    if kind in ("corrupt", "empty"):
        path.write_bytes(rng.bytes(50) if kind == "corrupt" else b"")
        return False
    with path.open("wb") as f:
        image["L" if kind == "truncated" else kind]().save(f, format="PNG")
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    return kind != "truncated"


@contextlib.contextmanager
def scratch_folder():
    """Work in a fresh temporary folder, so that command lines hold relative (odd) names."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(previous)


def run_attack(assets: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["attack", "--classifier", f"{assets / 'net.py'}:create_model", "--generator",
                                     str(assets / "ddpm"), "--out", "out", "--steps", "1", "--device", "cpu", *args])


def check_run(result: Result, expected: list[tuple[str, int]] | None, ordered: bool = True) -> None:
    """``expected``: the manifest's (source, label) rows for a valid input, None for a faulty one."""
    trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
    assert result.exit_code == 0 or isinstance(result.exception, SystemExit), trace
    assert "Traceback" not in result.output
    event("refused" if result.exit_code else "attacked")
    if result.exit_code != 0:
        assert expected is None, f"valid input refused: {result.output}"
        assert "Error: " in result.output and not Path("out/manifest.jsonl").exists()
        return
    assert expected is not None, f"faulty input accepted: {result.output}"
    rows = [json.loads(line) for line in Path("out/manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    got = [(r["source"], r["label"]) for r in rows]
    assert (got if ordered else sorted(got)) == (expected if ordered else sorted(expected))
    files = [r["file"] for r in rows]
    assert len(set(files)) == len(files) and all(Path("out", f).is_file() for f in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+\.png", f) and not f.startswith(".") for f in files), files


@fuzz(20)
@given(classes=st.lists(st.one_of(st.sampled_from(["0", "1", "2", "3", "03", "7", "²", "٣", ".hidden"]), NAMES),
                        min_size=1, max_size=3, unique=True),
       files=st.lists(st.lists(IMAGE_FILES, max_size=3, unique_by=lambda f: f[0] + f[1]), min_size=3, max_size=3),
       input_name=NAMES.filter(lambda n: n != "out"))
@example(classes=["0"], files=[[("-a", ".png", "L", 4, 4)], [], []], input_name=" ")  # a folder named " "
def test_cli_image_folder(assets, classes, files, input_name):
    """An ImageFolder tree with odd folder and file names and images of every mode, some broken."""
    with scratch_folder():
        root = Path(input_name)
        written = []
        for c, entries in zip(classes, files):
            (root / c).mkdir(parents=True)
            for stem, ext, kind, h, w in entries:
                if write_image(root / c / (stem + ext), kind, (h, w)) and not stem.startswith("."):
                    written.append((c, stem + ext))
        visible = sorted(c for c in classes if not c.startswith("."))
        numeric = all(c.isdecimal() for c in visible)
        index = {c: int(c) if numeric else i for i, c in enumerate(visible)}
        expected = [(f"{c}/{name}", index[c]) for c, name in written
                    if c in index and PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS]
        valid = expected and all(label < NUM_CLASSES for _, label in expected)
        check_run(run_attack(assets, "--input", input_name), expected if valid else None, ordered=False)


@fuzz(25)
@given(files=st.lists(IMAGE_FILES, min_size=1, max_size=4, unique_by=lambda f: f[0] + f[1]), data=st.data())
def test_cli_labels_csv(assets, files, data):
    """A flat folder and a labels CSV whose entries are odd, relative ('..', './'), absolute, missing or
    not files, with good and bad labels and headers."""
    with scratch_folder():
        root = Path("in put")
        (root / "sub").mkdir(parents=True)
        readable = {str(Path("outside.png").resolve())} if write_image(Path("outside.png"), "L", (5, 5)) else set()
        entries = []
        for stem, ext, kind, h, w in files:
            if write_image(root / (stem + ext), kind, (h, w)):
                readable.add(str((root / (stem + ext)).resolve()))
            entries.append(data.draw(st.sampled_from([stem + ext, "./" + stem + ext, "sub/../" + stem + ext,
                                                      str((root / (stem + ext)).resolve())]), "entry"))
        skipped, faulty = ["missing.png", "../outside.png", "sub"], ["", ".", "..", "sub/..", "/"]
        entries += data.draw(st.lists(st.sampled_from(skipped * 3 + faulty), max_size=2), "extra entries")
        labels = [data.draw(st.sampled_from(GOOD_LABELS * 6 + BAD_LABELS), "label") for _ in entries]
        header = data.draw(st.sampled_from([["file", "label"], ["\ufefffile", "label"], [" file ", " label "],
                                            ["file", "label", "extra"], ["file", "class"]]), "header")
        csv_name = data.draw(NAMES, "csv name") + ".csv"
        with open(csv_name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows([entry, label, "x"][:len(header)] for entry, label in zip(entries, labels))
        broken = data.draw(st.sampled_from([None] * 6 + ["latin-1", "long field"]), "broken row")
        with open(csv_name, "ab") as f:
            f.write({None: b"", "latin-1": b"\xe9t\xe9.png,1\r\n", "long field": b"x" * 200_000 + b",1\r\n"}[broken])
        keys = [PurePosixPath(e.strip()).as_posix() for e in entries]
        valid = (not broken and {"file", "label"} <= {h.strip().lstrip("\ufeff") for h in header}
                 and len(set(keys)) == len(keys)
                 and all(re.fullmatch(r"\d+", v.strip()) for v in labels)
                 and all(PurePosixPath(k).name not in ("", ".", "..") for k in keys))
        expected = [(k, int(v)) for k, v in zip(keys, labels)
                    if valid and (root / k).is_file() and str((root / k).resolve()) in readable]
        valid = valid and expected and all(label < NUM_CLASSES for _, label in expected)
        check_run(run_attack(assets, "--input", str(root), "--labels", csv_name), expected if valid else None)


NPZ_FAULTS = ("n 0", "h 0", "channels", "rank", "dtype", "below 0", "above 1", "nan", "labels length",
              "labels dtype", "negative label", "label too large", "keys", "garbage", "empty", "truncated",
              "object labels")


@fuzz(30)
@given(data=st.data())
def test_cli_npz(assets, data):
    """An .npz of images (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 or float in [0, 1], and labels,
    with up to two faults: shapes, dtypes, values, keys, or a broken file."""
    found = faults(data.draw, NPZ_FAULTS, 2)
    n, h, w = data.draw(st.integers(1, 3), "n"), data.draw(st.integers(1, 9), "h"), data.draw(st.integers(1, 9), "w")
    c = data.draw(st.sampled_from([2, 4]) if "channels" in found else st.sampled_from([1, 3]), "channels")
    n, h = 0 if "n 0" in found else n, 0 if "h 0" in found else h
    layout = data.draw(st.sampled_from(["HW", "NHWCX"] if "rank" in found else ["NHW", "NHWC", "NCHW"]), "layout")
    shape = {"NHW": (n, h, w), "NHWC": (n, h, w, c), "NCHW": (n, c, h, w), "HW": (h, w), "NHWCX": (n, h, w, c, 1)}
    dtypes = [np.int64, np.bool_, np.int8] if "dtype" in found else [np.uint8, np.float32, np.float64, np.float16]
    dtype = data.draw(st.sampled_from(dtypes), "dtype")
    images = np.random.default_rng(data.draw(st.integers(0, 2**16), "seed")).random(shape[layout])
    if images.size:
        images.flat[0] = data.draw(st.sampled_from([0.0, 1.0, 0.5]), "edge")
        for fault, value in {"below 0": -0.1, "above 1": 1.5, "nan": math.nan}.items():
            if fault in found:
                images.flat[-1] = value
    if dtype in (np.float16, np.float32, np.float64):
        images = images.astype(dtype)
    else:
        images = np.nan_to_num(images * 255).round().clip(-5, 300).astype(dtype)
    labels = data.draw(st.lists(st.integers(0, NUM_CLASSES - 1), min_size=n, max_size=n), "label values")
    if "labels length" in found:
        labels = labels + [0] if data.draw(st.booleans(), "longer") or not labels else labels[1:]
    if labels and found & {"negative label", "label too large"}:
        labels[-1] = -1 if "negative label" in found else data.draw(st.sampled_from([NUM_CLASSES, 300]), "label")
    label_dtypes = [np.float32, np.bool_] if "labels dtype" in found else [np.int64, np.int32, np.uint16]
    labels = np.array(labels, dtype=np.int64).astype(data.draw(st.sampled_from(label_dtypes), "label dtype"))
    keys = ("images", data.draw(st.sampled_from(["targets", "label"]), "key")) if "keys" in found else \
        ("images", "labels")
    name = data.draw(NAMES, "name") + ".npz"
    with scratch_folder():
        arrays = dict(zip(keys, (images, labels.astype(object) if "object labels" in found else labels)))
        (np.savez_compressed if data.draw(st.booleans(), "compressed") else np.savez)(name, **arrays)
        raw = Path(name).read_bytes()
        for form, broken in {"garbage": b"not an npz", "empty": b"", "truncated": raw[:len(raw) // 2]}.items():
            if form in found:
                Path(name).write_bytes(broken)
        x = images[..., None] if images.ndim == 3 else images
        if x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
            x = x.transpose(0, 2, 3, 1)
        valid = (not found & {"garbage", "empty", "truncated", "object labels"} and keys == ("images", "labels")
                 and x.ndim == 4 and x.shape[-1] in (1, 3) and 0 not in x.shape[:3]
                 and (x.dtype == np.uint8 or (x.dtype.kind == "f" and np.isfinite(x).all() and x.min() >= 0
                                              and x.max() <= 1))
                 and labels.shape == (len(x),) and labels.dtype.kind in "iu"
                 and ((labels >= 0) & (labels < NUM_CLASSES)).all())
        expected = [(f"{name}#{i}", int(y)) for i, y in enumerate(labels)] if valid else None
        check_run(run_attack(assets, "--input", name), expected)


# ---- the command line's options ------------------------------------------------------------------------
OPTION_VALUES = {  # flag -> (valid values, invalid values); None: the option left out
    "--estimator": (("auto", "sdo", "sdo:last", "full", "skip", "truncated:2", "checkpoint", "sdo:random", "SDO:first",
                     "skip,sdo", "full,skip,sdo"),
                    ("bptt", "sdo:", "sdo:x", "truncated:0", "truncated:-1", "full:1", "", "sdo:1:2", "auto,sdo", ",",
                     "skip,bptt")),
    "--steps": (("1", "2"), ("0", "-1", "x", "1.5")),
    "--lr": (("0.05", "1", "1e-3"), ("0", "-0.1", "nan", "inf", "x")),
    "--depth": (("0.5", "1", "0.01", "0.3,0.5", "0.01,1"), ("0", "1.5", "-0.5", "nan", "x", "0.5,0.3", "0.3,0.3",
                                                             "0.3,", "0.3,1.5")),
    "--num-inference-steps": ((None, "1", "2", "3"), ("0", "-2", "x")),
    "--guidance-scale": ((None, "1", "2.5", "0"), ("nan", "inf", "x")),
    "--batch-size": (("1", "2", "64"), ("0", "-1", "x")),
    "--seed": (("0", "-7", str(2**70)), ("x", "1.5")),
    "--targeted": ((None, "random", "least-likely", "next"), ("sideways", "absent.csv", "")),
    "--device": ((None, "cpu"), ("gpu", "")),
    "--generator": (("ddpm",), ("./nowhere", "no/such/folder", "sdo-adv:nope", "", "net.py")),
    "--classifier": (("net.py:create_model",), ("keras:resnet", "absent.py", "sdo-adv:nope", "timm:not_a_model",
                                                 "net.py:absent", "")),
}


@fuzz(30)
@given(data=st.data())
def test_cli_options(assets, data):
    """Every option of `sdo-adv attack`, valid or not (up to two faults): a valid command line
    attacks; a faulty one ends in a one-line usage error before any model loads."""
    found = faults(data.draw, tuple(OPTION_VALUES), 2)
    chosen = {flag: data.draw(st.sampled_from(OPTION_VALUES[flag][flag in found]), flag) for flag in OPTION_VALUES}
    valid = not found
    if not found & {"--estimator", "--depth", "--num-inference-steps"}:  # an index in or out of the schedule
        index = data.draw(st.sampled_from([None, "0", "-1", "1", "2", "-3", "9"]), "sdo index")
        if index is not None:
            chosen["--estimator"] = f"sdo:{index}"
            steps = int(chosen["--num-inference-steps"] or 1)  # the generator stores 1
            sampled = min(max(1, round(float(d) * steps)) for d in chosen["--depth"].split(","))
            valid = valid and -sampled <= int(index) < sampled
    flag_for = {"--estimator": data.draw(st.sampled_from(["--estimator", "--gradient"]), "alias")}
    args = [part for flag, value in chosen.items() if value is not None
            for part in (flag_for.get(flag, flag), value)]
    loads = []
    with scratch_folder():
        shutil.copytree(assets / "ddpm", "ddpm")
        shutil.copy(assets / "net.py", "net.py")
        np.savez("digits.npz", images=np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8),
                 labels=np.array([0, 3]))
        with _counting_loads(loads):
            result = CliRunner().invoke(main, ["attack", "--input", "digits.npz", "--out", "out", *args])
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        assert result.exit_code == 0 or isinstance(result.exception, SystemExit), trace
        assert "Traceback" not in result.output
        event("refused" if result.exit_code else "attacked")
        if valid:
            assert result.exit_code == 0, (args, result.output)
            assert len(Path("out/manifest.jsonl").read_text().splitlines()) == 2
        else:
            assert result.exit_code == 2, (args, result.output)
            error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
            assert len(error) == 1, result.output
            assert not loads, f"a model loaded before the error: {args}"
            assert not Path("out/manifest.jsonl").exists()


@contextlib.contextmanager
def _counting_loads(loads: list):
    """Record every model load of an attack run (the specs given to the loaders)."""
    from sdo_adv.runs import attack_run

    real = attack_run.load_classifier, attack_run.load_generator
    attack_run.load_classifier = lambda spec, **kw: (loads.append(spec), real[0](spec, **kw))[1]
    attack_run.load_generator = lambda spec, **kw: (loads.append(spec), real[1](spec, **kw))[1]
    try:
        yield
    finally:
        attack_run.load_classifier, attack_run.load_generator = real


# ---- the cases fuzzing found ----------------------------------------------------------------------------
def test_attack_found_cases():
    attack = tiny_attack()
    images = torch.rand(2, 1, 8, 8)
    assert attack(images, torch.tensor([0, 3], dtype=torch.int32)).shape == images.shape
    with pytest.raises(ValueError, match="images is empty"):
        attack(torch.rand(1, 1, 0, 8), torch.tensor([0]))
    attack.set_mode_targeted_by_function(lambda x, y: [1, 2], quiet=True)
    try:
        with pytest.raises(TypeError, match="target labels must be a torch.Tensor"):
            attack(images, torch.tensor([0, 3]))
    finally:
        with contextlib.redirect_stdout(None):
            attack.set_mode_default()


def _npz(images: np.ndarray, form: str = "savez") -> tuple[str, ...]:
    np.savez("set.npz", images=images, labels=np.zeros(len(images), dtype=np.int64))
    raw = Path("set.npz").read_bytes()
    Path("set.npz").write_bytes({"savez": raw, "empty": b"", "truncated": raw[:len(raw) // 2]}[form])
    return ("set.npz",)


def _folder(classes: dict[str, list[str]]) -> tuple[str, ...]:
    for c, files in classes.items():
        Path("in", c).mkdir(parents=True)
        for name in files:
            write_image(Path("in", c, name), "L", (8, 8))
    return ("in",)


def _labels(*rows: bytes) -> tuple[str, ...]:
    _folder({".": ["a.png"]})
    Path("labels.csv").write_bytes(b"file,label\n" + b"".join(rows))
    return "in", "--labels", "labels.csv"


@pytest.mark.parametrize("make,exit_code,message", [
    pytest.param(lambda: _labels(b"a.png,1\n", b",0\n"), 2, "'' does not name a file", id="empty CSV entry"),
    pytest.param(lambda: _labels(b"a.png,1\n", b"..,0\n"), 2, "'..' does not name a file", id="'..' CSV entry"),
    pytest.param(lambda: _labels(b"\xe9t\xe9.png,1\n"), 2, "is not a UTF-8 CSV file", id="latin-1 CSV"),
    pytest.param(lambda: _npz(np.zeros((2, 0, 8), dtype=np.uint8)), 2, "N, H, W >= 1", id="npz H=0"),
    pytest.param(lambda: _npz(np.zeros((2, 0, 8), dtype=np.float32)), 2, "N, H, W >= 1", id="float npz H=0"),
    pytest.param(lambda: _npz(np.zeros((2, 8, 8), dtype=np.uint8), "empty"), 2, "cannot read", id="empty npz"),
    pytest.param(lambda: _npz(np.zeros((2, 8, 8), dtype=np.uint8), "truncated"), 2, "cannot read",
                 id="truncated npz"),
    pytest.param(lambda: _folder({"²": ["a.png"]}), 0, "success", id="class folder '²'"),
    pytest.param(lambda: _folder({"c" * 200: ["f" * 200 + ".png"]}), 0, "success", id="long names"),
])
def test_cli_found_cases(assets, tmp_path, monkeypatch, make, exit_code, message):
    monkeypatch.chdir(tmp_path)
    result = run_attack(assets, "--input", *make())
    assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert message in " ".join(result.output.split()), result.output
    if exit_code == 0:
        rows = Path("out/manifest.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(rows) == 1 and len(json.loads(rows[0])["file"]) <= 204
