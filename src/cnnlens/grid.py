"""Layer outputs as spatial grids: N×C×h×w, also for models whose features are tokens.

Convolutional layers give N×C×h×w already. Other layouts are mapped onto the same
grid so that the CAM family, dataset search and neuron statistics work unchanged:

* **tokens** N×T×C (timm ViT, DeiT, ...): the first ``num_prefix_tokens`` tokens
  (class token, distillation token, registers — the count read from the model) are
  dropped and the remaining T − p tokens, which must form an h×w grid with the
  input's aspect ratio, are laid out row by row (timm's patch order);
* **channels-last** N×h×w×C (timm and torchvision Swin stages, ConvNeXt's LayerNorm/MLP
  inside a block): permuted to N×C×h×w.

Which of N×C×h×w and N×h×w×C a 4-D output is, is decided from what the module is and
does, never from a shape that fits both ways (C equal to the grid width: a ConvNeXt
block's LayerNorm at N×16×16×16, a Swin stage 0 at 384² with 96 channels on 96×96):

1. ``layout="nchw" | "nhwc"`` given by the caller wins;
2. a shape that fits only one way is read that way;
3. the module: a stock 2-d convolution, norm or pooling (or timm's ``LayerNorm2d``) → N×C×h×w; a LayerNorm / Linear
   over a last dimension of size C (not timm's ``LayerNorm2d``) → N×h×w×C; a permute
   module (torchvision's ``Permute``) → by its ``dims``; timm / torchvision Swin blocks,
   stages and patch merging → N×h×w×C, ConvNeXt blocks and stages (timm ``ConvNeXtBlock``,
   ``ConvNeXtStage``, torchvision ``CNBlock``) → N×C×h×w; an ``nn.Sequential`` → as its
   last layout-setting child; another container → N×h×w×C if everything inside it acts on
   the last dimension (timm's ``Mlp``), N×C×h×w if nothing inside it is channels-last;
4. a model with no channels-last part at all (no LayerNorm over channels, permute module
   or Swin block) → N×C×h×w; a model that declares NHWC outputs (timm's ``output_fmt``) → N×h×w×C;
5. otherwise a one-line error that asks for ``layout=``.

Each mapping is logged once per call at INFO. A layer whose output cannot be mapped
(N×C after pooling, a token count that is no grid) gets a one-line error.
Reshaping is linear, so a gradient taken on the layer's own output maps the same way.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

log = logging.getLogger(__name__)

_NCHW_MODULES = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.ConvTranspose2d,
    nn.Upsample,
    nn.GroupNorm,
    nn.InstanceNorm2d,
)
_LAST_DIM_MODULES = (nn.LayerNorm, nn.Linear)


def prefix_tokens(model: nn.Module) -> int:
    """How many tokens precede the patch tokens (timm's ``num_prefix_tokens``; 0 when the model does not say)."""
    for m in model.modules():
        n = getattr(m, "num_prefix_tokens", None)
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            return n
    return 0


def _declares_nhwc(model: nn.Module) -> bool:
    return any(str(getattr(m, "output_fmt", "")).upper() == "NHWC" for m in model.modules())


def _aspect_ok(h: int, w: int, H: int, W: int) -> bool:
    """Whether an h×w grid covers an H×W input with (about) one stride in both directions."""
    if h < 1 or w < 1 or h > H or w > W:
        return False
    sh, sw = H / h, W / w
    return abs(sh - sw) <= 0.2 * max(sh, sw)


def token_grid(m: int, H: int, W: int) -> tuple[int, int] | None:
    """The (h, w) grid ``m`` tokens form for an H×W input (h·w = m, aspect close to the input's), or None."""
    h = max(1, round(math.sqrt(m * H / W)))
    for hh in (h, h - 1, h + 1):
        if hh >= 1 and m % hh == 0 and _aspect_ok(hh, m // hh, H, W):
            return hh, m // hh
    return None


LAYOUTS = ("nchw", "nhwc")

#: blocks of timm and torchvision whose outputs are channels-last / channels-first (by class name, from those packages)
_NHWC_CLASSES = {
    "SwinTransformerBlock",
    "SwinTransformerBlockV2",
    "SwinTransformerStage",
    "SwinTransformerV2Stage",
    "PatchMerging",
    "PatchMergingV2",
}
_NCHW_CLASSES = {"ConvNeXtBlock", "ConvNeXtStage", "CNBlock"}
#: layout-neutral leaves: an nn.Sequential's layout is its last child's that is not one of these
_NEUTRAL = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.Mish,
)


def check_layout(layout: str | None) -> str | None:
    """None, "nchw" or "nhwc"; a ValueError otherwise."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be 'nchw', 'nhwc' or None (decided from the layer), got {layout!r}")
    return layout


def _library_class(m: nn.Module, names: set) -> bool:
    t = type(m)
    return t.__name__ in names and t.__module__.split(".")[0] in ("timm", "torchvision")


def _last_dim(m: nn.Module, c: int | None = None) -> bool:
    """A LayerNorm / Linear acting on the last dimension (of size c when given); not timm's LayerNorm2d."""
    if not isinstance(m, _LAST_DIM_MODULES) or type(m).__name__.endswith("2d"):
        return False
    if c is None:
        return True
    return getattr(m, "out_features", None) == c or tuple(getattr(m, "normalized_shape", ()))[-1:] == (c,)


def _permute_dims(m: nn.Module) -> tuple | None:
    dims = getattr(m, "dims", None)
    if type(m).__name__ == "Permute" and isinstance(dims, (list, tuple)) and len(dims) == 4:
        return tuple(int(d) for d in dims)
    return None


def _nchw_module(m: nn.Module) -> bool:
    """A stock 2-d convolution / norm / pooling, timm's ``LayerNorm2d``, a ConvNeXt block or stage."""
    return (
        isinstance(m, _NCHW_MODULES)
        or (isinstance(m, nn.LayerNorm) and type(m).__name__.endswith("2d"))
        or _library_class(m, _NCHW_CLASSES)
    )


def _channels_last_part(m: nn.Module) -> bool:
    """A module that works on channels-last tensors: a LayerNorm over channels, a permute, a Swin block."""
    return (
        (isinstance(m, nn.LayerNorm) and not type(m).__name__.endswith("2d"))
        or _permute_dims(m) is not None
        or _library_class(m, _NHWC_CLASSES)
    )


def module_layout(module: nn.Module | None, c: int | None = None) -> str | None:
    """ "nchw" | "nhwc" from what ``module`` is and does (see the module docs, rule 3), or None when it does not say."""
    if module is None:
        return None
    if _nchw_module(module):
        return "nchw"
    if _library_class(module, _NHWC_CLASSES) or _last_dim(module, c):
        return "nhwc"
    dims = _permute_dims(module)
    if dims is not None:
        return "nhwc" if dims == (0, 2, 3, 1) else "nchw" if dims == (0, 3, 1, 2) else None
    children = list(module.children())
    if not children:
        return None
    if isinstance(module, nn.Sequential):
        for child in reversed(children):
            if not isinstance(child, _NEUTRAL):
                return module_layout(child, c)
        return None
    inner = list(module.modules())
    channels_last = any(_channels_last_part(m) for m in inner)
    if (channels_last or any(_last_dim(m) for m in inner)) and not any(_nchw_module(m) for m in inner):
        return "nhwc"  # only modules that act on a last dimension (timm's Mlp of Linear layers)
    return None if channels_last else "nchw"


def grid_layout(
    t: torch.Tensor,
    model: nn.Module,
    module: nn.Module | None,
    input_hw: tuple[int, int],
    name: str = "the layer",
    layout: str | None = None,
) -> tuple[str, int]:
    """("nchw" | "nhwc" | "tokens", prefix tokens) for a layer output ``t``; a ValueError when it has no grid,
    or when N×C×h×w and N×h×w×C both fit and nothing says which (then pass ``layout=``)."""
    H, W = (int(v) for v in input_hw)
    shape = tuple(t.shape)
    if t.dim() == 4:
        _, a, b, c = shape
        nchw, nhwc = _aspect_ok(b, c, H, W), _aspect_ok(a, b, H, W)
        if (layout := check_layout(layout)) is not None:
            if not (nchw if layout == "nchw" else nhwc):
                raise ValueError(
                    f"layer {name!r} outputs {shape}, which is no {layout.upper()} grid for a {H}×{W} "
                    f"input; pass layout={'nhwc' if layout == 'nchw' else 'nchw'!r} or leave layout=None"
                )
            return layout, 0
        said = module_layout(module, c)
        if not nhwc:
            return "nchw", 0
        if not nchw:  # only channels-last fits (an N×C×h×w reading would not have the input's aspect)
            return ("nchw" if said == "nchw" else "nhwc"), 0
        if said is not None:
            return said, 0
        if not any(_channels_last_part(m) for m in model.modules()):
            return "nchw", 0
        if _declares_nhwc(model):
            return "nhwc", 0
        raise ValueError(
            f"layer {name!r} outputs {shape}, which reads both as N×C×H×W and N×H×W×C, and nothing about "
            f"{type(module).__name__ if module is not None else 'it'} says which; pass layout='nchw' or layout='nhwc'"
        )
    if t.dim() == 3:
        _, T, C = shape
        p = prefix_tokens(model)
        if T - p >= 1 and token_grid(T - p, H, W) is not None:
            return "tokens", p
        raise ValueError(
            f"layer {name!r} outputs {T} tokens of {C} values; after {p} prefix token(s) the remaining {T - p} do not "
            f"form a grid for a {H}×{W} input; name a layer whose tokens are patches (e.g. a transformer block)"
        )
    raise ValueError(
        f"layer {name!r} outputs {shape}, which has no spatial grid (N×C×H×W, N×H×W×C or N×tokens×C); "
        "name a layer before the global pooling, e.g. the last block"
    )


def to_grid(t: torch.Tensor, layout: str, prefix: int, input_hw: tuple[int, int]) -> torch.Tensor:
    """The output in N×C×h×w for a layout from :func:`grid_layout`."""
    if layout == "nchw":
        return t
    if layout == "nhwc":
        return t.permute(0, 3, 1, 2)
    n, T, C = t.shape
    hw = token_grid(T - prefix, *input_hw)
    assert hw is not None  # grid_layout gives "tokens" only when the tokens form a grid
    h, w = hw
    return t[:, prefix:].transpose(1, 2).reshape(n, C, h, w)


def as_grid(
    t: torch.Tensor,
    model: nn.Module,
    module: nn.Module | None,
    input_hw: tuple[int, int],
    name: str = "the layer",
    layout: str | None = None,
) -> torch.Tensor:
    """``t`` as N×C×h×w (see the module docs); logs the mapping when it is not the identity."""
    layout, prefix = grid_layout(t, model, module, input_hw, name, layout)
    g = to_grid(t, layout, prefix, input_hw)
    if layout == "tokens":
        log.info(
            "layer %s: %d tokens → %d prefix token(s) dropped, %d×%d grid",
            name,
            t.shape[1],
            prefix,
            g.shape[-2],
            g.shape[-1],
        )
    elif layout == "nhwc":
        log.info("layer %s: channels-last N×H×W×C → N×C×H×W (%d×%d grid)", name, g.shape[-2], g.shape[-1])
    return g
