"""One factory each for generators and classifiers, named by spec strings (as timm's create_model).

Generator specs: ``sdo-adv:<embedded name>``, a local diffusers folder, or a hub id
(``org/name``, read from the local Hugging Face cache when offline).

Classifier specs: ``sdo-adv:<embedded name>``, ``timm:<name>`` (``pretrained=True`` loads
timm's weights) or ``timm:<name>@<checkpoint file>``, ``robustbench:<dataset>/<threat
model>/<model name>``, a Python file ``path/to/file.py[:factory]`` whose factory returns an
``nn.Module``, or any ``nn.Module``.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .classifier import ImageClassifier
from .generator import DiffusionGenerator
from .generator_settings import SETTINGS, check_settings

MODELS_DIR = Path(__file__).parent / "models"
GENERATOR_FORMS = ("sdo-adv:<embedded name>", "a local diffusers folder", "a hub id org/name")
CLASSIFIER_FORMS = ("sdo-adv:<embedded name>", "timm:<name>", "timm:<name>@<checkpoint>",
                    "robustbench:<dataset>/<threat model>/<model name>", "path/to/file.py[:factory]",
                    "an nn.Module")
ROBUSTBENCH_INPUT = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "imagenet": (3, 224, 224)}


def embedded_models() -> dict[str, dict[str, Any]]:
    """Embedded models by name: ``{"kind": "generator" | "classifier", "path": Path, "config": dict}``."""
    found = {}
    for folder in sorted(MODELS_DIR.glob("*/")):
        if (folder / "model_index.json").exists():
            info = folder / "sdo_adv.json"
            found[folder.name] = {"kind": "generator", "path": folder,
                                  "config": json.loads(info.read_text()) if info.exists() else {}}
        elif (folder / "config.json").exists():
            found[folder.name] = {"kind": "classifier", "path": folder,
                                  "config": json.loads((folder / "config.json").read_text())}
    return found


def _embedded(name: str, kind: str) -> dict[str, Any]:
    models = {k: v for k, v in embedded_models().items() if v["kind"] == kind}
    if name not in models:
        known = ", ".join(f"sdo-adv:{k}" for k in models) or "none installed"
        raise ValueError(f"unknown embedded {kind} {name!r}; available: {known}")
    return models[name]


# ---- generators ---------------------------------------------------------------------------
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def generator_source(spec: str | Path) -> str | Path:
    """Where a generator spec's model lives: an embedded or local diffusers folder (a Path),
    or a hub id (a str). Checks the spec without loading anything: an unknown embedded name,
    a missing folder or a folder without ``model_index.json`` raise at once."""
    spec_s = str(spec)
    if spec_s.startswith("sdo-adv:"):
        return _embedded(spec_s.split(":", 1)[1], "generator")["path"]
    path = Path(spec_s).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(f"{path} is not a diffusers folder: model_index.json is missing")
        return path
    if path.exists():
        raise ValueError(f"generator {spec_s!r} is a file; give a diffusers folder, an embedded name or a hub id")
    if HUB_ID.fullmatch(spec_s) and not spec_s.startswith((".", "~")):
        return spec_s
    if any(sep in spec_s for sep in "/\\") or spec_s.startswith((".", "~")):
        raise FileNotFoundError(f"no such folder: {spec_s}")
    raise ValueError(f"unknown generator spec {spec_s!r}; accepted forms: " + ", ".join(GENERATOR_FORMS))


def generator_settings(spec: str | Path) -> dict[str, Any]:
    """The settings stored beside a generator (its ``sdo_adv.json``: ``num_inference_steps``,
    ``guidance_scale``, ``solver``, ...), read without loading it; empty for hub ids and
    folders without one."""
    source = generator_source(spec)
    info = Path(source) / "sdo_adv.json"
    if not isinstance(source, Path) or not info.is_file():
        return {}
    stored = json.loads(info.read_text())
    if "sampler" in stored and "solver" not in stored:  # the key's name before 0.2
        stored["solver"] = stored["sampler"]
    return {k: stored[k] for k in SETTINGS if k in stored}


def load_generator(spec: str | Path | DiffusionGenerator, **kwargs: Any) -> DiffusionGenerator:
    """Load a :class:`DiffusionGenerator`. ``kwargs`` override the stored defaults
    (``num_inference_steps``, ``guidance_scale``, ``solver``, ``null_class``, ...) and
    ``torch_dtype`` is passed to diffusers."""
    if isinstance(spec, DiffusionGenerator):
        return spec
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"generator spec must be a string, a path or a DiffusionGenerator, got {type(spec).__name__}")
    from diffusers import DiffusionPipeline

    source = generator_source(spec)
    torch_dtype = kwargs.pop("torch_dtype", None)
    settings = {**generator_settings(spec), **kwargs}
    check_settings(**settings)  # before diffusers loads the weights
    extra = {"safety_checker": None, "requires_safety_checker": False}
    index = json.loads((source / "model_index.json").read_text()) if isinstance(source, Path) else {}
    if index and "safety_checker" not in index:
        extra = {}
    try:
        pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=torch_dtype, **extra)
    except OSError as err:
        raise FileNotFoundError(f"cannot load diffusers model {str(source)!r}: {err}") from err
    return DiffusionGenerator.from_pipeline(pipe, **settings)


# ---- classifiers ----------------------------------------------------------------------------
def load_classifier(spec: str | Path | nn.Module, *, pretrained: bool = False,
                    model_dir: str | Path = "./models", trust_pickle: bool = False,
                    **kwargs: Any) -> ImageClassifier:
    """Load a classifier that takes [0, 1] images of any size (see :class:`ImageClassifier`).

    ``pretrained``: load timm's published weights for ``timm:<name>``. ``model_dir``: where
    robustbench looks for checkpoints. ``trust_pickle``: let ``timm:<name>@<checkpoint>``
    unpickle arbitrary objects (see :func:`load_state_dict`). For ``nn.Module`` specs, ``kwargs`` give
    ``input_size``, ``mean``, ``std``, ``num_classes``; for timm specs they are passed to
    ``timm.create_model``.
    """
    if isinstance(spec, ImageClassifier):
        return spec
    if isinstance(spec, nn.Module):
        return ImageClassifier(spec, kwargs.pop("input_size", (3, 224, 224)),
                               kwargs.pop("mean", (0.0,)), kwargs.pop("std", (1.0,)), **kwargs).eval()
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"classifier spec must be a string, a path or an nn.Module, got {type(spec).__name__}")
    spec_s = str(spec)
    check_classifier_spec(spec_s)
    scheme, sep, rest = spec_s.partition(":")
    if sep and scheme == "sdo-adv":
        return _embedded_classifier(rest)
    if sep and scheme == "timm":
        name, _, ckpt = rest.partition("@")
        return _timm_classifier(name, pretrained, ckpt or None, trust_pickle, kwargs)
    if sep and scheme == "robustbench":
        return _robustbench_classifier(rest, model_dir)
    return _file_classifier(spec_s, kwargs)


class UnsafeCheckpointError(ValueError):
    """A checkpoint that only arbitrary unpickling can read; ``problem`` says why, without the remedy."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}; if you trust the file, pass trust_pickle=True")
        self.problem = problem


def check_classifier_spec(spec: str | Path) -> None:
    """Check a classifier spec string without loading weights: its form, an embedded or timm
    model's name, a robustbench dataset, the files it names. Raises ValueError or
    FileNotFoundError naming the problem; :func:`load_classifier` calls it first."""
    spec_s = str(spec)
    scheme, sep, rest = spec_s.partition(":")
    if sep and scheme == "sdo-adv":
        _embedded(rest, "classifier")
    elif sep and scheme == "timm":
        import timm

        name, at, ckpt = rest.partition("@")
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}")
        if at and not ckpt:
            raise ValueError(f"timm spec {spec_s!r} names no checkpoint after '@' (timm:<name>@<checkpoint file>)")
        if ckpt and not Path(ckpt).is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    elif sep and scheme == "robustbench":
        parts = rest.split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"robustbench spec must be robustbench:<dataset>/<threat model>/<model name>, "
                             f"got {rest!r}")
        if parts[0] not in ROBUSTBENCH_INPUT:
            raise ValueError(f"unknown robustbench dataset {parts[0]!r}; accepted: {', '.join(ROBUSTBENCH_INPUT)}")
    elif spec_s.split(":")[0].endswith(".py"):
        file, _, factory = spec_s.partition(":")
        if not Path(file).is_file():
            raise FileNotFoundError(f"classifier file not found: {file}")
        _check_factory(Path(file), factory or "create_model")
    else:
        raise ValueError(f"unknown classifier spec {spec_s!r}; accepted forms: " + ", ".join(CLASSIFIER_FORMS))


RUNTIME_BINDERS = frozenset({"globals", "vars", "setattr", "exec", "eval", "__import__"})


def _module_names(tree: ast.Module) -> set[str] | None:
    """Names a module binds at its top level (in any block, not inside functions, classes or
    lambdas); ``None`` when only running it can tell (``import *``, ``global``, a module
    ``__getattr__``, ``globals()``, ``setattr``, ``exec``...)."""
    if any(isinstance(node, ast.Global) for node in ast.walk(tree)):
        return None
    names: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            stack.extend(node.decorator_list)
            continue
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in RUNTIME_BINDERS:
            return None
        stack.extend(ast.iter_child_nodes(node))
    return None if "__getattr__" in names else names


def _check_factory(path: Path, factory: str) -> None:
    """Raise ValueError, before the file runs, when it cannot parse or binds no ``factory``."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError) as err:
        raise ValueError(f"{path} is not valid Python: {err}") from None
    names = _module_names(tree)
    if names is not None and factory not in names:
        raise ValueError(f"{path} has no callable {factory!r} (name it with {path}:<function>)")


def load_state_dict(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load weights from ``.safetensors`` or with ``torch.load(weights_only=True)``; unwrap
    ``state_dict`` / ``model`` containers, pickled modules and ``module.`` prefixes.

    A checkpoint holding other objects needs arbitrary unpickling, which can run code from the
    file: it is refused unless ``trust_pickle`` (then ``torch.load(weights_only=False)``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe:
            raise UnsafeCheckpointError(f"{path} needs arbitrary unpickling (it holds a {unsafe[1]}), which can "
                                        "run code from the file, so torch.load(weights_only=True) refuses it") from err
        reason = next((line.strip() for line in str(err).split("WeightsUnpickler error:")[-1].splitlines()
                       if line.strip()), type(err).__name__)
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {reason}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), (dict, nn.Module)):
            state = state[key]
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _timm_model_with_config(model: nn.Module, spec: str, in_chans: int) -> ImageClassifier:
    """Wrap a timm model with its resolved data config, adapted to ``in_chans`` input channels."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    mean, std = list(cfg["mean"]), list(cfg["std"])
    if len(mean) != in_chans:
        mean, std = [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans
    extra = {k: cfg[k] for k in ("interpolation", "crop_pct", "crop_mode") if k in cfg}
    return ImageClassifier(model, (in_chans, *cfg["input_size"][1:]), mean, std,
                           getattr(model, "num_classes", None), name=spec, data_config=extra).eval()


def _timm_classifier(name: str, pretrained: bool, ckpt: str | None, trust_pickle: bool,
                     kwargs: dict[str, Any]) -> ImageClassifier:
    import timm

    state = load_state_dict(ckpt, trust_pickle=trust_pickle) if ckpt is not None else None
    if state is not None:  # a fine-tuned checkpoint's head and stem say its classes and channels
        cfg = timm.models.get_pretrained_cfg(name)
        keys = (cfg.classifier, cfg.first_conv) if cfg else (None, None)
        head, stem = (state.get(f"{key}.weight") if isinstance(key, str) else None for key in keys)
        if head is not None and head.ndim == 2:
            kwargs = {"num_classes": head.shape[0], **kwargs}
        if stem is not None and stem.ndim == 4:
            kwargs = {"in_chans": stem.shape[1], **kwargs}
    try:
        model = timm.create_model(name, pretrained=pretrained and ckpt is None, **kwargs)
    except OSError as err:
        raise FileNotFoundError(f"pretrained weights for timm:{name} are not available (offline and not in "
                                f"the local Hugging Face cache?): {err}") from err
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{ckpt} does not fit timm:{name}: {err}") from err
    return _timm_model_with_config(model, f"timm:{name}", kwargs.get("in_chans", 3))


def _embedded_classifier(name: str) -> ImageClassifier:
    """An embedded classifier folder: ``config.json`` names a timm architecture, or one from
    :mod:`sdo_adv.architectures` as ``"sdo-adv/<name>"``; weights from ``model.safetensors``."""
    entry = _embedded(name, "classifier")
    cfg = entry["config"]
    arch, model_args = cfg["architecture"], cfg.get("model_args", {})
    if arch.startswith("sdo-adv/"):
        from . import architectures

        model = architectures.create(arch, **model_args)
    else:
        import timm

        model = timm.create_model(arch, pretrained=False, **model_args)
    model.load_state_dict(load_state_dict(entry["path"] / "model.safetensors"))
    pc = cfg["pretrained_cfg"]
    extra = {k: pc[k] for k in ("interpolation", "crop_pct", "crop_mode", "label_names") if k in pc}
    return ImageClassifier(model, pc["input_size"], pc["mean"], pc["std"], pc.get("num_classes"),
                           name=f"sdo-adv:{name}", data_config=extra).eval()


def _robustbench_classifier(rest: str, model_dir: str | Path) -> ImageClassifier:
    dataset, threat, name = rest.split("/")
    rb = _compat_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
    except (ValueError, KeyError):
        raise ValueError(f"unknown robustbench threat model {threat!r} for {dataset}") from None
    if name not in zoo:
        raise ValueError(f"unknown robustbench model {name!r} in {dataset}/{threat}")
    missing = [p for p in _robustbench_files(zoo[name], dataset, threat, name, model_dir) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"robustbench checkpoint for {name} not found at {', '.join(map(str, missing))} "
                                "(fetch it once with robustbench.load_model where the network is reachable, "
                                "or pass model_dir)")
    model = rb.load_model(model_name=name, model_dir=str(model_dir), dataset=dataset, threat_model=threat)
    n = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]
    # the zoo's ImageNet preprocessing as timm's eval transform (Resize(256), CenterCrop(224)); others squash
    resized = {"Res256Crop224": "bilinear", "BicubicRes256Crop224": "bicubic"}.get(zoo[name].get("preprocessing"))
    config = {"crop_pct": 224 / 256, "interpolation": resized} if resized else None
    return ImageClassifier(model, ROBUSTBENCH_INPUT[dataset], (0.0,), (1.0,), n,
                           name=f"robustbench:{rest}", data_config=config).eval()


def _robustbench_files(entry: dict, dataset: str, threat: str, name: str, model_dir: str | Path) -> list[Path]:
    """The files robustbench's ``load_model`` reads under ``model_dir`` for a zoo entry (an
    ensemble's members as ``<name>.pt_m<i>.pt``); none where it reads no file there: ImageNet
    ``Standard*`` (torchvision's weights) and models robustbench takes from timm."""
    import timm

    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"
    ids = entry.get("gdrive_id")
    if timm.is_model(timm_name) or ids is None or (dataset == "imagenet" and "Standard" in name):
        return []
    path = Path(model_dir) / dataset / threat / f"{name}.pt"
    return [Path(f"{path}_m{i}.pt") for i in range(len(ids))] if isinstance(ids, list) else [path]


def _compat_robustbench():
    from ._compat import import_robustbench_utils

    return import_robustbench_utils()


def _file_classifier(spec: str, kwargs: dict[str, Any]) -> ImageClassifier:
    file, _, factory = spec.partition(":")
    path = Path(file)
    module_spec = importlib.util.spec_from_file_location(f"sdo_adv_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # the file may import modules beside it
    try:
        module_spec.loader.exec_module(module)
        factory = factory or "create_model"
        if not callable(getattr(module, factory, None)):
            raise ValueError(f"{path} has no callable {factory!r} (name it with {path}:<function>)")
        model = getattr(module, factory)()
    finally:
        sys.path.remove(folder)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{path}:{factory} returned {type(model).__name__}, not an nn.Module")
    return load_classifier(model, **kwargs)
