"""Layer outputs as spatial grids: N×C×h×w, also for models whose features are tokens.

Convolutional layers give N×C×h×w already. Other layouts are mapped onto the same
grid so that the CAM family, dataset search and neuron statistics work unchanged:

* **tokens** N×T×C (timm ViT, DeiT, ...): the first ``num_prefix_tokens`` tokens
  (class token, distillation token, registers — the count read from the model) are
  dropped and the remaining T − p tokens, which must form an h×w grid with the
  input's aspect ratio, are laid out row by row (timm's patch order);
* **channels-last** N×h×w×C (timm Swin stages, ConvNeXt's LayerNorm/MLP inside a
  block): permuted to N×C×h×w when the model declares NHWC outputs (timm's
  ``output_fmt``) or the module is a LayerNorm/Linear over the last dimension, and
  only if h×w has the input's aspect ratio.

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

_NCHW_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                 nn.ConvTranspose2d, nn.Upsample, nn.GroupNorm, nn.InstanceNorm2d)
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


def _last_dim_module(module: nn.Module | None, c: int) -> bool:
    """Whether ``module`` ends in a LayerNorm/Linear acting on a last dimension of size c (a channels-last block)."""
    if module is None:
        return False
    last = [m for m in module.modules() if isinstance(m, _LAST_DIM_MODULES)]
    if not last:
        return False
    m = last[-1]
    return getattr(m, "out_features", None) == c or tuple(getattr(m, "normalized_shape", ()))[-1:] == (c,)


def _aspect_ok(h: int, w: int, H: int, W: int) -> bool:
    """Whether an h×w grid covers an H×W input with (about) one stride in both directions."""
    if h < 1 or w < 1 or h > H or w > W:
        return False
    sh, sw = H / h, W / w
    return abs(sh - sw) <= 0.2 * max(sh, sw)


def _token_grid(m: int, H: int, W: int) -> tuple[int, int] | None:
    h = max(1, round(math.sqrt(m * H / W)))
    for hh in (h, h - 1, h + 1):
        if hh >= 1 and m % hh == 0 and _aspect_ok(hh, m // hh, H, W):
            return hh, m // hh
    return None


def grid_layout(t: torch.Tensor, model: nn.Module, module: nn.Module | None, input_hw: tuple[int, int],
                name: str = "the layer") -> tuple[str, int]:
    """("nchw" | "nhwc" | "tokens", prefix tokens) for a layer output ``t``; a ValueError when it has no grid."""
    H, W = (int(v) for v in input_hw)
    shape = tuple(t.shape)
    if t.dim() == 4:
        _, a, b, c = shape
        nchw, nhwc = _aspect_ok(b, c, H, W), _aspect_ok(a, b, H, W)
        if isinstance(module, _NCHW_MODULES) or not nhwc:
            return "nchw", 0
        last_dim = _last_dim_module(module, c)
        if (_declares_nhwc(model) or last_dim) and (not nchw or _declares_nhwc(model)):
            return "nhwc", 0
        return "nchw", 0
    if t.dim() == 3:
        _, T, C = shape
        p = prefix_tokens(model)
        if T - p >= 1 and _token_grid(T - p, H, W) is not None:
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
    h, w = _token_grid(T - prefix, *input_hw)
    return t[:, prefix:].transpose(1, 2).reshape(n, C, h, w)


def as_grid(t: torch.Tensor, model: nn.Module, module: nn.Module | None, input_hw: tuple[int, int],
            name: str = "the layer") -> torch.Tensor:
    """``t`` as N×C×h×w (see the module docs); logs the mapping when it is not the identity."""
    layout, prefix = grid_layout(t, model, module, input_hw, name)
    g = to_grid(t, layout, prefix, input_hw)
    if layout == "tokens":
        log.info("layer %s: %d tokens → %d prefix token(s) dropped, %d×%d grid", name, t.shape[1], prefix,
                 g.shape[-2], g.shape[-1])
    elif layout == "nhwc":
        log.info("layer %s: channels-last N×H×W×C → N×C×H×W (%d×%d grid)", name, g.shape[-2], g.shape[-1])
    return g
