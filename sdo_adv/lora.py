"""Low-rank adapters (peft LoRA) on a copy of a generator's UNet: the caller's networks stay as they are."""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sdo_adv.generator import DiffusionGenerator
from sdo_adv.memory import MemoryPlan

TARGETS = ("conv1", "conv2", "to_q", "to_k", "to_v", "to_out.0")  # diffusers' resnet convolutions and attention


def adapted(generator: DiffusionGenerator, rank: int, seed: int = 0,
            targets: Sequence[str] = TARGETS) -> tuple[DiffusionGenerator, dict[str, Tensor]]:
    """A copy of ``generator`` (sharing its scheduler, VAE and text encoder) whose UNet is a
    deep copy carrying LoRA adapters of ``rank`` on the layers named ``targets``, and the
    adapters' parameters by name (the only ones requiring grad). peft starts every adapter
    at zero (``B = 0``; ``A`` drawn from ``seed``), so the copy samples exactly as
    ``generator`` until they are trained."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:
        raise ImportError("a LoRA adapter needs peft: pip install 'sdo-adv[lora]'") from error
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    unet = copy.deepcopy(generator.unet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets)), unet)
    params = {name: p for name, p in unet.named_parameters() if "lora_" in name}
    if not params:
        raise ValueError(f"no layer of the UNet is named one of {list(targets)}")
    for name, p in unet.named_parameters():
        p.requires_grad_(name in params)
    tail = copy.copy(generator)
    tail._modules = dict(generator._modules)  # a shallow copy shares the module table
    tail.unet = unet
    tail.memory = MemoryPlan(generator.memory.mode, [unet])
    return tail, params


def _layers(unet: nn.Module):
    """``(base weight, lora_A weight, lora_B weight, scaling)`` of each adapted layer."""
    for module in unet.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            yield (module.base_layer.weight, module.lora_A["default"].weight, module.lora_B["default"].weight,
                   module.scaling["default"])


def _delta(a: Tensor, b: Tensor, scaling: float) -> Tensor:
    """The adapter's weight change ``scaling * B A``, flattened to ``(out, in * kernel)``."""
    return scaling * b.flatten(1) @ a.flatten(1)


def relative_change(unet: nn.Module) -> Tensor:
    """Each adapted layer's ``||scaling B A||_F / ||W||_F``."""
    return torch.stack([_delta(a, b, s).norm() / w.norm().clamp_min(1e-12) for w, a, b, s in _layers(unet)])


@torch.no_grad()
def bound_adapters(unet: nn.Module, bound: float) -> None:
    """Scale each adapter's ``B`` so that its weight change is at most ``bound`` times the
    layer's weight in Frobenius norm."""
    for w, a, b, s in _layers(unet):
        ratio = _delta(a, b, s).norm() / (bound * w.norm()).clamp_min(1e-12)
        if ratio > 1:
            b.div_(ratio)
