"""Receptive fields: which input pixels a unit of a layer can see.

The analytic field is computed by following every torch operation of one
forward pass from the input to the layer (conv, pooling, padding, slicing,
element-wise ops, concatenation), so residual branches, functional padding
(TF-style "same" convolutions) and concatenations are handled from the real
graph of the model, not from the module list. Per axis a unit ``i`` of a layer
sees input pixels ``[offset + i·stride, offset + i·stride + size)``, and

    conv/pool (kernel k, stride s, padding p, dilation d):
        size' = size + (d·(k−1))·stride,  stride' = stride·s,  offset' = offset − p·stride
    element-wise op of several branches: the union of their fields (the larger one)

The gradient probe checks it independently: the support of ∂(Σ_c a_c,ij)/∂x
over a few random inputs is the unit's field, clipped to the image.

Tracing uses a :class:`torch.overrides.TorchFunctionMode` (an observer of the
torch calls made in one forward, active only inside :func:`receptive_field`),
not a module hook: nothing is registered on the model. The layer itself is
read and the forward stopped through :class:`cnnlens.tap.LayerTap`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..autograd import needs_autograd
from ..results import Result
from ..tap import LayerRef, LayerTap, resolve_layer

log = logging.getLogger(__name__)

Pair = tuple[int, int]


def _per_axis(f: Callable[[int], int]) -> Pair:
    """(f(0), f(1)): one value per axis (rows, columns)."""
    return f(0), f(1)


def _hw(t: torch.Tensor) -> Pair:
    """The spatial size (H, W) of a tensor ...×H×W."""
    return int(t.shape[-2]), int(t.shape[-1])


# ---------------------------------------------------------------------------
# the field of one tensor, per axis (rows, columns)
@dataclass(frozen=True)
class _Field:
    kind: str  # "local" | "global" | "unknown"
    size: Pair = (1, 1)
    stride: Pair = (1, 1)
    offset: Pair = (0, 0)
    hw: Pair = (0, 0)  # spatial size of the tensor this field describes
    why: str = ""

    def conv(self, k: Pair, s: Pair, p: Pair, d: Pair, hw: Pair) -> _Field:
        if self.kind != "local":
            return dataclasses.replace(self, hw=hw)
        size = _per_axis(lambda a: self.size[a] + d[a] * (k[a] - 1) * self.stride[a])
        stride = _per_axis(lambda a: self.stride[a] * s[a])
        offset = _per_axis(lambda a: self.offset[a] - p[a] * self.stride[a])
        return _Field("local", size, stride, offset, hw)


def _pair(v: Any) -> Pair:
    if isinstance(v, (list, tuple)):
        if len(v) == 0:
            return None  # type: ignore[return-value]
        if len(v) == 1:
            return (int(v[0]), int(v[0]))
        return (int(v[-2]), int(v[-1]))
    return (int(v), int(v))


def _bind(names: tuple[str, ...], args: tuple, kwargs: dict, defaults: dict) -> dict:
    out = dict(defaults)
    out.update(zip(names, args, strict=False))  # positional args may stop before the last name
    out.update(kwargs or {})
    return out


def _tensors(obj: Any):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _union(fields: list[_Field], hw: Pair, op: str) -> _Field:
    if any(f.kind == "unknown" for f in fields):
        return next(f for f in fields if f.kind == "unknown")
    if any(f.kind == "global" for f in fields):
        return _Field("global", hw=hw)
    strides = {f.stride for f in fields}
    if len(strides) > 1:
        return _Field("unknown", hw=hw, why=f"{op} joins branches with different strides {sorted(strides)}")
    start = _per_axis(lambda a: min(f.offset[a] for f in fields))
    end = _per_axis(lambda a: max(f.offset[a] + f.size[a] for f in fields))
    return _Field("local", _per_axis(lambda a: end[a] - start[a]), fields[0].stride, start, hw)


_CONV = ("conv2d",)
_POOL = ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d")
_ADAPTIVE = ("adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices")


class _FieldTracer(TorchFunctionMode):
    """Propagate receptive fields through every torch call of one forward pass."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.fields: dict[int, _Field] = {id(x): _Field("local", hw=_hw(x))}
        self._keep = [x]  # keep tensors alive so ids are not reused during the pass

    def field(self, t: torch.Tensor) -> _Field | None:
        return self.fields.get(id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [(t, self.fields[id(t)]) for t in _tensors((args, kwargs)) if id(t) in self.fields]
        if not ins:
            return out
        name = getattr(func, "__name__", str(func))
        outs = list(_tensors(out))
        if not outs:
            return out
        first = ins[0][1]
        for o in outs:
            if o.dim() != 4:
                f = _Field("global", hw=(1, 1)) if first.kind != "unknown" else first
            else:
                f = self._rule(name, args, kwargs, ins, o)
            self.fields[id(o)] = f
            self._keep.append(o)
        return out

    def _rule(self, name: str, args, kwargs, ins, o: torch.Tensor) -> _Field:
        # (H, W) of a spatial output; a flat one gives fewer values, which no rule reads as a grid
        hw = cast(Pair, tuple(o.shape[-2:]))
        x, f = ins[0]
        if name in _CONV and x is (args[0] if args else kwargs.get("input")):
            a = _bind(
                ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                args,
                kwargs,
                {"stride": 1, "padding": 0, "dilation": 1},
            )
            k = _hw(a["weight"])
            d = _pair(a["dilation"])
            if isinstance(a["padding"], str):
                p = (0, 0) if a["padding"] == "valid" else _per_axis(lambda i: d[i] * (k[i] - 1) // 2)
            else:
                p = _pair(a["padding"])
            return f.conv(k, _pair(a["stride"]), p, d, hw)
        if name in _POOL:
            if name == "lp_pool2d":
                a = _bind(("input", "norm_type", "kernel_size", "stride"), args, kwargs, {"stride": None})
            elif name == "avg_pool2d":
                a = _bind(("input", "kernel_size", "stride", "padding"), args, kwargs, {"stride": None})
            else:
                a = _bind(("input", "kernel_size", "stride", "padding", "dilation"), args, kwargs, {"stride": None})
            a.setdefault("padding", 0)
            a.setdefault("dilation", 1)
            k = _pair(a["kernel_size"])
            s = _pair(a["stride"]) if a["stride"] is not None else None
            return f.conv(k, s or k, _pair(a["padding"]), _pair(a["dilation"]), hw)
        if name in _ADAPTIVE:
            hin = _hw(x)
            if hw == (1, 1):
                return _Field("global", hw=hw) if f.kind != "unknown" else f
            if all(hin[i] % hw[i] == 0 for i in range(2)):
                k = _per_axis(lambda i: hin[i] // hw[i])
                return f.conv(k, k, (0, 0), (1, 1), hw)
            return _Field("unknown", hw=hw, why=f"{name} from {hin} to {hw} has bins of unequal size")
        if name == "pad":
            a = _bind(("input", "pad"), args, kwargs, {})
            pad = list(a["pad"]) + [0] * 4
            left, top = int(pad[0]), int(pad[2])
            if f.kind != "local":
                return dataclasses.replace(f, hw=hw)
            return _Field(
                "local", f.size, f.stride, (f.offset[0] - top * f.stride[0], f.offset[1] - left * f.stride[1]), hw
            )
        if name == "__getitem__" and len(ins) == 1 and tuple(o.shape[-2:]) != f.hw:
            idx = args[1] if len(args) > 1 else kwargs.get("idx")
            idx = idx if isinstance(idx, tuple) else (idx,)
            if len(idx) == 4 and all(isinstance(i, slice) for i in idx[2:]) and f.kind == "local":
                off, st = list(f.offset), list(f.stride)
                for ax, sl in enumerate(idx[2:]):
                    start, _, step = sl.indices(f.hw[ax])
                    off[ax] += start * f.stride[ax]
                    st[ax] *= step
                return _Field("local", f.size, tuple(st), tuple(off), hw)
        # anything else: an element-wise / channel op keeps the grid; join the branches
        spatial = [fi for t, fi in ins if t.dim() == 4]
        if spatial and all(fi.hw == hw or fi.kind == "global" for fi in spatial):
            return _union(spatial, hw, name)
        if not spatial:
            return _Field("global", hw=hw)
        return _Field(
            "unknown",
            hw=hw,
            why=f"torch call {name!r} changes the spatial grid {spatial[0].hw} → {hw} "
            "in a way receptive_field does not model",
        )


# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RFProbe(Result):
    """The gradient probe of a receptive field.

    position: the unit (row, col) probed; input_size: the probe input's (H, W);
    expected: the analytic field of that unit clipped to the image, (top, left, bottom, right), end exclusive;
    found: the bounding box of the support of ∂(Σ_c a_c,ij)/∂x; agrees: expected == found.
    """

    position: Pair
    input_size: Pair
    expected: tuple[int, int, int, int]
    found: tuple[int, int, int, int] | None
    agrees: bool
    #: further units probed on the same input, as ((row, col), expected, found): the corner probe checks unit
    #: (0, 0)'s far edge and the last unit's near edge; ``agrees`` covers them all
    more: tuple = ()


@dataclass(frozen=True)
class ReceptiveField(Result):
    """A layer's receptive field in input pixels (per axis: rows, columns).

    Unit (i, j) of the layer sees rows ``offset[0] + i·stride[0] … + size[0]`` and
    columns likewise (``offset`` can be negative: the field reaches into the padding).

    >>> rf = receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2)), "1", input_size=(8, 8))
    >>> rf.size, rf.stride, rf.offset
    ((4, 4), (2, 2), (0, 0))
    """

    layer: str
    size: Pair
    stride: Pair
    offset: Pair
    input_size: Pair
    grid: Pair
    is_global: bool = False
    probe: RFProbe | None = None
    #: "traced" (the analytic field, op by op) or "measured" (the gradient support of two units, for a
    #: path the tracer cannot follow, e.g. a permute to channels-last around a LayerNorm)
    method: str = "traced"

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """The unit's field (top, left, bottom, right) in input pixels, end exclusive, not clipped."""
        if self.is_global:
            return (0, 0, self.input_size[0], self.input_size[1])
        t = self.offset[0] + i * self.stride[0]
        l = self.offset[1] + j * self.stride[1]
        return (t, l, t + self.size[0], l + self.size[1])

    def clipped_box(self, i: int, j: int, hw: Pair | None = None) -> tuple[tuple[int, int, int, int], bool]:
        """(box clipped to an image of size ``hw`` (default: input_size), whether it was clipped)."""
        H, W = hw or self.input_size
        t, l, b, r = self.box(i, j)
        c = (max(t, 0), max(l, 0), min(b, H), min(r, W))
        return c, c != (t, l, b, r)

    def center(self, i: int, j: int) -> tuple[float, float]:
        t, l, b, r = self.box(i, j)
        return ((t + b - 1) / 2, (l + r - 1) / 2)


#: the central-unit probe runs on an input of at most this many times the model's pixels; a larger field is probed
#: at two corner units on a smaller input (memory: the autograd graph grows with the input's area)
PROBE_PIXELS = 6

#: the input size assumed for a model that carries none (a field does not depend on it once the image holds it)
DEFAULT_INPUT_SIZE = (224, 224)


def input_shape(model: nn.Module, input_size, channels) -> tuple[int, int, int]:
    """(channels, H, W) of the model's input: the given values, else its ``spec``, its first convolution's input
    channels, timm's ``pretrained_cfg``; the size defaults to :data:`DEFAULT_INPUT_SIZE` (logged)."""
    spec = getattr(model, "spec", None)
    if channels is None:
        channels = getattr(spec, "channels", None)
    if channels is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is None:
            raise ValueError("cannot tell how many input channels the model takes; pass channels=...")
        channels = conv.in_channels
    if input_size is None:
        input_size = getattr(spec, "input_size", None)
    if input_size is None:  # timm models carry their input size in pretrained_cfg
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        input_size = tuple(cfg["input_size"][-2:]) if isinstance(cfg, dict) and cfg.get("input_size") else None
    if input_size is None:
        input_size = DEFAULT_INPUT_SIZE
        log.info("receptive field: the model does not say its input size; using %s (pass input_size=...)", input_size)
    input_size = _pair(input_size)
    return int(channels), input_size[0], input_size[1]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _trace(model: nn.Module, name: str, x: torch.Tensor) -> tuple[_Field, torch.Tensor]:
    """One forward (stopped after ``name``) with fields traced; returns the layer's field and output."""
    with LayerTap(model, [name], stop_after=name) as tap:
        with _FieldTracer(x) as tracer:
            tap.run(x)
        out = tap[name]
        f = tracer.field(out)
    if f is None:
        raise ValueError(f"the output of layer {name!r} does not depend on the input; pick a layer inside the network")
    return f, out


def _to_rf(name: str, f: _Field, input_size: Pair, out: torch.Tensor) -> ReceptiveField:
    if f.kind == "unknown":
        raise ValueError(
            f"receptive_field cannot follow the path to layer {name!r}: {f.why}; "
            "pick an earlier layer or compute the field with the gradient probe"
        )
    grid = _hw(out) if out.dim() == 4 else (1, 1)
    if f.kind == "global":
        return ReceptiveField(name, input_size, input_size, (0, 0), input_size, grid, True)
    return ReceptiveField(name, f.size, f.stride, f.offset, input_size, grid, False)


@needs_autograd
def receptive_field(
    model: nn.Module,
    layer: LayerRef,
    *,
    input_size: Pair | int | None = None,
    channels: int | None = None,
    probe: bool = True,
    probe_samples: int = 2,
    probe_max: int = 1024,
    seed: int = 0,
) -> ReceptiveField:
    """The theoretical receptive field of a layer's units, cross-checked by a gradient probe.

    size, stride and offset are in input pixels, per axis (rows, columns); for
    conv/pool layers ``size' = size + d(k−1)·stride``, ``stride' = stride·s``,
    ``offset' = offset − p·stride``; branches that join take the union (the larger
    field). With ``probe=True`` the support of ∂(Σ_c a_c,ij)/∂x over
    ``probe_samples`` random inputs (on an input large enough to hold the whole
    field, up to ``probe_max`` pixels) is compared with the analytic field
    (``rf.probe.agrees``; a disagreement is logged as a warning).

    Where the tracer cannot follow the path (a ``permute`` to channels-last around a
    LayerNorm, as in ConvNeXt), the field is measured instead (``rf.method ==
    "measured"``, logged): the gradient support of the central unit and of its
    diagonal neighbour give size, stride and offset. ``input_size`` defaults to
    ``model.spec.input_size``, then timm's ``pretrained_cfg``, then 224×224.

    Example::

        import torchvision
        rf = receptive_field(torchvision.models.resnet18(), "layer4", input_size=224)
        rf.size, rf.stride      # ((435, 435), (32, 32))
    """
    name, _ = resolve_layer(model, layer)
    c, H, W = input_shape(model, input_size, channels)
    dev = _device(model)
    with torch.no_grad():
        f, out = _trace(model, name, torch.rand(1, c, H, W, device=dev, generator=None))
    grid = _hw(out) if out.dim() == 4 else (1, 1)
    if f.kind == "unknown" and grid[0] <= H and grid[1] <= W:  # not upsampled: an integer stride exists
        log.info(
            "receptive field of %s: the tracer cannot follow the path (%s); measuring it from the gradient "
            "support instead",
            name,
            f.why,
        )
        return _measured(model, name, c, (H, W), probe_samples, seed, dev, probe_max)
    rf = _to_rf(name, f, (H, W), out)
    if not probe or rf.is_global:
        return rf
    # large enough that the central unit's whole field fits (then the probe checks the size, not a clipped box)
    size = tuple(min(max(s, rf.size[a] + 2 * rf.stride[a]), probe_max) for a, s in enumerate((H, W)))
    if size[0] * size[1] <= PROBE_PIXELS * H * W:
        return dataclasses.replace(rf, probe=_probe(model, name, c, size, probe_samples, seed, dev))
    # a field much larger than the image (851 px for a 224 px EfficientNet): probing the centre unit would need
    # an input of ~915² (about 4 GB of autograd graph). Probe two corner units on an input just larger than
    # unit (0, 0)'s far edge instead: unit (0, 0) checks where fields end, the last unit where they begin.
    far = _per_axis(lambda a: rf.offset[a] + rf.size[a])
    size = tuple(min(max(s, far[a] + 2 * rf.stride[a]), probe_max) for a, s in enumerate((H, W)))
    log.info("receptive field of %s (%s px): probing corner units on a %s input to bound memory", name, rf.size, size)
    return dataclasses.replace(rf, probe=_probe(model, name, c, size, 1, seed, dev, corners=True))


def _support_box(gx: torch.Tensor) -> tuple[int, int, int, int] | None:
    """Bounding box (top, left, bottom, right; end exclusive) of where an S×C×H×W gradient is non-zero."""
    support = gx.detach().abs().sum((0, 1)) > 0
    rows = support.any(1).nonzero().flatten()
    cols = support.any(0).nonzero().flatten()
    if not len(rows):
        return None
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def _measured(model, name, c, size, samples, seed, dev, probe_max) -> ReceptiveField:
    """The field measured from the gradient support of the central unit and its diagonal neighbour.

    size = the central unit's support; stride = how far the support moves to the next
    unit; offset = where unit (0, 0)'s would start. The input grows (×2, twice, up to
    ``probe_max``) until the central unit's support stays off the image border; a support
    that still reaches every border is a global field. Random inputs (``samples`` of
    them) keep ReLUs open; a dead path can only make the measured field smaller.
    """
    g = torch.Generator().manual_seed(seed)
    hw: Pair = (int(size[0]), int(size[1]))
    for attempt in range(3):
        x = torch.rand(samples, c, *hw, generator=g).to(dev).requires_grad_(True)
        with LayerTap(model, [name], stop_after=name) as tap:
            tap.run(x)
            out = tap[name]
            if out.dim() != 4:
                return ReceptiveField(name, hw, hw, (0, 0), hw, (1, 1), True, method="measured")
            grid = _hw(out)
            i, j = grid[0] // 2, grid[1] // 2
            units = [(i, j), (min(i + 1, grid[0] - 1), min(j + 1, grid[1] - 1))]
            boxes = []
            # a random mix of the channels: a plain channel sum can be constant (Σ_c of a LayerNorm output is 0)
            mix = torch.randn(out.shape[1], generator=g).to(device=out.device, dtype=out.dtype)
            for a, b in units:
                (gx,) = torch.autograd.grad((out[:, :, a, b] * mix).sum(), x, retain_graph=True)
                boxes.append(_support_box(gx))
        box = boxes[0]
        if box is None:
            raise ValueError(
                f"no gradient reaches the input from layer {name!r}, so its receptive field cannot "
                "be measured; pick another layer"
            )
        touches = box[0] == 0 or box[1] == 0 or box[2] == hw[0] or box[3] == hw[1]
        if not touches or attempt == 2 or max(hw) >= probe_max:
            break
        hw = (min(2 * hw[0], probe_max), min(2 * hw[1], probe_max))
    assert box is not None  # the loop raised otherwise
    if box == (0, 0, hw[0], hw[1]):
        return ReceptiveField(name, hw, hw, (0, 0), hw, grid, True, method="measured")
    nxt = boxes[1] or box
    stride = _per_axis(lambda a: (nxt[a] - box[a]) if units[1][a] != units[0][a] else hw[a])
    stride = (max(1, stride[0]), max(1, stride[1]))
    rf_size = (box[2] - box[0], box[3] - box[1])
    offset = (box[0] - i * stride[0], box[1] - j * stride[1])
    return ReceptiveField(name, rf_size, stride, offset, hw, grid, False, method="measured")


def _probe(model, name, c, size, samples, seed, dev, corners: bool = False) -> RFProbe:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, c, *size, generator=g).to(dev).requires_grad_(True)
    f, out = _trace(model, name, x)
    rf = _to_rf(name, f, size, out)
    units = [(0, 0), (rf.grid[0] - 1, rf.grid[1] - 1)] if corners else [(rf.grid[0] // 2, rf.grid[1] // 2)]
    mix = torch.randn(out.shape[1], generator=g).to(device=out.device, dtype=out.dtype)
    results = []
    for k, (i, j) in enumerate(units):
        expected, _ = rf.clipped_box(i, j)
        score = (out[:, :, i, j] * mix).sum()  # a random channel mix: a plain sum can be constant (LayerNorm)
        if not score.requires_grad:
            return RFProbe(units[0], size, rf.clipped_box(*units[0])[0], None, False)
        (gx,) = torch.autograd.grad(score, x, retain_graph=k + 1 < len(units))
        results.append(((i, j), expected, _support_box(gx)))
        del gx
    agrees = all(found == expected for _, expected, found in results)
    if not agrees:
        for pos, expected, found in results:
            if found != expected:
                log.warning(
                    "receptive field of %s: analytic box %s, gradient support %s (at unit %s of a %s input)",
                    name,
                    expected,
                    found,
                    pos,
                    size,
                )
    (pos, expected, found), more = results[0], tuple(results[1:])
    return RFProbe(pos, size, expected, found, agrees, more)


def field_layers(model: nn.Module) -> list[str]:
    """The layers that widen a receptive field: every convolution and pooling layer, in the order of
    ``model.named_modules()``.

    >>> [receptive_field(model, n) for n in field_layers(model)]   # doctest: +SKIP
    """
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]
