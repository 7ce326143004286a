"""Deconvnet (Zeiler & Fergus 2014): project a unit's activation back to pixel space.

The forward records, for every max-pool, where each maximum came from (the
"switches"). Then one unit of the chosen channel (the strongest, by default; all
other activations of the layer set to zero) is sent back down through the
layers below it, each replaced by its transpose:

- max-pool → unpool: each value goes back to the position its switch recorded
  (overlapping windows add up);
- ReLU → ReLU on the reconstruction ("un-ReLU": keep it non-negative) — every ReLU the forward
  applies: ``nn.ReLU`` / ``nn.ReLU6`` modules and functional ``F.relu`` / ``relu_`` / ``F.relu6`` calls
  between the layers, in place or not (seen through :class:`cnnlens.rectifiers.RectifierMode`;
  ``settings["guided_relus"]`` counts them);
- convolution → transposed convolution with the same filters (no bias);
- batch norm (eval) and the model's input normalisation → their per-channel scale;
- average pooling, flatten, linear, reshape → their transposes.

This is the real switch-based reconstruction, for networks that are a chain of
these layers (VGG-style stacks, ``digits-cnn``). Anything else on the path — a
residual connection, a layer of another kind — raises a ValueError naming the
module; so does a forward that applies another activation functionally (GELU, SiLU, ...: no
un-ReLU rule for them). Guided backprop (:mod:`cnnlens.attribution`) covers any network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeGuard, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input

from ..autograd import needs_autograd
from ..inputs import check_not_empty
from ..models.spec import Normalize
from ..rectifiers import RectifierCall, RectifierMode, Rectify, skipped_note
from ..results import Result
from ..tap import LayerRef, LayerTap, resolve_layer


@dataclass(frozen=True)
class Projection(Result):
    """A deconvnet reconstruction.

    images: N×C×H×W in the input's space (signed; see :meth:`normalized`);
    layer, channel: the unit's layer and channel; positions: N×2 unit (row, col),
    or None when the whole map was projected; activations: N, the projected
    activation; chain: the modules walked back through, input first ("<relu>", "<relu_>", "<relu6>" for a
    functional ReLU between them); settings["guided_relus"]: the ReLU applications un-ReLU-ed on the way back.
    """

    images: torch.Tensor
    layer: str
    channel: int
    positions: torch.Tensor | None
    activations: torch.Tensor
    chain: tuple[str, ...]
    settings: dict = field(default_factory=dict)

    def normalized(self) -> torch.Tensor:
        """0.5 + r / (2·max|r|) per image (grey = 0), for display."""
        r = self.images
        m = r.abs().flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1, 1)
        return (0.5 + r / (2 * m)).clamp(0, 1)


_M = TypeVar("_M", bound=nn.Module)


def _is_stock(m: nn.Module, cls: type[_M]) -> TypeGuard[_M]:
    return isinstance(m, cls) and type(m).forward is cls.forward


def _same_data(a: torch.Tensor, b: torch.Tensor) -> bool:
    """b is a, or a reshaped view of it (flatten/view in forward())."""
    if a is b:
        return True
    return bool(
        torch.is_tensor(a)
        and torch.is_tensor(b)
        and a.numel() == b.numel()
        and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.is_contiguous()
        and b.is_contiguous()
    )


class _RecordedRelus(RectifierMode):
    """Records every ReLU application (lower bound 0) of a no-grad forward, in order; runs it unchanged."""

    gradient_only = False

    def __init__(self, active=None) -> None:
        super().__init__(active)
        self.calls: list[tuple[RectifierCall, torch.Tensor]] = []

    def rectify(self, call):
        if call.lo != 0.0:
            return None
        y = Rectify.apply(call.x, call.lo, call.hi, call.inplace)
        self.calls.append((call, y))
        return y


def _transpose(name: str, m: nn.Module, inp: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The reconstruction at module m's input, given the one at its output."""
    if _is_stock(m, nn.ReLU) or _is_stock(m, nn.ReLU6):
        return F.relu(r)
    if _is_stock(m, nn.MaxPool2d):
        _, idx = F.max_pool2d(inp, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
        out = torch.zeros(inp.shape[0], inp.shape[1], inp.shape[2] * inp.shape[3], dtype=r.dtype, device=r.device)
        out.scatter_add_(2, idx.flatten(2), r.flatten(2))
        return out.view_as(inp)
    if _is_stock(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise ValueError(
                f"deconvnet cannot invert module {name!r}: padding_mode={m.padding_mode!r} "
                "(only zero padding has a transposed convolution)"
            )
        pad = m.padding
        if isinstance(pad, str):
            total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
            if pad == "same" and any(t % 2 for t in total):
                raise ValueError(f"deconvnet cannot invert module {name!r}: its 'same' padding is asymmetric")
            pad = tuple(t // 2 for t in total) if pad == "same" else (0, 0)
        return conv2d_input(inp.shape, m.weight.detach().to(r.dtype), r, m.stride, pad, m.dilation, m.groups)
    if _is_stock(m, nn.BatchNorm2d) and m.running_var is not None:
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.detach()
        return r * scale.view(1, -1, 1, 1).to(r)
    if _is_stock(m, Normalize):
        return r / m.std.to(r)
    if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return r
    if _is_stock(m, nn.Flatten):
        return r.reshape(inp.shape)
    if _is_stock(m, nn.Linear):
        return r @ m.weight.detach().to(r)
    if _is_stock(m, nn.AvgPool2d) or _is_stock(m, nn.AdaptiveAvgPool2d):
        with torch.enable_grad():
            z = torch.zeros_like(inp, dtype=r.dtype).requires_grad_(True)
            if isinstance(m, nn.AvgPool2d):
                out = F.avg_pool2d(
                    z, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override
                )
            else:
                out = F.adaptive_avg_pool2d(z, m.output_size)
            (g,) = torch.autograd.grad(out, z, r.reshape(out.shape))  # average pooling is linear: this is its transpose
        return g
    raise ValueError(
        f"deconvnet cannot invert module {name!r} ({type(m).__name__}); it inverts chains of "
        "Conv2d, ReLU, MaxPool2d, BatchNorm2d, pooling and linear layers — use guided backprop for this model"
    )


@needs_autograd
def deconvnet(model: nn.Module, x: torch.Tensor, layer: LayerRef, channel: int, *, position="max") -> Projection:
    """Project one channel of a layer back to pixel space with switches (Zeiler & Fergus 2014).

    ``position``: ``"max"`` (the strongest unit of the channel in each image, as
    Zeiler & Fergus), ``(i, j)`` (one unit) or ``"all"`` (the channel's whole map).
    Every other activation of the layer is set to zero before the projection.

    Example::

        p = deconvnet(cnnlens.load_model("digits-cnn"), x, "features.6", channel=3)
        p.normalized()     # N×1×H×W, grey = 0
    """
    name, _ = resolve_layer(model, layer)
    if not torch.is_tensor(x) or x.dim() != 4:
        raise TypeError("x must be a tensor N×C×H×W in [0, 1]")
    check_not_empty(x)
    if not (position in ("max", "all") or (isinstance(position, (tuple, list)) and len(position) == 2)):
        raise ValueError("position must be 'max', 'all' or a (row, col) pair")
    if channel < 0:
        raise ValueError("channel must be ≥ 0")
    modules = dict(model.named_modules())
    leaves = [n for n, m in modules.items() if n and next(m.children(), None) is None]
    try:
        tap = LayerTap(model, leaves + [name], stop_after=name)
        relus = _RecordedRelus(active=lambda: not tap.probing)
        with tap, torch.no_grad(), relus:
            x = x.to(tap.dtype or x.dtype)  # the chain starts from the tensor the model receives
            tap.run(x)
            out = tap[name]
            if relus.skipped:
                raise ValueError(
                    f"deconvnet cannot invert this model: its forward applies {skipped_note(relus.skipped)} "
                    "(no un-ReLU rule for them); it inverts plain conv/ReLU/max-pool chains — use guided "
                    "backprop"
                )
            chain, steps = _chain(tap, relus, modules, leaves, x, out, name)
            if channel >= out.shape[1]:
                raise ValueError(f"channel {channel} is out of range: layer {name!r} has {out.shape[1]} channels")
            r, positions, vals = _seed(out.detach().float(), channel, position)
            for n, shape in reversed(steps):
                if n is None:  # a functional ReLU / ReLU6: un-ReLU, as for the modules
                    r = F.relu(r).reshape(shape)
                    continue
                inp = tap.inputs[n][0]
                r = _transpose(n, modules[n], inp.detach().float(), r)
                r = r.reshape(inp.shape)
    except ValueError as e:
        if "ran twice" in str(e):
            raise ValueError(
                f"deconvnet cannot invert this model: {str(e).split(';')[0]}, so the chain back to the "
                "input is not a plain conv/ReLU/max-pool sequence — use guided backprop"
            ) from e
        raise
    return Projection(
        r.detach().cpu(),
        name,
        int(channel),
        None if positions is None else positions.cpu(),
        vals.detach().cpu(),
        tuple(chain),
        settings={
            "position": position if isinstance(position, str) else list(position),
            "guided_relus": sum(1 for n, _ in steps if n is None or isinstance(modules[n], (nn.ReLU, nn.ReLU6))),
        },
    )


def _chain(tap: LayerTap, relus, modules: dict, leaves: list[str], x: torch.Tensor, out: torch.Tensor, name: str):
    """The executed leaves up to the layer, each taking the previous one's output (through functional ReLUs):
    (their names, with ``<relu>`` for a functional call; (module name or None for a functional ReLU, input shape)
    for each step). A leaf whose input is anything else cannot be inverted: ValueError."""
    # functional ReLU calls (not the ones inside nn.ReLU / nn.ReLU6 modules), in order
    module_outs = [tap.outputs[n] for n in tap.outputs if isinstance(modules.get(n), (nn.ReLU, nn.ReLU6))]
    functional = [(c, y) for c, y in relus.calls if not any(y is o for o in module_outs)]
    chain: list[str] = []
    steps: list[tuple[str | None, torch.Size]] = []
    prev, used = x, 0

    def through_relus(cursor):
        nonlocal used
        while used < len(functional) and _same_data(functional[used][0].x, cursor):
            c, y = functional[used]
            chain.append(f"<{c.name}>")
            steps.append((None, c.x.shape))
            cursor, used = y, used + 1
        return cursor

    for n in tap.outputs:
        if n not in leaves or n in chain:
            continue
        inp = tap.inputs[n][0] if tap.inputs.get(n) else None
        prev = through_relus(prev)
        if inp is None or not _same_data(prev, inp):
            raise ValueError(
                f"deconvnet cannot invert module {n!r} ({type(modules[n]).__name__}): its input is "
                "not the previous layer's output (a residual connection or a computation in "
                "forward()); it inverts plain conv/ReLU/max-pool chains — use guided backprop"
            )
        chain.append(n)
        steps.append((n, inp.shape))
        prev = tap.passed_on.get(n, tap.outputs[n])  # what the next layer received
    prev = through_relus(prev)
    if not _same_data(prev, out):
        raise ValueError(
            f"deconvnet cannot invert layer {name!r}: its output is not the last sub-layer's "
            "output (it computes something in forward()); pick one of its sub-layers"
        )
    return chain, steps


def _seed(act: torch.Tensor, channel: int, position):
    """What is projected back: the layer's activations ``act`` with all but the chosen units of ``channel``
    zeroed; (that tensor, the units' (row, col) per image or None, their values per image)."""
    r = torch.zeros_like(act)
    N = act.shape[0]
    positions = None
    if act.dim() == 2:
        r[:, channel] = act[:, channel]
        vals = act[:, channel]
    elif position == "all":
        r[:, channel] = act[:, channel]
        vals = act[:, channel].flatten(1).sum(1)
    else:
        H, W = act.shape[-2:]
        if position == "max":
            flat = act[:, channel].flatten(1).argmax(1)
            positions = torch.stack([flat // W, flat % W], 1)
        else:
            i, j = int(position[0]), int(position[1])
            if not (0 <= i < H and 0 <= j < W):
                raise ValueError(f"position {(i, j)} is outside the layer's {H}×{W} grid")
            positions = torch.tensor([[i, j]] * N)
        ar = torch.arange(N)
        vals = act[ar, channel, positions[:, 0], positions[:, 1]]
        r[ar, channel, positions[:, 0], positions[:, 1]] = vals
    return r, positions, vals
