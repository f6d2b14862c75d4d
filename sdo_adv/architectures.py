"""A tiny timm-like registry of the small networks behind the embedded digit models.

``create(name, **model_args)`` builds a randomly initialized module (as ``timm.create_model``
with ``pretrained=False``); the embedded classifiers name these architectures in their
``config.json`` as ``"sdo-adv/<name>"``. Every module takes *normalized* images
``(B, C, H, W)`` (the :class:`~sdo_adv.classifier.ImageClassifier` wrapper resizes and
normalizes) and returns logits ``(B, num_classes)``.

Only torch is needed: no scikit-learn at runtime, even for ``rbf_svm``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

PREFIX = "sdo-adv/"
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a module class or factory under ``name``."""
    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory
    return add


def list_models() -> list[str]:
    """The registered architecture names (without the ``sdo-adv/`` prefix), sorted."""
    return sorted(_REGISTRY)


def is_model(name: str) -> bool:
    """Whether ``name`` (with or without the ``sdo-adv/`` prefix) is registered."""
    return name.removeprefix(PREFIX) in _REGISTRY


def create(name: str, **model_args: Any) -> nn.Module:
    """Build architecture ``name`` (``"mlp"`` or ``"sdo-adv/mlp"``) with ``model_args``,
    randomly initialized and in eval mode."""
    key = name.removeprefix(PREFIX)
    if key not in _REGISTRY:
        raise ValueError(f"unknown sdo-adv architecture {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[key](**model_args).eval()


def _dense(width: int, hidden: Sequence[int], num_classes: int, drop_rate: float) -> list[nn.Module]:
    """Linear -> ReLU -> Dropout per hidden width, then the Linear classification layer."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
        width = h
    return layers + [nn.Linear(width, num_classes)]


@register("mlp")
class MLP(nn.Module):
    """Fully connected net on the flattened pixels: ``(B, in_chans, img_size, img_size)``
    normalized images -> ``(B, num_classes)`` logits. ReLU hidden layers, optional dropout."""

    def __init__(self, in_chans: int = 1, img_size: int = 32, hidden: Sequence[int] = (512, 256),
                 num_classes: int = 10, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Flatten(), *_dense(in_chans * img_size * img_size, hidden, num_classes,
                                                       drop_rate))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register("lenet")
class LeNet(nn.Module):
    """LeNet-5-style CNN for 28x28 inputs: conv5 (padding 2) -> max-pool -> conv5 -> max-pool ->
    two hidden dense layers. ``(B, in_chans, img_size, img_size)`` normalized images ->
    ``(B, num_classes)`` logits. ReLU instead of the original tanh."""

    def __init__(self, in_chans: int = 1, img_size: int = 28, channels: Sequence[int] = (6, 16),
                 hidden: Sequence[int] = (120, 84), num_classes: int = 10, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten())
        side = (img_size // 2 - 4) // 2
        self.classifier = nn.Sequential(*_dense(c2 * side * side, hidden, num_classes, drop_rate))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register("cnn")
class CNN(nn.Module):
    """VGG-style CNN: per stage ``blocks[s]`` conv3x3-BN-ReLU of width ``widths[s]`` and a 2x2
    max-pool, then global average pooling, dropout and a linear head. ``(B, in_chans, H, W)``
    normalized images (H, W divisible by ``2 ** len(widths)``) -> ``(B, num_classes)`` logits."""

    def __init__(self, in_chans: int = 1, widths: Sequence[int] = (32, 64, 128),
                 blocks: Sequence[int] = (2, 2, 2), num_classes: int = 10, drop_rate: float = 0.0) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(f"blocks {list(blocks)} and widths {list(widths)} differ in length")
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        c = in_chans
        for w, n in zip(widths, blocks):
            for _ in range(n):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate),
                                  nn.Linear(c, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def ovo_pairs(num_classes: int) -> list[tuple[int, int]]:
    """The one-vs-one class pairs ``(i, j)``, ``i < j``, in libsvm / scikit-learn order."""
    return [(i, j) for i in range(num_classes) for j in range(i + 1, num_classes)]


@register("rbf_svm")
class RBFSVM(nn.Module):
    """A multi-class RBF-kernel SVM (libsvm one-vs-one, as scikit-learn's ``SVC``) in torch.

    Buffers, laid out as the fitted ``SVC``'s attributes (support vectors grouped by class,
    ``n_support`` per class in ``model_args``):

    * ``support_vectors`` ``(n_sv, n_features)``: stored as ``sv_dtype`` and multiplied by
      ``sv_scale`` (e.g. uint8 pixels and 1/255: exact for 8-bit training images). With
      ``border > 0`` they are images whose ``border``-pixel frame is zero, stored without it:
      inputs are then ``(B, C, H, W)`` and ``n_features = C (H - 2 border) (W - 2 border)``;
    * ``dual_coef`` ``(num_classes - 1, n_sv)`` float64, ``intercept`` ``(n_pairs,)`` float64,
      ``gamma`` ``()`` float64.

    ``forward``: ``(B, ...)`` inputs flattened to ``(B, n_features)`` (the features the SVM was
    fit on, e.g. raw [0, 1] pixels; with ``border``, the frame enters the distances only
    through the input's own norm) -> ``(B, num_classes)`` scores, computed in float64 and
    returned in the input's dtype: the OvO vote counts plus ``s / (3 (|s| + 1))`` with ``s`` the
    summed pairwise decision values, exactly ``SVC(decision_function_shape="ovr")
    .decision_function``. Their argmax is ``SVC(break_ties=True).predict``.
    """

    def __init__(self, n_features: int, n_support: Sequence[int], sv_dtype: str = "float32",
                 sv_scale: float = 1.0, border: int = 0) -> None:
        super().__init__()
        self.n_support = [int(n) for n in n_support]
        self.num_classes = len(self.n_support)
        self.sv_scale = float(sv_scale)
        self.border = int(border)
        n_sv, k = sum(self.n_support), self.num_classes
        dtype = getattr(torch, sv_dtype)
        self.register_buffer("support_vectors", torch.zeros(n_sv, n_features, dtype=dtype))
        self.register_buffer("dual_coef", torch.zeros(k - 1, n_sv, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(k * (k - 1) // 2, dtype=torch.float64))
        self.register_buffer("gamma", torch.zeros((), dtype=torch.float64))
        pairs = ovo_pairs(k)
        first = torch.zeros(len(pairs), k, dtype=torch.float64)
        second = torch.zeros(len(pairs), k, dtype=torch.float64)
        for p, (i, j) in enumerate(pairs):
            first[p, i] = second[p, j] = 1.0
        self.register_buffer("_first", first, persistent=False)
        self.register_buffer("_second", second, persistent=False)

    def pair_coefficients(self) -> Tensor:
        """``(n_pairs, n_sv)`` float64: for pair ``(i, j)`` the dual coefficients of class i's
        and class j's support vectors (zero elsewhere), as libsvm combines them."""
        k, coef = self.num_classes, self.dual_coef
        start = [0]
        for n in self.n_support:
            start.append(start[-1] + n)
        out = coef.new_zeros(k * (k - 1) // 2, coef.shape[1])
        for p, (i, j) in enumerate(ovo_pairs(k)):
            si, sj = slice(start[i], start[i + 1]), slice(start[j], start[j + 1])
            out[p, si] = coef[j - 1, si]
            out[p, sj] = coef[i, sj]
        return out

    def pairwise_decision(self, x: Tensor) -> Tensor:
        """``(B, ...)`` features -> ``(B, n_pairs)`` float64 OvO decision values (positive: the
        pair's first class), as ``SVC(decision_function_shape="ovo").decision_function``."""
        x = x.to(torch.float64)
        inner = x
        if self.border:
            if x.dim() != 4:
                raise ValueError(f"with border={self.border} inputs must be (B, C, H, W), got {tuple(x.shape)}")
            b = self.border
            inner = x[:, :, b:x.shape[2] - b, b:x.shape[3] - b]
        x, inner = x.reshape(x.shape[0], -1), inner.reshape(x.shape[0], -1)
        sv = self.support_vectors.to(torch.float64) * self.sv_scale
        sq = (x * x).sum(1, keepdim=True) + (sv * sv).sum(1) - 2.0 * inner @ sv.T
        kernel = torch.exp(-self.gamma * sq.clamp_min(0.0))
        return kernel @ self.pair_coefficients().T + self.intercept

    def forward(self, x: Tensor) -> Tensor:
        dec = self.pairwise_decision(x)
        votes = (dec >= 0).to(dec.dtype) @ self._first + (dec < 0).to(dec.dtype) @ self._second
        summed = dec @ (self._first - self._second)
        scores = votes + summed / (3.0 * (summed.abs() + 1.0))
        return scores.to(x.dtype if x.is_floating_point() else torch.float32)
