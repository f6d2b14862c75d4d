"""Class names for the labels of known datasets and classifiers, looked up offline.

Text-to-image generators are conditioned on prompts, built from the name of each label's class.
Names come from a named set (``imagenet``, ``imagenet-22k``, ... as timm's ``ImageNetInfo``
knows them; ``cifar10``, ``cifar100``), a file of one name per line, or a classifier spec
(timm's pretrained configuration, RobustBench's dataset, an embedded model's ``label_names``),
without loading any weights.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100 = tuple(name.replace("_", " ") for name in """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split())
NAMED_SETS = ("imagenet", "cifar10", "cifar100")  # also any ImageNet subset timm knows, e.g. imagenet-22k
SYNSET = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class ClassNames:
    """The name of each class index (``names``), where they come from (``source``, for
    messages) and, for ImageNet subsets, each class's WordNet id (``synsets``)."""

    names: tuple[str, ...]
    source: str
    synsets: tuple[str, ...] | None = None


def imagenet_classes(subset: str = "imagenet-1k") -> ClassNames:
    """An ImageNet subset's classes from timm's tables: names are the first WordNet lemma of
    each class ("tabby, tabby cat" -> "tabby")."""
    from timm.data import ImageNetInfo

    try:
        info = ImageNetInfo(subset)
    except AssertionError:
        raise ValueError(f"unknown ImageNet subset {subset!r}") from None
    names = tuple(d.split(",")[0].strip() for d in info.label_descriptions())
    return ClassNames(names, f"timm's {subset} labels", tuple(info.label_names()))


def named_classes(name: str) -> ClassNames:
    """Classes of a named set (:data:`NAMED_SETS` or an ImageNet subset such as
    ``imagenet-22k``) or of a UTF-8 text file with one class name per line, in index order."""
    key = name.strip().lower()
    if key == "cifar10":
        return ClassNames(CIFAR10, "CIFAR-10")
    if key == "cifar100":
        return ClassNames(CIFAR100, "CIFAR-100")
    if key == "imagenet":
        return imagenet_classes()
    path = Path(name)
    if path.is_file():
        return _read_names(path)
    if key.startswith("imagenet"):
        return imagenet_classes(key)
    raise ValueError(f"class names {name!r} are neither {', '.join(NAMED_SETS)} nor an existing file "
                     "(one name per line)")


def classifier_classes(spec: str) -> ClassNames | None:
    """The classes a classifier spec names, from its stored configuration (no weights are
    read): an embedded model's ``label_names``, a timm model's ImageNet subset (or its
    ``label_names``), a RobustBench dataset's classes; None when the spec does not say
    (classifier files)."""
    scheme, sep, rest = str(spec).partition(":")
    if not sep:
        return None
    if scheme == "sdo-adv":
        from .loading import embedded_models

        names = embedded_models().get(rest, {}).get("config", {}).get("pretrained_cfg", {}).get("label_names")
        return ClassNames(tuple(names), f"{spec}'s label names") if names else None
    if scheme == "timm":
        return _timm_classes(rest.partition("@")[0])
    if scheme == "robustbench":
        dataset = rest.split("/")[0]
        if dataset == "imagenet":
            return imagenet_classes()
        return named_classes(dataset) if dataset in NAMED_SETS else None
    return None


def synset_labels(folders: Sequence[str], synsets: Sequence[str] | None = None) -> dict[str, int] | None:
    """Class index of each folder when every name is a WordNet id (``n01440764``), by its
    position in ``synsets`` (default: ImageNet-1k's); None when some name is not one."""
    if not folders or not all(SYNSET.fullmatch(f) for f in folders):
        return None
    index = {s: i for i, s in enumerate(synsets if synsets is not None else imagenet_classes().synsets)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise ValueError(f"class folder(s) {', '.join(unknown[:3])} are not among the {len(index)} ImageNet "
                         "classes of the classifier")
    return {f: index[f] for f in folders}


def _timm_classes(name: str) -> ClassNames | None:
    from timm.data import infer_imagenet_subset
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.label_names:
        return ClassNames(tuple(cfg.label_names), f"timm:{name}'s label names")
    subset = infer_imagenet_subset({"num_classes": cfg.num_classes})
    return imagenet_classes(subset) if subset else None


def _read_names(path: Path) -> ClassNames:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a UTF-8 text file: {err}") from err
    while lines and not lines[-1].strip():
        lines.pop()
    blank = next((i + 1 for i, line in enumerate(lines) if not line.strip()), None)
    if not lines or blank is not None:
        raise ValueError(f"{path} must hold one class name per line, in class-index order"
                         + (f"; line {blank} is empty" if blank else "; it is empty"))
    return ClassNames(tuple(line.strip() for line in lines), str(path))
