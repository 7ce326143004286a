"""Plumbing shared by every attribution method: input checks, targets, scores, maps.

Every method follows the same steps:

1. :func:`prepare` checks the model and the input, casts low-precision inputs to
   the model's compute dtype (float32 for a float32 model) and turns the target
   shorthand into a validated :class:`~cnnlens.targets.Target` — all before any
   hook is attached.
2. The model runs inside one :class:`~cnnlens.tap.LayerTap` (eval mode, frozen
   parameters, hooks removed on exit, also on error).
3. :func:`finish` builds the :class:`~cnnlens.results.Explanation` (float32, on
   CPU), flags all-zero maps in ``extras["empty"]`` and maps constant over the image
   in ``extras["constant_map"]`` (with a warning).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..inputs import check_not_empty
from ..results import Explanation
from ..targets import Target, as_target

log = logging.getLogger("cnnlens.attribution")

Progress = Callable[[int, int], None]

REDUCTIONS = ("abs_max", "signed", "l2", "none")


@dataclass
class Prepared:
    """A checked input and target, ready for a method."""

    x: torch.Tensor  # N×C×H×W, detached, in the model's compute dtype, on the input's device
    target: Target
    labels: torch.Tensor | None
    class_names: tuple[str, ...] | None
    in_dtype: torch.dtype

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return (self.x.shape[-2], self.x.shape[-1])

    def describe(self) -> str:
        return self.target.describe(self.class_names)

    def subset(self, start: int, stop: int) -> Prepared:
        """Samples ``start:stop``, with their labels and per-sample targets."""
        return dataclasses.replace(
            self,
            x=self.x[start:stop],
            target=self.target.subset(start, stop),
            labels=None if self.labels is None else self.labels[start:stop],
        )


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (float32 if none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device | None:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return None


def prepare(
    model: nn.Module, x: torch.Tensor, target: Any, labels: torch.Tensor | None = None, method: str = "this method"
) -> Prepared:
    """Check ``model`` and ``x``, validate the target (before any hook); see module docs."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not torch.is_tensor(x):
        raise TypeError(
            f"x must be a torch.Tensor N×C×H×W in [0, 1], got {type(x).__name__}; "
            "load images with cnnlens.load_images(paths, model)"
        )
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"x must be N×C×H×W (or C×H×W), got shape {tuple(x.shape)}")
    check_not_empty(x)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor in [0, 1], got {x.dtype}; divide uint8 images by 255")
    dev = model_device(model)
    if dev is not None and dev != x.device:
        raise ValueError(
            f"the input is on {x.device} but the model is on {dev}; move the input with x.to({str(dev)!r})"
        )
    in_dtype = x.dtype
    mdt = model_dtype(model)
    x = x.detach().to(mdt)
    if in_dtype != mdt:
        log.info("%s: input dtype %s computed in the model's dtype %s", method, in_dtype, mdt)
    spec = getattr(model, "spec", None)
    names = tuple(getattr(spec, "class_names", ()) or ()) or None
    t = as_target(target, names)
    if labels is not None and not torch.is_tensor(labels):
        labels = torch.as_tensor(labels)
    t.validate(x.shape[0], len(names) if names else None, labels)
    return Prepared(x=x, target=t, labels=labels, class_names=names, in_dtype=in_dtype)


class Layout:
    """Memory layout for the model's input: channels-last where it pays off, with a safe fallback.

    Convolutions (and, above all, their backward) run faster on channels-last
    tensors with oneDNN/cuDNN, so image-sized batches (≥ 3 channels, ≥ 64×64) for a
    model with ``nn.Conv2d`` layers are passed channels-last. The values are the
    same up to float rounding. A model whose forward needs the default layout
    (``.view`` on a 4-D tensor) raises once; the input is then passed contiguous
    from that call on. ``channels_last=False`` turns it off, ``True`` forces it.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, channels_last: bool | None = None):
        if channels_last is None:
            channels_last = (
                x.dim() == 4
                and x.shape[1] >= 3
                and x.shape[-1] * x.shape[-2] >= 64 * 64
                and any(isinstance(m, nn.Conv2d) for m in model.modules())
            )
        self.channels_last = bool(channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def run(self, tap, x: torch.Tensor, prepare_input: Callable[[torch.Tensor], torch.Tensor] = lambda t: t):
        """``tap.run(prepare_input(layout(x)))``, retried contiguous when the model refuses channels-last."""
        if self.channels_last:
            try:
                return tap.run(prepare_input(self(x)))
            except RuntimeError as e:
                if "view size is not compatible" not in str(e) and "channels_last" not in str(e):
                    raise
                log.info("the model needs contiguous inputs (%s); not using channels-last", str(e).splitlines()[0])
                self.channels_last = False
        return tap.run(prepare_input(x.contiguous()))


def check_reduce(reduce: str) -> str:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r} is not known; use one of {', '.join(REDUCTIONS)}")
    return reduce


def reduce_channels(a: torch.Tensor, reduce: str) -> torch.Tensor:
    """N×C×H×W → N×H×W: ``abs_max`` = max_c |a|, ``signed``/``none`` = Σ_c a, ``l2`` = ‖a‖₂ over c."""
    if reduce == "abs_max":
        return a.abs().amax(1)
    if reduce == "l2":
        return a.norm(dim=1)
    return a.sum(1)


def target_layers(t: Target) -> list[str]:
    """Layers a tap must record to score ``t`` (the layer of a channel/neuron target)."""
    if t.is_class:
        return []
    assert t.layer is not None  # a channel or neuron target names its layer
    return [t.layer]


def logits_of(out: Any) -> torch.Tensor:
    if not torch.is_tensor(out):
        raise TypeError(
            f"the model returned {type(out).__name__}, not a logits tensor; wrap it so forward() returns "
            "the N×K logits (e.g. lambda x: model(x)['logits'] in an nn.Module)"
        )
    if out.dim() != 2:
        raise ValueError(
            f"the model returned a tensor of shape {tuple(out.shape)}; a classifier must return N×K logits "
            "(wrap the model so forward() returns them)"
        )
    return out


def pick_classes(p: Prepared, out: torch.Tensor | None, n: int | None = None) -> torch.Tensor:
    """The explained class of each sample (for a channel/neuron target: its channel index)."""
    t = p.target
    if t.is_class:
        return t.classes(logits_of(out), p.labels)
    device = p.x.device
    return torch.full((n or p.n,), int(t.index), dtype=torch.long, device=device)


def score(p: Prepared, tap, out: torch.Tensor | None, classes: torch.Tensor) -> torch.Tensor:
    """Per-sample score of the target: the pre-softmax logit of the class, or the layer objective."""
    t = p.target
    if t.is_class:
        return t.score(logits_of(out), classes)
    return t.layer_score(tap[t.layer])


def upsample(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of N×h×w maps to ``size`` (align_corners=False); identity when sizes match."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N×C×H×W with replicate padding (kernel radius ⌈3σ⌉)."""
    if sigma <= 0:
        return x.clone()
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    y = F.pad(x, (r, r, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def default_blur_sigma(size: Sequence[int]) -> float:
    """The default blur for "blur" fills/baselines: σ = max(1, min(H, W)/32) pixels (7 px at 224)."""
    return max(1.0, min(size) / 32)


def pixel_fill(fill: Any, x: torch.Tensor, blur_sigma: float | None = None, what: str = "fill") -> torch.Tensor:
    """A replacement image in pixel space, broadcastable to ``x`` (N×C×H×W).

    ``"grey"``/``"gray"`` = 0.5, ``"black"`` = 0, ``"white"`` = 1, ``"blur"`` = a
    Gaussian-blurred copy of the input, a number = that value, a tensor = itself
    (C×H×W, N×C×H×W, or per channel C).
    """
    if isinstance(fill, str):
        key = fill.lower()
        if key in ("grey", "gray"):
            return x.new_full((1, 1, 1, 1), 0.5)
        if key == "black":
            return x.new_zeros((1, 1, 1, 1))
        if key == "white":
            return x.new_ones((1, 1, 1, 1))
        if key == "blur":
            sigma = default_blur_sigma(x.shape[-2:]) if blur_sigma is None else float(blur_sigma)
            return gaussian_blur(x, sigma)
        raise ValueError(f"{what}={fill!r} is not known; use 'grey', 'black', 'white', 'blur', a number or a tensor")
    if isinstance(fill, bool):
        raise TypeError(f"{what} must be a string, a number or a tensor, got a bool")
    if isinstance(fill, (int, float)):
        return x.new_full((1, 1, 1, 1), float(fill))
    if torch.is_tensor(fill):
        f = fill.detach().to(device=x.device, dtype=x.dtype)
        if f.dim() == 1 and f.shape[0] == x.shape[1]:
            f = f.view(1, -1, 1, 1)
        elif f.dim() == 3:
            f = f.unsqueeze(0)
        try:
            torch.broadcast_shapes(f.shape, x.shape)
        except RuntimeError:
            raise ValueError(
                f"{what} of shape {tuple(fill.shape)} does not broadcast to the input {tuple(x.shape)}; "
                "give C, C×H×W or N×C×H×W"
            ) from None
        return f
    raise TypeError(f"{what} must be a string, a number or a tensor, got {type(fill).__name__}")


def describe_fill(fill: Any) -> Any:
    if torch.is_tensor(fill):
        return f"tensor{tuple(fill.shape)}"
    return fill


def constant_maps(maps: torch.Tensor) -> torch.Tensor:
    """N booleans: whether each map (N×H×W) is one value over the whole image (up to 10⁻⁶ of its scale)."""
    flat = maps.reshape(maps.shape[0], -1)
    if flat.shape[1] == 0:
        return torch.zeros(maps.shape[0], dtype=torch.bool, device=maps.device)
    spread = flat.amax(1) - flat.amin(1)
    return spread <= 1e-6 * flat.abs().amax(1)


def finish(
    p: Prepared,
    maps: torch.Tensor,
    method: str,
    classes: torch.Tensor,
    *,
    layer: str | None = None,
    settings: dict | None = None,
    raw: torch.Tensor | None = None,
    extras: dict | None = None,
    note: str | None = None,
) -> Explanation:
    """Wrap maps (N×H×W) into an Explanation: float32 on CPU, ``extras["empty"]`` flags all-zero maps.

    The one check every map-producing method goes through: a map that is constant over the
    image (whatever its size: a 1×1 grid upsampled, a layer that spreads a smaller grid, a
    ReLU that cut everything) says nothing about where, so it is flagged in
    ``extras["constant_map"]`` and a warning names the method, the layer and ``note`` (the
    method's own explanation, e.g. "layer 'avgpool' has a 1×1 grid"). A ``note`` is
    logged even when no map is constant.
    """
    maps = maps.detach().float()
    bad = ~torch.isfinite(maps)
    if bad.any():  # never hand out NaN/inf: report and zero them
        log.warning("%s: %d non-finite map values replaced by 0", method, int(bad.sum()))
        maps = torch.where(bad, torch.zeros_like(maps), maps)
    empty = maps.reshape(maps.shape[0], -1).abs().amax(1) == 0
    if empty.any():
        log.info("%s: %d of %d maps are all zero (flagged in extras['empty'])", method, int(empty.sum()), len(empty))
    constant = constant_maps(maps)
    if constant.any() or note:
        where = f" at layer {layer!r}" if layer else ""
        what = (
            f"{int(constant.sum())} of {len(constant)} map(s){where} constant over the image, showing no "
            "location (flagged in extras['constant_map'])"
            if constant.any()
            else ""
        )
        log.warning("%s: %s", method, "; ".join(t for t in (what, note) if t))
    ex = {
        k: (
            v.detach().float().cpu()
            if torch.is_tensor(v) and v.is_floating_point()
            else v.detach().cpu()
            if torch.is_tensor(v)
            else v
        )
        for k, v in (extras or {}).items()
    }
    ex["empty"] = empty.cpu()
    ex["constant_map"] = constant.cpu()
    st = {"target": p.describe(), **(settings or {})}
    if p.in_dtype != p.x.dtype:
        st["input_dtype"] = str(p.in_dtype).replace("torch.", "")
    return Explanation(
        maps=maps.cpu(),
        method=method,
        classes=classes.detach().long().cpu(),
        layer=layer,
        settings=st,
        raw=None if raw is None else raw.detach().float().cpu(),
        extras=ex,
    )
