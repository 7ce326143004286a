"""The model contract: pixel-space input in [0, 1]; normalisation is the first layer."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """What travels with a model: input geometry, normalisation, classes, key layers.

    input_size: (H, W) the model expects; channels: 1 or 3; mean/std: per-channel
    normalisation applied inside the model; class_names: one per output logit;
    last_spatial_layer / classifier: dotted names (in the wrapped model) of the
    last N×C×H×W layer and of the final linear layer; pooled_layer: the layer
    whose output is global-average-pooled into the classifier (for CAM).
    """

    name: str
    input_size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    class_names: tuple[str, ...] = ()
    last_spatial_layer: str | None = None
    classifier: str | None = None
    pooled_layer: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_(self, **kw) -> "ModelSpec":
        return replace(self, **kw)


class Normalize(nn.Module):
    """(x − mean) / std per channel; the first step of every cnnlens model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"expected input N×{self.mean.shape[1]}×H×W in [0, 1], got shape {tuple(x.shape)}; "
                "load images with cnnlens.load_images(paths, model)"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class PixelModel(nn.Module):
    """A classifier that takes pixel-space input in [0, 1]: ``net(normalize(x))``.

    Layer names of the wrapped network are ``net.<name>``; cnnlens also accepts
    them without the ``net.`` prefix.
    """

    def __init__(self, net: nn.Module, spec: ModelSpec):
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.net = net
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))
