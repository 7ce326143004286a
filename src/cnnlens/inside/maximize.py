"""Activation maximisation and class model visualisation.

Gradient ascent on the input image x (Simonyan et al. 2014; Yosinski et al.
2015; Olah et al. 2017): ``x ← x + η ∂J(x)/∂x`` for an objective J built from
targets — a class's pre-softmax score, a channel's mean activation, one neuron,
or (Mahendran & Vedaldi 2016) minus the squared error between the network's response
and a chosen target response. Without regularisation the image fills with
high-frequency noise; the regularisers keep it closer to a natural image:

- objective terms: total variation ``TV(x) = mean(|∂_u x|^p + |∂_v x|^p)`` and
  ``‖x − ½‖²`` (subtract them: ``channel("conv3", 5) - 0.1 * tv()``);
- L2 decay of the image parameter (pulls x toward grey), a Gaussian blur every
  n steps, and random jitter / scale / rotation of the image before each forward;
- the image parameterisation: plain pixels, or a Fourier spectrum scaled by 1/f
  with decorrelated colour (natural-image statistics, Olah 2017); both end in a
  sigmoid, so x stays a valid image in [0, 1].

Objectives are values that add, subtract and scale; a per-sample objective
(``channel(layer, [3, 5, 7])``) optimises several images in one batch. Lucent's
objectives are here: a neuron at (x, y), a direction in channel space (one position
or all), channel interactions as sums and differences
(``channel("conv3", 4) - channel("conv3", 7)``) and diversity across a batch. The
forward stops at the last layer the objective reads when it needs no logits.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..autograd import needs_autograd
from ..rectifiers import RectifierMode, Rectify, clamp_gradient
from ..results import Result
from ..tap import LayerTap, resolve_layer
from ..targets import Target, as_target
from .receptive import input_shape

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib), in figure() and preview().


# ---------------------------------------------------------------------------
# objectives
@dataclass
class _Ctx:
    image: torch.Tensor  # the parameterised image (before transforms), B×C×H×W
    acts: dict
    logits: torch.Tensor | None


class Objective:
    """A per-sample value J (B) to maximise, read from the image, tapped layers and/or the logits.

    ``a + b``, ``a - b``, ``2 * a``, ``a / 2``, ``-a`` and ``sum([...])`` give new objectives.

    >>> J = objectives.channel("features.3", 5) - 0.05 * objectives.tv()
    >>> J.layers, J.needs_logits
    (('features.3',), False)
    """

    def __init__(
        self,
        fn: Callable[[_Ctx], torch.Tensor],
        name: str,
        layers: Sequence[str] = (),
        needs_logits: bool = False,
        batch: int | None = None,
    ):
        self.fn = fn
        self.name = name
        self.layers = tuple(dict.fromkeys(layers))
        self.needs_logits = needs_logits
        self.batch = batch

    def __call__(self, ctx: _Ctx) -> torch.Tensor:
        v = self.fn(ctx)
        return v.reshape(-1) if v.dim() else v.expand(ctx.image.shape[0])

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    @staticmethod
    def _join(a: Objective, b: Objective, fn, name: str) -> Objective:
        if a.batch is not None and b.batch is not None and a.batch != b.batch:
            raise ValueError(f"cannot combine objectives for {a.batch} and {b.batch} images; give lists of one length")
        return Objective(fn, name, a.layers + b.layers, a.needs_logits or b.needs_logits, a.batch or b.batch)

    def __add__(self, other):
        if isinstance(other, (int, float)):
            if other == 0:
                return self
            return Objective(
                lambda c: self(c) + other, f"{self.name} + {other:g}", self.layers, self.needs_logits, self.batch
            )
        if not isinstance(other, Objective):
            return NotImplemented
        return self._join(self, other, lambda c: self(c) + other(c), f"{self.name} + {other.name}")

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, (int, float)):
            return self + (-other)
        if not isinstance(other, Objective):
            return NotImplemented
        return self._join(self, other, lambda c: self(c) - other(c), f"{self.name} − {_paren(other.name)}")

    def __rsub__(self, other):
        return (-self) + other

    def __neg__(self):
        return Objective(lambda c: -self(c), f"−{_paren(self.name)}", self.layers, self.needs_logits, self.batch)

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Objective(
            lambda c: k * self(c), f"{k:g}·{_paren(self.name)}", self.layers, self.needs_logits, self.batch
        )

    __rmul__ = __mul__

    def __truediv__(self, k):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return self * (1.0 / k)


def _paren(s: str) -> str:
    return f"({s})" if any(op in s for op in (" + ", " − ")) else s


def _per_sample(values) -> tuple[list, int | None]:
    if isinstance(values, (list, tuple)) or torch.is_tensor(values):
        vals = [int(v) for v in (values.tolist() if torch.is_tensor(values) else values)]
        if not vals:
            raise ValueError("give at least one channel or class")
        return vals, len(vals)
    return [int(values)], None


class _Objectives:
    """Objective constructors: ``objectives.channel(layer, c)``, ``objectives.class_score(c)``, ..."""

    @staticmethod
    def target(t: Target | Any, class_names: Sequence[str] | None = None) -> Objective:
        """Any :class:`cnnlens.targets.Target`: a class's logit, a channel's mean or a neuron."""
        t = as_target(t, class_names)
        if t.is_class:
            n = len(t.index) if t.kind == "class" and isinstance(t.index, tuple) else None

            def fn(c: _Ctx):
                assert c.logits is not None  # the objective asks for the logits (needs_logits=True)
                return t.score(c.logits, t.classes(c.logits))

            return Objective(fn, t.describe(class_names), (), True, n)
        layer = t.layer
        assert layer is not None  # a channel or neuron target names its layer
        return Objective(lambda c: t.layer_score(c.acts[layer]), t.describe(), (layer,), False, None)

    @staticmethod
    def class_score(cls: int | Sequence[int], class_names: Sequence[str] | None = None) -> Objective:
        """The pre-softmax score y_c (a list: one class per image in the batch)."""
        vals, n = _per_sample(cls)
        return _Objectives.target(Target.cls(vals if n else vals[0]), class_names)

    @staticmethod
    def channel(layer: str, channel: int | Sequence[int]) -> Objective:
        """A channel's mean activation (a list: one channel per image in the batch)."""
        vals, n = _per_sample(channel)
        targets = [Target.channel(layer, c) for c in vals]
        if n is None:
            return Objective(lambda c: targets[0].layer_score(c.acts[layer]), targets[0].describe(), (layer,))

        idx = torch.as_tensor(vals)

        def fn(c: _Ctx):  # one gather for the whole batch: image b's channel vals[b]
            a = c.acts[layer]
            if max(vals) >= a.shape[1] or min(vals) < 0:
                return torch.cat([t.layer_score(a[b : b + 1]) for b, t in enumerate(targets)])  # its error message
            rows = torch.arange(n, device=a.device)
            return a[rows, idx.to(a.device)].reshape(n, -1).mean(1)

        return Objective(fn, f"{layer} channels {vals}", (layer,), False, n)

    @staticmethod
    def neuron(
        layer: str,
        channel: int | Sequence[int],
        i: int | None = None,
        j: int | None = None,
        *,
        x: int | None = None,
        y: int | None = None,
    ) -> Objective:
        """One unit's activation at row ``i``, column ``j`` (default: the centre of the layer's grid).

        ``x``/``y`` name the position as Lucent does (x = column, y = row):
        ``neuron("features.3", 5, x=2, y=1)`` is ``neuron("features.3", 5, 1, 2)``.
        """
        if x is not None or y is not None:
            if i is not None or j is not None:
                raise ValueError("give the position as (i, j) or as x=, y=, not both")
            if x is None or y is None:
                raise ValueError("give both x= (column) and y= (row)")
            i, j = int(y), int(x)
        vals, n = _per_sample(channel)

        def fn(c: _Ctx):
            a = c.acts[layer]
            ii = a.shape[-2] // 2 if i is None else i
            jj = a.shape[-1] // 2 if j is None else j
            ts = [Target.neuron(layer, ch, ii, jj) for ch in vals]
            if n is None:
                return ts[0].layer_score(a)
            return torch.cat([t.layer_score(a[b : b + 1]) for b, t in enumerate(ts)])

        where = "centre" if i is None else f"({i}, {j})"
        return Objective(fn, f"{layer} unit {vals if n else vals[0]}@{where}", (layer,), False, n)

    @staticmethod
    def direction(layer: str, vector, *, cosine: bool = False) -> Objective:
        """A direction v in the layer's channel space: mean over positions of ⟨a(u, v), v⟩ (Lucid's ``direction``).

        Linear in the activations, so ``direction(layer, e_k)`` is ``channel(layer, k)`` and a
        direction is a weighted sum of channels. ``cosine=True``: the mean cosine similarity
        cos(a(u, v), v) instead, which ignores how strongly the position fires (Lucent's
        ``direction``). ``vector``: K values, or B×K (one direction per image).

        >>> J = objectives.direction("features.3", torch.tensor([1.0, -1.0, 0.0, 0.0]))
        """
        v = torch.as_tensor(vector, dtype=torch.float32)
        if v.dim() not in (1, 2) or v.shape[-1] == 0:
            raise ValueError(f"vector must hold K values (or B×K), got shape {tuple(v.shape)}")
        n = v.shape[0] if v.dim() == 2 else None

        def fn(c: _Ctx):
            a = c.acts[layer]
            if a.shape[1] != v.shape[-1]:
                raise ValueError(f"the direction has {v.shape[-1]} values; layer {layer} has {a.shape[1]} channels")
            w = v.to(a.device, a.dtype, copy=True).reshape(-1, v.shape[-1], *([1] * (a.dim() - 2)))
            if cosine:
                return F.cosine_similarity(a, w.expand_as(a), dim=1, eps=1e-8).flatten(1).mean(1)
            return (a * w).sum(1).flatten(1).mean(1)

        what = "cosine to a direction" if cosine else "direction"
        return Objective(fn, f"{layer} {what}", (layer,), False, n)

    @staticmethod
    def direction_neuron(
        layer: str, vector, i: int | None = None, j: int | None = None, *, cosine: bool = False
    ) -> Objective:
        """⟨a(i, j), v⟩ at one position (default: the centre), or its cosine (Lucent's ``direction_neuron``)."""
        v = torch.as_tensor(vector, dtype=torch.float32)
        if v.dim() not in (1, 2) or v.shape[-1] == 0:
            raise ValueError(f"vector must hold K values (or B×K), got shape {tuple(v.shape)}")
        n = v.shape[0] if v.dim() == 2 else None

        def fn(c: _Ctx):
            a = c.acts[layer]
            ii = a.shape[-2] // 2 if i is None else i
            jj = a.shape[-1] // 2 if j is None else j
            if not (0 <= ii < a.shape[-2] and 0 <= jj < a.shape[-1]):
                raise ValueError(f"position {(ii, jj)} is outside the layer's {tuple(a.shape[-2:])} grid")
            if a.shape[1] != v.shape[-1]:
                raise ValueError(f"the direction has {v.shape[-1]} values; layer {layer} has {a.shape[1]} channels")
            at = a[:, :, ii, jj]
            w = v.to(a.device, a.dtype, copy=True).reshape(-1, v.shape[-1]).expand_as(at)
            return F.cosine_similarity(at, w, dim=1, eps=1e-8) if cosine else (at * w).sum(1)

        where = "centre" if i is None else f"({i}, {j})"
        return Objective(fn, f"{layer} direction@{where}", (layer,), False, n)

    @staticmethod
    def diversity(layer: str, group: int | None = None) -> Objective:
        """How different the images of a batch (or of each group) are at ``layer`` (Lucid/Lucent's ``diversity``).

        With G_b = A_b A_bᵀ the K×K Gram matrix of image b's activations (K channels ×
        positions) and Ĝ_b = G_b/‖G_b‖_F, image b's value is −(1/n) Σ_{b'≠b} ⟨Ĝ_b, Ĝ_b'⟩ over
        the n images of its group: the whole batch by default (its sum over the batch is
        Lucent's objective), or consecutive groups of ``group`` images (a diversity set per
        channel, as the microscope renders them). Adding it (``channel(layer, k) + 100 *
        diversity(layer)``, with ``batch=``) pushes the images apart in style. Needs n ≥ 2.
        """
        if group is not None and int(group) < 2:
            raise ValueError("diversity needs groups of at least 2 images")

        def fn(c: _Ctx):
            a = c.acts[layer]
            b = a.shape[0]
            n = b if group is None else int(group)
            if n < 2:
                raise ValueError("diversity compares the images of a batch; pass batch=2 or more to maximize")
            if b % n:
                raise ValueError(f"diversity groups of {n} do not divide the batch of {b} images")
            f = a.reshape(b, a.shape[1], -1)
            g = f @ f.transpose(1, 2)
            g = (g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(b, 1, 1)).reshape(b // n, n, -1)
            sim = g @ g.transpose(1, 2)  # groups × n × n cosine similarities of the Gram matrices
            return (-(sim.sum(-1) - sim.diagonal(dim1=1, dim2=2)) / n).reshape(b)

        what = f"diversity({layer})" if group is None else f"diversity({layer}, groups of {int(group)})"
        return Objective(fn, what, (layer,), False, None)

    @staticmethod
    def tv(p: float = 2.0) -> Objective:
        """Total variation of the image, mean(|∂_u x|^p + |∂_v x|^p) (a penalty: subtract it)."""

        def fn(c: _Ctx):
            return total_variation(c.image, p)

        return Objective(fn, "TV" if p == 2 else f"TV{p:g}")

    @staticmethod
    def l2(center: float = 0.5) -> Objective:
        """mean((x − center)²) of the image (a penalty: subtract it)."""
        return Objective(lambda c: ((c.image - center) ** 2).flatten(1).mean(1), "L2")

    @staticmethod
    def mse(target: torch.Tensor, layer: str | None = None) -> Objective:
        """−mean((response − target)²): the response is the logits (or a layer's output) and
        ``target`` the response wanted, e.g. a one-hot vector ×10 (broadcast over the batch)."""
        target = torch.as_tensor(target, dtype=torch.float32)

        def fn(c: _Ctx):
            r = c.logits if layer is None else c.acts[layer]
            assert r is not None  # the objective asks for the logits (needs_logits) when it reads them
            t = target.to(r.device)
            if t.shape != r.shape:
                t = t.expand_as(r) if t.dim() < r.dim() or t.shape[0] == 1 else t
            if t.shape != r.shape:
                raise ValueError(
                    f"the target response has shape {tuple(target.shape)}; the response is {tuple(r.shape)}"
                )
            return -((r - t) ** 2).flatten(1).mean(1)

        where = "logits" if layer is None else layer
        return Objective(
            fn,
            f"−MSE({where}, target)",
            () if layer is None else (layer,),
            layer is None,
            target.shape[0] if target.dim() >= 2 and target.shape[0] > 1 else None,
        )


objectives = _Objectives()


def total_variation(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Per-sample TV: mean over pixels of |x[u+1,v] − x[u,v]|^p + |x[u,v+1] − x[u,v]|^p (B)."""
    dv = (x[..., 1:, :] - x[..., :-1, :]).abs().pow(p).flatten(1).mean(1)
    du = (x[..., :, 1:] - x[..., :, :-1]).abs().pow(p).flatten(1).mean(1)
    return dv + du


# ---------------------------------------------------------------------------
# image parameterisations
_COLOR_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


def _decorrelate_matrix() -> torch.Tensor:
    return _COLOR_SVD_SQRT / _COLOR_SVD_SQRT.norm(dim=0).max()


def _decorrelate(t: torch.Tensor) -> torch.Tensor:
    """Map decorrelated colour to RGB (ImageNet colour covariance square root, as in Lucid)."""
    return torch.einsum("bchw,dc->bdhw", t, _decorrelate_matrix().to(t))


class _Param:
    """An image parameterisation: ``image()`` gives B×C×H×W in [0, 1]."""

    def __init__(
        self,
        shape,
        kind: str,
        decorrelate: bool,
        gen: torch.Generator,
        device,
        init=None,
        sd: float = 0.01,
        shared: bool | int = False,
    ):
        self.shape, self.kind = shape, kind
        B, C, H, W = shape
        # shared (= 1): every image starts from the noise a batch of one would draw (image b then follows a run of
        # objective b alone, step for step); shared = n: every run of n images starts from the noise a batch of
        # n would draw; otherwise each image draws its own
        n = int(shared)
        noise = (
            (lambda *s: torch.randn(n, *s[1:], generator=gen).repeat(s[0] // n, *[1] * (len(s) - 1)))
            if n
            else (lambda *s: torch.randn(*s, generator=gen))
        )
        self.decorrelate = decorrelate and C == 3
        if kind == "pixel":
            if init is not None:
                init = torch.as_tensor(init)
                if (
                    init.shape[-3:] != (C, H, W)
                    or init.dim() not in (3, 4)
                    or (init.dim() == 4 and init.shape[0] not in (1, B))
                ):
                    raise ValueError(
                        f"init has shape {tuple(init.shape)}; give C×H×W or N×C×H×W = {B}×{C}×{H}×{W} in [0, 1]"
                    )
                x = init.detach().to(torch.float32).cpu().clamp(1e-4, 1 - 1e-4).expand(shape).clone()
                p = torch.log(x / (1 - x))
                if self.decorrelate:
                    p = torch.einsum("bchw,dc->bdhw", p, torch.linalg.inv(_decorrelate_matrix()))
            else:
                p = noise(*shape) * sd
            self.p = p.to(device).requires_grad_(True)
        elif kind == "fourier":
            if init is not None:
                raise ValueError("init= works with param='pixel'; a Fourier image starts from noise")
            fy = torch.fft.fftfreq(H)[:, None]
            fx = torch.fft.rfftfreq(W)[None, :]
            self.freq = torch.sqrt(fx**2 + fy**2).to(device)
            self.scale = 1.0 / self.freq.clamp_min(1.0 / max(H, W))  # 1/f, as Lucid/Lucent
            self.p = (noise(B, C, H, W // 2 + 1, 2) * sd).to(device).requires_grad_(True)
        else:
            raise ValueError(f"param must be 'pixel' or 'fourier', got {kind!r}")

    def _linear(self) -> torch.Tensor:
        if self.kind == "pixel":
            t = self.p
        else:
            B, C, H, W = self.shape
            spec = torch.view_as_complex(self.p) * self.scale
            t = torch.fft.irfft2(spec, s=(H, W), norm="ortho") / 4.0
        return _decorrelate(t) if self.decorrelate else t

    def image(self) -> torch.Tensor:
        return torch.sigmoid(self._linear())

    @torch.no_grad()
    def decay(self, rate: float) -> None:
        self.p.mul_(1.0 - rate)

    @torch.no_grad()
    def blur(self, sigma: float) -> None:
        """Gaussian blur of the image's linear part (in the spectrum: × exp(−2π²σ²f²))."""
        if self.kind == "fourier":
            g = torch.exp(-2 * math.pi**2 * sigma**2 * self.freq**2)
            self.p.mul_(g[..., None])
        else:
            self.p.copy_(gaussian_blur(self.p, sigma))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian blur (reflect padding), radius ⌈3σ⌉."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = k / k.sum()
    C = x.shape[1]
    pad_mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    y = F.pad(x, (r, r, 0, 0), mode=pad_mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    y = F.pad(y, (0, 0, r, r), mode=pad_mode)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


# ---------------------------------------------------------------------------
# redirected ReLU gradients (Lucid's ``redirected_relu_grad`` and ``redirected_relu6_grad``)
class _RedirectedReLU(Rectify):
    """y = clamp(x, lo, hi) (a ReLU: lo = 0, hi = ∞; ReLU6: hi = 6); backward: the clamp's own gradient for
    every image whose gradient through it is not all zero, else the incoming gradient wherever following it
    moves x back into (lo, hi) or within it — not below lo, not above hi (so an image whose unit starts inactive
    is pushed toward activating it instead of getting no gradient at all). The forward is :class:`Rectify`'s.
    """

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        lo, hi = ctx.lo, ctx.hi
        grad = clamp_gradient(g, x, lo, hi)  # the clamp's gradient (one pass)
        if g.dim() > 1:
            dims = tuple(range(1, grad.dim()))  # not flatten(1): a channels-last gradient would be copied
            dead = grad.amax(dims) == 0  # one pass (aminmax is 3× slower on the CPU); amin only if some max is 0
            if bool(dead.any()):
                dead &= grad.amin(dims) == 0
        else:
            dead = (grad == 0).all().reshape(1)
        if bool(dead.any()):  # only while some image's unit is inactive (the first steps): the redirected gradient
            red = torch.where(x <= lo, g.clamp_min(0), g)  # ascent: g > 0 raises the objective
            if hi is not None:
                red = torch.where(x >= hi, g.clamp_max(0), red)
            dead = dead.view(-1, *[1] * (g.dim() - 1)) if g.dim() > 1 else dead.reshape(())
            grad = torch.where(dead, red, grad)
        return grad, None, None, None


class redirected_relus(RectifierMode):
    """Within this block, every ReLU / ReLU6 / hardtanh call that records a gradient backpropagates the
    redirected gradient (:class:`_RedirectedReLU`); forward values are unchanged.

    A mode around the calls (:class:`cnnlens.rectifiers.RectifierMode`) rather than a hook on the modules:
    an in-place ReLU (``nn.ReLU(inplace=True)``, as in torchvision's ResNets) overwrites its input, so a
    forward hook sees no pre-activation to send the gradient to, and a functional ``F.relu`` has no module.
    An in-place call still writes its result into its input. No module is touched.
    """

    def rectify(self, call):
        return _RedirectedReLU.apply(call.x, call.lo, call.hi, call.inplace)


# ---------------------------------------------------------------------------
# transforms applied before each forward
def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _range(v, neutral: float) -> tuple[float, float] | None:
    """A number r means neutral ± r (scale 0.1 → (0.9, 1.1), rotate 10 → (−10°, 10°)); a pair is (lo, hi)."""
    if v is None or v == 0:
        return None
    if isinstance(v, (int, float)):
        return (neutral - abs(v), neutral + abs(v))
    lo, hi = v
    return (float(lo), float(hi))


def random_transform(x: torch.Tensor, gen: torch.Generator, jitter: int = 0, scale=None, rotate=None) -> torch.Tensor:
    """Random affine (scale, rotation in degrees, reflection padding) then a roll by up to ±jitter pixels."""
    if scale is not None or rotate is not None:
        s = _uniform(gen, *scale) if scale else 1.0
        a = math.radians(_uniform(gen, *rotate)) if rotate else 0.0
        theta = torch.tensor(
            [[math.cos(a) / s, -math.sin(a) / s, 0.0], [math.sin(a) / s, math.cos(a) / s, 0.0]],
            dtype=x.dtype,
            device=x.device,
        )
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if jitter:
        dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
        x = torch.roll(x, (dy, dx), dims=(-2, -1))
    return x


# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Visualization(Result):
    """What activation maximisation made.

    images: B×C×H×W in [0, 1]; objective: its description; start / final: J per
    image on the untransformed image before the first and after the last step;
    history: steps×B, J at each step (on the transformed image); settings: all that ran.
    """

    images: torch.Tensor
    objective: str
    start: torch.Tensor
    final: torch.Tensor
    history: torch.Tensor
    settings: dict = field(default_factory=dict)

    def figure(self, titles: Sequence[str] | None = None, ncols: int = 6):
        from ..viz import image_grid

        titles = titles or [f"J={float(v):.3g}" for v in self.final]
        return image_grid(list(self.images), titles, ncols=ncols)


def _acts(tap: LayerTap, layers) -> dict:
    """The objective's layers by the names it uses (``features.3`` for ``net.features.3``)."""
    return {l: tap[l] for l in layers}


def _as_objective(obj, model) -> Objective:
    if isinstance(obj, Objective):
        return obj
    names = getattr(getattr(model, "spec", None), "class_names", None) or None
    return objectives.target(obj, names)


def _input_geometry(model: nn.Module, size, channels) -> tuple[int, int, int]:
    return input_shape(model, size, channels)


@needs_autograd
def maximize(
    model: nn.Module,
    objective,
    steps: int = 256,
    *,
    lr: float = 0.05,
    param: str = "fourier",
    decorrelate: bool = True,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    batch: int | None = None,
    tv: float = 0.0,
    l2: float = 0.0,
    l2_decay: float = 0.0,
    blur_every: int = 0,
    blur_sigma: float = 0.5,
    jitter: int = 0,
    scale: float | tuple[float, float] | None = None,
    rotate: float | tuple[float, float] | None = None,
    init: torch.Tensor | None = None,
    seed: int = 0,
    noise: str | int = "independent",
    redirect_relu: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Visualization:
    """Gradient ascent on the input to maximise an objective: x* = argmax_x J(x) − λ_TV·TV(x) − λ_2‖x − ½‖².

    ``objective``: an :class:`Objective` (``objectives.channel(...)``, sums of
    them), a :class:`cnnlens.targets.Target` or a class shorthand (``281``,
    ``"tabby"``). ``tv``/``l2`` add ``−tv·TV`` and ``−l2·L2`` terms; ``l2_decay``,
    ``blur_every``/``blur_sigma``, ``jitter``/``scale``/``rotate`` regularise the
    optimisation itself (``scale=0.1``: a random zoom in [0.9, 1.1]; ``rotate=10``:
    a random rotation in [−10°, 10°]). Adam with step ``lr``; the same ``seed``
    gives the same images. ``noise="shared"``: every image of a batch starts from the
    noise a single image would draw with this seed (one transform is drawn per step
    for the whole batch), so a batch of per-image objectives reproduces separate
    runs of each; ``"independent"`` (default): each image draws its own; an int n: every
    run of n consecutive images starts from the noise a batch of n would draw (n
    images per objective, e.g. a diversity set, each set as if optimised alone).
    ``redirect_relu=True``: an image whose gradient through a ReLU (or ReLU6) is all zero
    (its unit starts inactive, e.g. on grey noise) gets the gradient that would raise the
    ReLU's input instead (Lucid's redirected ReLU, :class:`redirected_relus`: every relu /
    relu6 / hardtanh call, module or functional, in place or not; forward values are unchanged).

    Example::

        from cnnlens.inside import maximize, objectives
        v = maximize(model, objectives.channel("features.3", [0, 1, 2, 3]) - 0.05 * objectives.tv(), steps=128)
        v.images   # 4×C×H×W, one per channel
    """
    J, B, (C, H, W), gen, prm = _setup(
        model, objective, steps, param, decorrelate, size, channels, batch, tv, l2, init, seed, noise
    )
    scale_r = _range(scale, 1.0)
    rot_r = _range(rotate, 0.0)
    stop = _stop_layer(model, J, prm)
    _, start = _evaluate(model, J, prm, stop)
    transform = dict(jitter=jitter, scale=scale_r, rotate=rot_r)
    regularise = dict(l2_decay=l2_decay, blur_every=blur_every, blur_sigma=blur_sigma)
    history = _ascend(model, J, prm, stop, steps, lr, gen, transform, regularise, redirect_relu, progress)
    img, final = _evaluate(model, J, prm, stop)
    settings = {"steps": steps, "lr": lr, "param": param, "decorrelate": decorrelate and C == 3, "size": [H, W]}
    settings |= {"batch": B, "tv": tv, "l2": l2, "l2_decay": l2_decay, "blur_every": blur_every}
    settings |= {"blur_sigma": blur_sigma, "jitter": jitter, "scale": scale_r, "rotate": rot_r, "seed": seed}
    settings |= {"noise": noise, "redirect_relu": redirect_relu, "optimizer": "Adam", "stopped_after": stop}
    return Visualization(
        img.detach().cpu(), J.name, start, final, torch.stack(history) if history else torch.empty(0, B), settings
    )


def _setup(model, objective, steps, param, decorrelate, size, channels, batch, tv, l2, init, seed, noise):
    """:func:`maximize`'s settings checked, and what it optimises: (objective with its penalties, batch,
    (C, H, W), the seeded generator, the parameterised images)."""
    J = _as_objective(objective, model)
    if tv:
        J = J - tv * objectives.tv()
    if l2:
        J = J - l2 * objectives.l2()
    if param not in ("pixel", "fourier"):
        raise ValueError(f"param must be 'pixel' or 'fourier', got {param!r}")
    if steps < 0:
        raise ValueError("steps must be ≥ 0")
    if batch is not None and J.batch is not None and batch != J.batch:
        raise ValueError(f"batch={batch} but the objective defines {J.batch} images; drop batch= or match it")
    B = J.batch or batch or 1
    C, H, W = _input_geometry(model, size, channels)
    for layer in J.layers:
        resolve_layer(model, layer)
    p0 = next(model.parameters(), None)
    dev = p0.device if p0 is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(noise, bool) or not (noise in ("independent", "shared") or (isinstance(noise, int) and noise >= 1)):
        raise ValueError(f"noise must be 'independent', 'shared' or a group size ≥ 1, got {noise!r}")
    if isinstance(noise, int) and B % noise:
        raise ValueError(f"noise={noise}: groups of {noise} images do not divide the batch of {B}")
    prm = _Param(
        (B, C, H, W),
        param,
        decorrelate,
        gen,
        dev,
        init=init,
        shared=1 if noise == "shared" else (noise if isinstance(noise, int) else 0),
    )
    return J, B, (C, H, W), gen, prm


def _stop_layer(model: nn.Module, J: Objective, prm: _Param) -> str | None:
    """Where the forward can stop: the objective's layer, or the last of its layers to run (None: the logits)."""
    stop = None
    if not J.needs_logits and len(J.layers) == 1:
        stop = resolve_layer(model, J.layers[0])[0]
    elif not J.needs_logits and J.layers:
        with LayerTap(model, J.layers, detach=True) as tap, torch.no_grad():
            tap.run(prm.image())
            stop = list(tap.outputs)[-1]
    return stop


def _evaluate(model: nn.Module, J: Objective, prm: _Param, stop: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The current images and the objective's value on them (on the CPU), without a gradient."""
    with LayerTap(model, J.layers, stop_after=stop) as tap, torch.no_grad():
        img = prm.image()
        logits = tap.run(img)
        return img, J(_Ctx(img, _acts(tap, J.layers), logits)).detach().cpu()


def _ascend(model, J, prm, stop, steps, lr, gen, transform: dict, regularise: dict, redirect_relu, progress):
    """``steps`` Adam steps of gradient ascent on J through random transforms of the images; J at each step."""
    scale_r, rot_r = transform["scale"], transform["rotate"]
    history = []
    opt = torch.optim.Adam([prm.p], lr=lr, maximize=True)  # gradient ascent on J
    redirect = redirected_relus() if redirect_relu else contextlib.nullcontext()
    with LayerTap(model, J.layers, stop_after=stop) as tap:
        for step in range(steps):
            img = prm.image()
            xt = random_transform(img, gen, transform["jitter"], scale_r, rot_r)
            with redirect:
                logits = tap.run(xt)
            val = J(_Ctx(img, _acts(tap, J.layers), logits))
            (prm.p.grad,) = torch.autograd.grad(val.sum(), prm.p)
            opt.step()
            if regularise["l2_decay"]:
                prm.decay(regularise["l2_decay"])
            if regularise["blur_every"] and (step + 1) % regularise["blur_every"] == 0:
                prm.blur(regularise["blur_sigma"])
            history.append(val.detach().cpu())
            if progress is not None:
                progress(step + 1, steps)
    return history


def objective_for(
    layer: str | None = None,
    channels: Sequence[int] | None = None,
    classes: Sequence[int | str] | None = None,
    *,
    neuron: bool = False,
    class_names: Sequence[str] | None = None,
) -> tuple[Objective, list[str]]:
    """What ``cnnlens inside maximize`` maximises, with one title per image: the class scores of ``classes``
    (indices or names), else the channels of ``layer`` (default 0–3; their centre units if ``neuron``).

    >>> J, titles = objective_for("features.3", [0, 5])   # titles: ["features.3 ch 0", "features.3 ch 5"]
    """
    if classes is not None:
        idx = [as_target(c.strip() if isinstance(c, str) else c, class_names).index for c in classes]
        return objectives.class_score(idx), [class_names[i] if class_names else str(i) for i in idx]
    if layer is None:
        raise ValueError("give a layer (with channels) to maximise channels, or classes to maximise class scores")
    chans = list(channels or [0, 1, 2, 3])
    J = objectives.neuron(layer, chans) if neuron else objectives.channel(layer, chans)
    return J, [f"{layer} {'unit' if neuron else 'ch'} {c}" for c in chans]
