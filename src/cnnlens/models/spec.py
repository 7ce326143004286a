"""The model contract: pixel-space input in [0, 1]; normalisation is the first layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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

    def with_(self, **kw) -> ModelSpec:
        return replace(self, **kw)

    @property
    def random_weights(self) -> bool:
        """True when the network runs on random initial weights (no weights file, no pretrained download)."""
        return bool(self.extra.get("weights_random"))

    def settings(self) -> dict:
        """What the model is and expects, as a report's settings: weights (file and SHA-256), input, mean/std,
        classes (where their names came from), and which of these are cnnlens's defaults.

        >>> ModelSpec("m", (32, 32), channels=1, mean=(0.5,), std=(0.25,), class_names=("a", "b")).settings()["input"]
        '1×32×32 pixels in [0, 1]'
        """
        names = self.class_names
        source = {
            "given": "given",
            "declared": "declared by the model",
            "imagenet": "ImageNet's 1000 classes",
            "numbers": "no names: numbered",
            "data": "the data's folder names",
        }.get(self.extra.get("class_names_from", ""), "")
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        out: dict[str, Any] = {"model": self.name}
        if self.extra.get("architecture"):
            out["architecture"] = self.extra["architecture"]
        out["weights"] = self.extra.get("weights", "unknown")
        if self.random_weights:
            out["weights"] = f"{out['weights']} — random initial weights: explanations of an untrained model"
        if self.extra.get("weights_file"):
            out["weights file"] = self.extra["weights_file"]
            out["weights sha256"] = self.extra.get("weights_sha256")
        out["input"] = f"{self.channels}×{self.input_size[0]}×{self.input_size[1]} pixels in [0, 1]"
        out["mean"] = [round(float(v), 6) for v in self.mean]
        out["std"] = [round(float(v), 6) for v in self.std]
        out["classes"] = f"{len(names)}: {shown}" + (f" ({source})" if source else "")
        if self.extra.get("defaulted"):
            out["defaults used"] = (
                ", ".join(self.extra["defaulted"])
                + " (not declared by the model: cnnlens's defaults; set them with --mean/--std/--input-size)"
            )
        return out


class Normalize(nn.Module):
    """(x − mean) / std per channel; the first step of every cnnlens model."""

    mean: torch.Tensor  # buffers (register_buffer), declared for the type checker
    std: torch.Tensor

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
