"""Prompts of a run's items for text-to-image generators, settled before any model loads."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..class_names import NAMED_SETS, ClassNames, classifier_classes, named_classes
from ..generator import Condition, DiffusionGenerator
from ..loading import generator_source
from .dataset import Dataset, Item
from .errors import RunError

DEFAULT_TEMPLATE = "a photo of a {}"


@dataclass(frozen=True)
class Prompts:
    """Each item's prompt: its own (the labels CSV's ``prompt`` column), else ``template``
    filled with the name of its class."""

    classes: ClassNames | None
    template: str

    def __call__(self, items: Sequence[Item]) -> list[str]:
        return [it.prompt or self.template.format(self.classes.names[it.label]) for it in items]


def label_classes(classifier: str, class_names: str | None) -> ClassNames | None:
    """The classes of a run's labels: ``class_names`` when given, else those the classifier
    spec names (None when it names none)."""
    try:
        return named_classes(class_names) if class_names is not None else classifier_classes(classifier)
    except ValueError as err:
        raise RunError(str(err), "class_names") from err


def recorded_synsets(settings: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The WordNet ids a recorded run mapped synset-named class folders by."""
    classes = label_classes(settings["classifier"], settings.get("class_names"))
    return classes.synsets if classes is not None else None


def text_conditional(generator: str) -> bool:
    """Whether a generator spec names a pipeline with a text encoder, from its
    ``model_index.json`` alone (no weights are read)."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(str(generator_source(generator)))
    except (OSError, ValueError) as err:
        raise RunError(f"cannot read the pipeline index of {generator}: {err}", "generator") from err
    return any(k.startswith("text_encoder") and isinstance(v, list) and v[0] is not None for k, v in index.items())


def run_prompts(generator: str, classes: ClassNames | None, dataset: Dataset, stored: Mapping[str, Any],
                prompt_template: str | None, negative_prompt: str | None,
                guidance_scale: float | None) -> Prompts | None:
    """The prompts of ``dataset``'s items when ``generator`` is text-conditional (else None).
    Class names come from ``classes``, else the generator's ``stored`` settings; the template
    is ``prompt_template``, else the stored one, else :data:`DEFAULT_TEMPLATE`. Raises
    :class:`RunError` for an item that would have no prompt, or a negative prompt without
    classifier-free guidance."""
    if not text_conditional(generator):
        if negative_prompt is not None:
            raise RunError(f"{generator} takes no prompts, so no negative prompt", "negative_prompt")
        return None
    guidance = guidance_scale if guidance_scale is not None else stored.get("guidance_scale", 1.0)
    if negative_prompt is not None and guidance == 1.0:
        raise RunError("a negative prompt acts only with classifier-free guidance: set guidance_scale "
                       "to a value other than 1", "negative_prompt")
    if classes is None and stored.get("class_names"):
        classes = ClassNames(tuple(stored["class_names"]), f"{generator}'s stored class names")
    unnamed = next((it for it in dataset.items
                    if it.prompt is None and (classes is None or it.label >= len(classes.names))), None)
    if unnamed is not None and classes is None:
        raise RunError(f"{generator} is a text-to-image generator and no class names are known to build its "
                       f"prompts from: name the classes ({', '.join(NAMED_SETS)} or a file of one name per line) "
                       "or give every image a prompt (a prompt column in the labels CSV)", "class_names")
    if unnamed is not None:
        raise RunError(f"label {unnamed.label} of {unnamed.source} has no name among the {len(classes.names)} "
                       f"of {classes.source}", "class_names")
    return Prompts(classes, prompt_template or stored.get("prompt_template") or DEFAULT_TEMPLATE)


def use_negative_prompt(generator: DiffusionGenerator, text: str) -> None:
    """Make ``generator``'s text conditioning take ``text`` instead of the empty prompt as the
    unconditional branch of classifier-free guidance."""
    null = generator.condition(prompts=[text]).embeds
    condition = generator.condition

    def with_negative(labels: Tensor | None = None, prompts: Sequence[str] | None = None) -> Condition | None:
        cond = condition(labels=labels, prompts=prompts)
        return Condition(cond.kind, cond.embeds, null) if cond is not None and cond.kind == "text" else cond

    generator.condition = with_negative
