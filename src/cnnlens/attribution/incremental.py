"""Incremental occlusion: recompute only what a patch can change (Krypton, Nakandala et al. SIGMOD 2019).

A patch over rows [r, r + h) and columns [c, c + w) of the input changes, in every
later spatial layer, only the outputs whose receptive field meets it — the
patch's *projective field*, a box per layer. So, after one clean forward that
keeps every activation, each window position needs only those boxes:

* the model is traced with :mod:`torch.fx` (no module is changed; ``torch.nn``
  layers, cnnlens' ``Normalize`` and timm's own leaf layers stay whole);
* every node then holds, per position, either a *box* (an N×C×h×w tensor of the
  changed values and their per-position offsets; outside it the clean activation
  holds) or, once a global operation is reached, the *full* tensor;
* convolutions (strided, dilated, grouped, depthwise, with ``"same"`` padding or
  timm's ``Conv2dSame``), max/avg pooling: the output box is the union of the
  outputs whose window meets the input box; its input context is gathered from the
  (padded) clean activation with the input box pasted in, and the layer's own
  weights run on it with no padding;
* element-wise layers (batch norm in eval mode, activations, dropout in eval,
  normalisation, arithmetic with scalars or per-channel constants) run on the box;
* additions/multiplications of two boxed tensors and channel concatenations run on
  the union box of their inputs;
* anything else (global pooling, flatten, linear, squeeze-excitation, attention, an
  op without a rule) gets full tensors (clean activation with the box pasted) and
  runs as usual from there on.

Boxes have one size per layer for all positions (shifted inward at the borders,
as Krypton does), so the positions of a layer are one batch: gather, run the
layer's own module or op, go on. Every value equals what full re-inference gives,
up to the float rounding of convolutions on differently sized inputs (the tests
check this against full re-inference, in float64 exactly).

``approximate`` (Krypton §4.1): a projective-field threshold τ caps every box
at ⌈τ · size⌉ of the layer (centre-cropped around the changed region); the values
outside the cap are taken as clean.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..models.spec import Normalize
from ..traced import Unsupported, trace  # noqa: F401  (Unsupported: re-exported for occlusion and CAM)

log = logging.getLogger("cnnlens.attribution")


# ------------------------------------------------------------------------------------------- box algebra


@dataclass
class Box:
    """Per position p = (i, j) of a Pr × Pc grid: rows [rows[i], rows[i] + h), cols [cols[j], cols[j] + w)
    of the clean activation replaced by ``data[i * Pc + j]`` (P×C×h×w). With ``pairs``, the positions are a
    list instead: position p at (rows[p], cols[p]) (rows and cols both of length P)."""

    data: torch.Tensor
    rows: torch.Tensor  # (Pr,) long
    cols: torch.Tensor  # (Pc,) long
    clean: torch.Tensor  # 1×C×H×W
    node: Any = None  # the graph node whose value this is (keys the cache of padded clean activations)
    fresh: bool = False  # ``data`` was made by this node (not shared with another node's box)
    pairs: bool = False  # positions (rows[p], cols[p]) rather than the grid rows × cols

    @property
    def n(self) -> int:
        """The number of positions."""
        return len(self.rows) if self.pairs else len(self.rows) * len(self.cols)

    @property
    def h(self) -> int:
        return self.data.shape[-2]

    @property
    def w(self) -> int:
        return self.data.shape[-1]


@dataclass
class Full:
    t: torch.Tensor


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -((-a) // b)


def _window_dim(
    starts: torch.Tensor, size: int, n_in: int, n_out: int, k: int, s: int, d: int, pb: int, tau: float | None
) -> tuple[torch.Tensor, int]:
    """Output box (starts, size) along one dim of a sliding-window layer for an input box (starts, size)."""
    lo_all = _ceil_div(starts + pb - (k - 1) * d, s)
    hi_all = torch.div(starts + size - 1 + pb, s, rounding_mode="floor")
    lo = lo_all.clamp(0, n_out - 1)
    hi = torch.maximum(hi_all.clamp(0, n_out - 1), lo)
    length = int((hi - lo + 1).max())
    if tau is not None:
        cap = max(1, math.ceil(tau * n_out))
        if length > cap:
            # centred on the patch: the middle of the whole projective field, not of its part inside the map
            # (at a border that part's middle lies inward of the patch, and the cap would miss the patch itself)
            lo = torch.div(lo_all + hi_all + 1 - cap, 2, rounding_mode="floor")
            length = cap
    out = lo.clamp(0, n_out - length)
    return out, length


def _union_dim(a: torch.Tensor, la: int, b: torch.Tensor, lb: int, n: int) -> tuple[torch.Tensor, int]:
    lo = torch.minimum(a, b)
    hi = torch.maximum(a + la, b + lb)
    length = int((hi - lo).max())
    return lo.clamp(max=n - length), length


def _flat(
    rows: torch.Tensor, h: int, cols: torch.Tensor, w: int, W: int, per: int | None = None, pairs: bool = False
) -> torch.Tensor:
    """Flat pixel indices (row-major, width W) of the window at (rows[i], cols[j]) for every grid position,
    ordered (i, j, row, col); with ``per``, position p's pixels are offset by p · per (one image per position).
    With ``pairs``: the window at (rows[p], cols[p]) for every position p, ordered (p, row, col)."""
    dev = rows.device
    ri = (rows.view(-1, 1) + torch.arange(h, device=dev)) * W  # Pr × h
    ci = cols.view(-1, 1) + torch.arange(w, device=dev)  # Pc × w
    if pairs:
        idx = ri.view(-1, h, 1) + ci.view(-1, 1, w)  # P × h × w
        if per is not None:
            idx = idx + (torch.arange(len(rows), device=dev) * per).view(-1, 1, 1)
        return idx.reshape(-1)
    idx = ri.view(-1, 1, h, 1) + ci.view(1, -1, 1, w)  # Pr × Pc × h × w
    if per is not None:
        idx = idx + (torch.arange(len(rows) * len(cols), device=dev) * per).view(len(rows), len(cols), 1, 1)
    return idx.reshape(-1)


def _rows_of(t: torch.Tensor) -> torch.Tensor:
    """P×C×h×w → (P·h·w)×C, a view when ``t`` is channels-last (a copy otherwise)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _nchw(flat: torch.Tensor, P: int, h: int, w: int) -> torch.Tensor:
    """(P·h·w)×C → P×C×h×w channels-last view."""
    return flat.view(P, h, w, flat.shape[1]).permute(0, 3, 1, 2)


def _gather(
    src: torch.Tensor, rows: torch.Tensor, h: int, cols: torch.Tensor, w: int, pairs: bool = False
) -> torch.Tensor:
    """src 1×C×H×W → P×C×h×w (channels-last): the window at (rows[i], cols[j]) for every grid position."""
    return _gather_hwc(_rows_of(src), src.shape[-1], rows, h, cols, w, pairs)


def _gather_hwc(
    src_hwc: torch.Tensor, W: int, rows: torch.Tensor, h: int, cols: torch.Tensor, w: int, pairs: bool = False
) -> torch.Tensor:
    P = len(rows) if pairs else len(rows) * len(cols)
    return _nchw(src_hwc.index_select(0, _flat(rows, h, cols, w, W, pairs=pairs)), P, h, w)


def _window(
    src: torch.Tensor, rows: torch.Tensor, h: int, cols: torch.Tensor, w: int, pairs: bool = False
) -> torch.Tensor:
    """src P×C×H×W (one per grid position) → P×C×h×w: position (i, j)'s window at (rows[i], cols[j])."""
    H, W = src.shape[-2:]
    return _nchw(_rows_of(src).index_select(0, _flat(rows, h, cols, w, W, per=H * W, pairs=pairs)), src.shape[0], h, w)


def _paste(dst: torch.Tensor, box: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, pairs: bool = False) -> None:
    """dst[p, :, rows[i]:rows[i]+h, cols[j]:cols[j]+w] = box[p] for every grid position p = (i, j), in place.
    ``dst`` must be channels-last (as :func:`_gather` returns it)."""
    h, w = box.shape[-2:]
    H, W = dst.shape[-2:]
    d = dst.permute(0, 2, 3, 1)
    if not d.is_contiguous():
        raise AssertionError("paste target must be channels-last")
    d.view(-1, dst.shape[1]).index_copy_(0, _flat(rows, h, cols, w, W, per=H * W, pairs=pairs), _rows_of(box))


def _region(
    clean: torch.Tensor,
    box: Box,
    rows: torch.Tensor,
    h: int,
    cols: torch.Tensor,
    w: int,
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    value: float = 0.0,
    padded: tuple[torch.Tensor, int, int] | None = None,
) -> torch.Tensor:
    """The activation over a region (per-position starts, uniform size, in padded coordinates): clean outside
    the box, the box's values inside. ``pad`` = (left, right, top, bottom) of the clean tensor; ``padded`` the
    padded clean tensor as (pixels × C, Hp, Wp) when already at hand."""
    pl, _, pt, _ = pad
    if padded is None:
        padded = _padded_hwc(clean, pad, value)
    src, Hp, Wp = padded
    pairs = box.pairs
    br, bc = box.rows + pt, box.cols + pl  # box starts in padded coordinates
    fits = bool(
        (br >= rows).all() and (br + box.h <= rows + h).all() and (bc >= cols).all() and (bc + box.w <= cols + w).all()
    )
    if fits:
        out = _gather_hwc(src, Wp, rows, h, cols, w, pairs)
        _paste(out, box.data, br - rows, bc - cols, pairs)
        return out
    # the box reaches outside the region (e.g. a 1×1 stride-2 convolution skips some of its rows): build the hull
    hr, hh = _union_dim(rows, h, br, box.h, Hp)
    hc, hw = _union_dim(cols, w, bc, box.w, Wp)
    hull = _gather_hwc(src, Wp, hr, hh, hc, hw, pairs)
    _paste(hull, box.data, br - hr, bc - hc, pairs)
    return _window(hull, rows - hr, h, cols - hc, w, pairs)


def _padded_hwc(clean: torch.Tensor, pad: tuple[int, int, int, int], value: float) -> tuple[torch.Tensor, int, int]:
    t = F.pad(clean, pad, value=value) if any(pad) else clean
    return _rows_of(t).contiguous(), t.shape[-2], t.shape[-1]


def _full(box: Box) -> torch.Tensor:
    """The whole activation of every position (clean with the box pasted), in the memory layout of the clean
    activation: the ops after it (``x.view(x.size(0), -1)`` after a convolution) see the strides the model's own
    forward gives them."""
    P = box.n
    C, H, W = box.clean.shape[1:]
    out = torch.empty(P, H, W, C, dtype=box.data.dtype, device=box.data.device)
    out.copy_(box.clean.permute(0, 2, 3, 1))
    out = out.permute(0, 3, 1, 2)
    _paste(out, box.data, box.rows, box.cols, box.pairs)
    if box.clean.is_contiguous() and not out.is_contiguous():
        out = out.contiguous()
    return out


# ---------------------------------------------------------------------------------------------- the rules

_POINTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.AlphaDropout,
)
_POINTWISE_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.relu6,
    F.hardtanh,
    F.silu,
    F.gelu,
    F.hardswish,
    F.hardsigmoid,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.leaky_relu,
    F.elu,
    torch.clamp,
    F.mish,
    F.softplus,
    torch.nn.functional.relu_,
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.neg,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.neg,
}
_POINTWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "clamp",
    "clamp_",
    "clamp_min",
    "add",
    "add_",
    "sub",
    "mul",
    "mul_",
    "div",
    "neg",
    "contiguous",
    "hardtanh_",
}
_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.nn.functional.relu_}


def _pointwise_module(m: nn.Module) -> bool:
    if isinstance(m, _POINTWISE_MODULES):
        return True
    if isinstance(m, nn.BatchNorm2d):
        return not m.training

    if isinstance(m, Normalize):
        return True
    name = type(m).__name__
    if name in ("BatchNormAct2d", "FrozenBatchNormAct2d"):  # timm: batch norm → dropout → activation
        return (
            not m.training
            and _pointwise_module(getattr(m, "drop", nn.Identity()))
            and _pointwise_module(getattr(m, "act", nn.Identity()))
        )
    if type(m).__module__.startswith("timm.layers.activations"):
        return True
    return False


def _inplace(node: fx.Node, mod: nn.Module | None) -> bool:
    if node.op == "call_module":
        return bool(getattr(mod, "inplace", False))
    if node.op == "call_method":
        return isinstance(node.target, str) and node.target.endswith("_")  # a method node's target is its name
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False))
    return False


def _flatten(args) -> list:
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flatten(a))
        else:
            out.append(a)
    return out


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window_params(node: fx.Node, mod: nn.Module | None, x_shape, out_shape):
    """(kind, k, s, d, pads (l, r, t, b), pad value, run) for a sliding-window layer, or None."""
    if mod is None:
        return None
    H, W = x_shape[-2:]
    Ho, Wo = out_shape[-2:]
    name = type(mod).__name__
    if isinstance(mod, nn.Conv2d) and (type(mod) is nn.Conv2d or name == "Conv2dSame"):
        if mod.padding_mode != "zeros" and name != "Conv2dSame":
            return None
        k, s, d = _pair(mod.kernel_size), _pair(mod.stride), _pair(mod.dilation)
        if name == "Conv2dSame":  # timm: TF "same" padding from the input size
            pb = [
                max((math.ceil(n / si) - 1) * si + (ki - 1) * di + 1 - n, 0) // 2
                for n, ki, si, di in zip((H, W), k, s, d, strict=True)
            ]
        elif mod.padding == "same":
            pb = [di * (ki - 1) // 2 for ki, di in zip(k, d, strict=True)]
        elif mod.padding == "valid":
            pb = [0, 0]
        else:
            pb = list(_pair(mod.padding))

        def conv(t, mod=mod, s=s, d=d):
            return F.conv2d(t, mod.weight, mod.bias, s, 0, d, mod.groups)

        macs = mod.in_channels // mod.groups * k[0] * k[1] * mod.out_channels
        return k, s, d, pb, 0.0, conv, macs
    if type(mod) is nn.MaxPool2d:
        k, d = _pair(mod.kernel_size), _pair(mod.dilation)
        s = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
        pb = list(_pair(mod.padding))

        def max_pool(t, k=k, s=s, d=d):
            return F.max_pool2d(t, k, s, 0, d)

        return k, s, d, pb, float("-inf"), max_pool, 0
    if type(mod) is nn.AvgPool2d:
        k = _pair(mod.kernel_size)
        s = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
        pb = list(_pair(mod.padding))
        if mod.divisor_override is not None or (any(pb) and not mod.count_include_pad):
            return None
        # with ceil_mode, a last window that runs past the padding divides by fewer elements: no rule
        for n, no, ki, si, p in zip((H, W), (Ho, Wo), k, s, pb, strict=True):
            if (no - 1) * si + ki > n + 2 * p:
                return None

        def avg_pool(t, k=k, s=s):
            return F.avg_pool2d(t, k, s, 0)

        return k, s, (1, 1), pb, 0.0, avg_pool, 0
    return None


def _spatially_trivial(v: Any) -> bool:
    """A clean argument that broadcasts over positions and pixels alike (scalar, per-channel constant)."""
    if not torch.is_tensor(v):
        return isinstance(v, (int, float, bool)) or v is None
    if v.numel() == 1:
        return True
    return 3 <= v.dim() <= 4 and v.shape[-1] == 1 and v.shape[-2] == 1 and (v.dim() == 3 or v.shape[0] == 1)


# ----------------------------------------------------------------------------------------- the interpreter


@dataclass
class Stats:
    """Multiply-accumulates of convolutions and linear layers: full re-inference vs incremental."""

    full: float = 0.0
    incremental: float = 0.0
    nodes: dict = field(default_factory=dict)

    @property
    def bound(self) -> float:
        """Krypton's FLOP-model speed-up bound ΣQ/ΣQ_inc."""
        return self.full / self.incremental if self.incremental else float("inf")


def _depends(nodes: list, start: fx.Node) -> set:
    dep = {start}
    for n in nodes:
        if any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    return dep


class Traced:
    """A model's forward as an fx graph, run node by node. Raises :class:`Unsupported` when it does not trace."""

    def __init__(self, model: nn.Module, leaves: tuple[str, ...] = ()):
        self.root, self.graph = trace(model, leaves)
        self.nodes = list(self.graph.nodes)
        self.modules = dict(self.root.named_modules())
        ph = [n for n in self.nodes if n.op == "placeholder"]
        if len(ph) != 1:
            raise Unsupported(f"the traced forward takes {len(ph)} inputs, not one image batch")
        self.input = ph[0]
        self.dep = _depends(self.nodes, self.input)

    # -- plain execution of one node
    def _fetch_attr(self, target: str):
        obj = self.root
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def _call(self, n: fx.Node, args, kwargs):
        if n.op == "call_module":
            return self.modules[n.target](*args, **kwargs)
        if n.op == "call_function":
            assert callable(n.target)  # a call_function node's target is the function
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            self_obj, *rest = args
            assert isinstance(n.target, str)  # a method node's target is the method's name
            return getattr(self_obj, n.target)(*rest, **kwargs)
        raise AssertionError(n.op)

    def _prot(self, n: fx.Node, args, kwargs):
        """Copy tensor arguments of an in-place node, so no stored value is overwritten."""
        if _inplace(n, self.modules.get(n.target) if n.op == "call_module" else None):
            args = tuple(a.clone() if torch.is_tensor(a) else a for a in args)
        return args, kwargs

    def clean(self, x: torch.Tensor) -> dict:
        """Every node's value on the clean input (1×C×H×W)."""
        env: dict = {}
        for n in self.nodes:
            if n.op == "placeholder":
                env[n] = x
            elif n.op == "get_attr":
                env[n] = self._fetch_attr(n.target)
            elif n.op == "output":
                env[n] = fx.graph.map_arg(n.args[0], lambda a: env[a])
            else:
                args = fx.graph.map_arg(n.args, lambda a: env[a])
                kwargs = fx.graph.map_arg(n.kwargs, lambda a: env[a])
                args, kwargs = self._prot(n, args, kwargs)
                env[n] = self._call(n, args, kwargs)
        return env

    def module_node(self, name: str) -> fx.Node | None:
        """The (single) node that calls module ``name``, or None."""
        found = [n for n in self.nodes if n.op == "call_module" and n.target == "m." + name]
        return found[0] if len(found) == 1 else None

    def rerun(self, env: dict, node: fx.Node, value: torch.Tensor):
        """The output with ``node``'s value replaced by ``value`` (a batch of B), recomputing only the nodes
        after it; the other nodes' values come from ``env`` (a clean run on one image, expanded to B)."""
        after = _depends(self.nodes, node)
        B = value.shape[0]
        st = {node: value}

        def look(a):
            if a in st:
                return st[a]
            v = env[a]
            if a in self.dep and torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == 1:
                return v.expand(B, *v.shape[1:])
            return v

        for n in self.nodes:
            if n not in after or n is node:
                continue
            if n.op == "output":
                return fx.graph.map_arg(n.args[0], look)
            args = fx.graph.map_arg(n.args, look)
            kwargs = fx.graph.map_arg(n.kwargs, look)
            args, kwargs = self._prot(n, args, kwargs)
            st[n] = self._call(n, args, kwargs)
        raise Unsupported("the model's output does not depend on the layer")


class IncrementalOcclusion(Traced):
    """The traced model and its incremental forward. Raises :class:`Unsupported` when it does not trace."""

    def __init__(self, model: nn.Module, tau: float | None = None):
        super().__init__(model)
        self.tau = tau
        self.stats = Stats()

    # -- incremental execution
    def run(self, env: dict, box: Box, stats: Stats | None = None) -> torch.Tensor:
        """The model's output (P×K) for the clean input with ``box`` pasted, for every grid position."""
        P = box.n
        st: dict = {}
        padded = env.setdefault("_padded", {})  # padded clean activations, kept for every chunk of this image
        users_left = {n: len(n.users) for n in self.nodes}

        def look(a):
            return st[a] if a in self.dep else env[a]

        out = None
        for n in self.nodes:
            if n.op == "placeholder":
                st[n] = box
                box.node = n
                continue
            if n.op == "get_attr" or n not in self.dep:
                continue
            if n.op == "output":
                out = fx.graph.map_arg(n.args[0], look)
                break
            args = fx.graph.map_arg(n.args, look)
            kwargs = fx.graph.map_arg(n.kwargs, look)
            st[n] = v = self._step(n, args, kwargs, env, padded, P, stats)
            if isinstance(v, Box):
                v.node = n
                v.fresh = not any(isinstance(a, Box) and a.data is v.data for a in _flatten(args))
            for a in n.all_input_nodes:  # free what no later node reads
                users_left[a] -= 1
                if users_left[a] == 0 and a in st and a is not self.input:
                    del st[a]
        if isinstance(out, Box):
            out = _full(out)
        elif isinstance(out, Full):
            out = out.t
        if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != P:
            raise Unsupported("the traced model does not return one logits row per image")
        return out

    def _step(self, n: fx.Node, args, kwargs, env, padded, P, stats: Stats | None):
        """One node of the incremental run: the first rule that applies to its arguments — a boxed tensor's
        shape, a pointwise or windowed module, a pointwise function or method, a channel concatenation — or,
        with none, the node on full tensors (counting multiply-adds into ``stats``). Long because the rules are
        tried in order, and which one takes precedence is read from that order in one place."""
        mod = self.modules.get(n.target) if n.op == "call_module" else None
        flat = [a for a in list(args) + list(kwargs.values())]
        boxes = [a for a in flat if isinstance(a, Box)]
        fulls = [a for a in flat if isinstance(a, Full)]
        nested = any(isinstance(a, (list, tuple)) and any(isinstance(b, (Box, Full)) for b in a) for a in flat)
        clean_out = env[n]

        def as_full(v):
            if isinstance(v, Box):
                return _full(v)
            if isinstance(v, Full):
                return v.t
            if isinstance(v, (list, tuple)):
                return type(v)(as_full(b) for b in v)
            return v

        def count(macs_per_out: float, out_elems_inc: float, out_elems_full: float):
            if stats is not None and macs_per_out:
                stats.full += macs_per_out * out_elems_full
                stats.incremental += macs_per_out * out_elems_inc

        # shapes and sizes of a boxed tensor: those of the full batch
        if (
            boxes
            and not fulls
            and (
                n.op == "call_method"
                and n.target in ("size", "dim")
                or n.op == "call_function"
                and n.target is getattr
                and args[1] == "shape"
            )
        ):
            shape = torch.Size((P, *boxes[0].clean.shape[1:]))
            if n.target == "dim":
                return len(shape)
            if n.op == "call_method" and len(args) > 1:
                return shape[args[1]]
            return shape
        spatial = torch.is_tensor(clean_out) and clean_out.dim() == 4  # a rule's result is an N×C×H×W box
        if (
            spatial
            and not fulls
            and not nested
            and len(boxes) == 1
            and n.op == "call_module"
            and len(args) == 1
            and not kwargs
        ):
            b = boxes[0]
            assert mod is not None  # a call_module node names one of the model's modules
            if _pointwise_module(mod):
                # an in-place layer may overwrite the box only when no other node reads it
                shared = not (b.fresh and b.node is not None and len(b.node.users) == 1)
                data = b.data.clone() if getattr(mod, "inplace", False) and shared else b.data
                return Box(mod(data), b.rows, b.cols, clean_out, pairs=b.pairs)
            if isinstance(mod, nn.AdaptiveAvgPool2d) and tuple(clean_out.shape[-2:]) == tuple(b.clean.shape[-2:]):
                return Box(
                    b.data, b.rows, b.cols, clean_out, pairs=b.pairs
                )  # adaptive pooling to its own size: the identity
            wp = _window_params(n, mod, b.clean.shape, clean_out.shape)
            if wp is not None and clean_out.dim() == 4:
                return self._window(n, b, wp, clean_out, padded, count)
        if spatial and not fulls and not nested and boxes and n.op in ("call_function", "call_method"):
            pointwise = n.target in _POINTWISE_FUNCTIONS if n.op == "call_function" else n.target in _POINTWISE_METHODS
            if n.op == "call_function" and n.target in (F.batch_norm, F.dropout):
                pointwise = not kwargs.get(
                    "training",
                    args[5]
                    if n.target is F.batch_norm and len(args) > 5
                    else (args[2] if n.target is F.dropout and len(args) > 2 else False),
                )
            others = [a for a in flat if not isinstance(a, Box)]
            if pointwise and all(_spatially_trivial(a) for a in others) and clean_out.dim() == 4:
                if len(boxes) == 1:
                    b = boxes[0]
                    data = b.data.clone() if _inplace(n, None) else b.data
                    a2 = tuple(data if a is b else a for a in args)
                    k2 = {k: (data if v is b else v) for k, v in kwargs.items()}
                    return Box(self._call(n, a2, k2), b.rows, b.cols, clean_out, pairs=b.pairs)
                return self._union(n, args, kwargs, boxes, clean_out, padded)
        if (
            spatial
            and not fulls
            and n.op == "call_function"
            and n.target is torch.cat
            and len(args) >= 1
            and isinstance(args[0], (list, tuple))
            and all(isinstance(a, Box) for a in args[0])
            and (args[1] if len(args) > 1 else kwargs.get("dim", 0)) in (1, -3)
            and clean_out.dim() == 4
        ):
            return self._union(n, args, kwargs, list(args[0]), clean_out, padded, cat=True)
        # no rule: full tensors from here on
        if boxes or nested:
            self.stats.nodes.setdefault("full_from", n.name)
        a2 = as_full(args)
        k2 = {k: as_full(v) for k, v in kwargs.items()}
        a2, k2 = self._prot(n, a2, k2)
        res = self._call(n, a2, k2)
        if stats is not None:
            if isinstance(mod, nn.Linear):
                count(mod.in_features * mod.out_features, P, P)
            elif isinstance(mod, nn.Conv2d) and torch.is_tensor(res):
                macs = mod.in_channels // mod.groups * math.prod(_pair(mod.kernel_size)) * mod.out_channels
                count(macs, res.shape[0] * res.shape[-1] * res.shape[-2], res.shape[0] * res.shape[-1] * res.shape[-2])
        return Full(res) if torch.is_tensor(res) and (boxes or fulls or nested) else res

    def _window(self, n, b: Box, wp, clean_out, padded, count):
        k, s, d, pb, value, run, macs = wp
        H, W = b.clean.shape[-2:]
        Ho, Wo = clean_out.shape[-2:]
        rows, h = _window_dim(b.rows, b.h, H, Ho, k[0], s[0], d[0], pb[0], self.tau)
        cols, w = _window_dim(b.cols, b.w, W, Wo, k[1], s[1], d[1], pb[1], self.tau)
        # padding: the layer's own before, after as far as the last output reads
        pe = [
            max(0, (no - 1) * si + (ki - 1) * di + 1 - ni - p)
            for no, si, ki, di, ni, p in zip((Ho, Wo), s, k, d, (H, W), pb, strict=True)
        ]
        pad = (pb[1], pe[1], pb[0], pe[0])
        key = (b.node, pad, value)
        if key not in padded:
            padded[key] = _padded_hwc(b.clean, pad, value)
        ch = (h - 1) * s[0] + (k[0] - 1) * d[0] + 1
        cw = (w - 1) * s[1] + (k[1] - 1) * d[1] + 1
        ctx = _region(b.clean, b, rows * s[0], ch, cols * s[1], cw, pad, value, padded=padded[key])
        res = run(ctx)
        P = res.shape[0]
        count(macs, P * h * w, P * Ho * Wo)
        return Box(res, rows, cols, clean_out, pairs=b.pairs)

    def _union(self, n, args, kwargs, boxes: list[Box], clean_out, padded, cat: bool = False):
        H, W = clean_out.shape[-2:]
        rows, h, cols, w = boxes[0].rows, boxes[0].h, boxes[0].cols, boxes[0].w
        for b in boxes[1:]:
            rows, h = _union_dim(rows, h, b.rows, b.h, H)
            cols, w = _union_dim(cols, w, b.cols, b.w, W)

        def on_union(b: Box):
            if b.h == h and b.w == w and torch.equal(b.rows, rows) and torch.equal(b.cols, cols):
                return b.data
            key = (b.node, (0, 0, 0, 0), 0.0)
            if key not in padded:
                padded[key] = _padded_hwc(b.clean, (0, 0, 0, 0), 0.0)
            return _region(b.clean, b, rows, h, cols, w, padded=padded[key])

        if len({b.pairs for b in boxes}) != 1:
            raise AssertionError("boxes of one run are all grids or all position lists")

        if cat:
            parts = [on_union(b) for b in args[0]]
            res = torch.cat(parts, *args[1:], **kwargs)
        else:
            ids = {id(b): on_union(b) for b in boxes}
            a2 = tuple(ids[id(a)] if isinstance(a, Box) else a for a in args)
            k2 = {k: (ids[id(v)] if isinstance(v, Box) else v) for k, v in kwargs.items()}
            a2, k2 = self._prot(n, a2, k2)
            res = self._call(n, a2, k2)
        return Box(res, rows, cols, clean_out, pairs=boxes[0].pairs)


_logged: set[str] = set()


def log_fallback(reason: str) -> None:
    """Log once per reason (per process) why occlusion re-runs the whole model."""
    if reason not in _logged:
        _logged.add(reason)
        log.info("occlusion: full re-inference for every window position (%s)", reason)


def input_box(
    x: torch.Tensor, fill: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, wh: int, ww: int, pairs: bool = False
) -> tuple[Box, torch.Tensor]:
    """The patched input as a box for every grid position (with ``pairs``: for the positions (rows[p], cols[p])),
    and which positions change no pixel."""
    f = fill.expand_as(x) if fill.shape != x.shape else fill
    data = _gather(f.contiguous() if f.stride() != x.stride() else f, rows, wh, cols, ww, pairs)
    orig = _gather(x, rows, wh, cols, ww, pairs)
    same = ~(data != orig).flatten(1).any(1)
    return Box(data, rows, cols, x, pairs=pairs), same
