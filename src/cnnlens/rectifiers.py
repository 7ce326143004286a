"""Every ReLU application of a forward — module or functional, in place or not — through one torch-function mode.

Methods that change the backward rule of the rectifiers (guided backprop, activation
maximisation's redirected ReLU, the deconvnet's un-ReLU) must reach every ReLU the
forward applies, not only ``nn.ReLU`` modules: ``F.relu(x, inplace=True)`` at the end of
torchvision's DenseNet features, ``out = F.relu(out)`` in a hand-written residual block
or ``x.relu_()`` have no module to hook. :class:`RectifierMode` sees them all, because
``nn.ReLU`` and ``nn.ReLU6`` themselves call ``F.relu`` / ``F.hardtanh``:

* ``F.relu``, ``torch.relu``, ``Tensor.relu`` and the in-place ``relu_`` forms (nn.ReLU,
  also with ``inplace=True``);
* ``F.relu6`` and ``F.hardtanh(x, 0, hi)`` (nn.ReLU6 is hardtanh(0, 6));

each as a :class:`RectifierCall` (x, lo, hi, inplace). A subclass says in
:meth:`RectifierMode.rectify` what to return instead; the mode counts the applications
it replaced (``applied``) and the activation calls it did not (``skipped``: GELU, SiLU,
Hardswish, LeakyReLU, ... and hardtanh with another lower bound — rules written for
ReLUs do not apply to them). No module is touched; the mode is active only inside its
``with`` block.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: the functions through which every ReLU / ReLU6 application passes
RELU_FUNCS = frozenset([F.hardtanh, F.relu6, F.relu, torch.relu, torch.Tensor.relu, torch.relu_, torch.Tensor.relu_])

#: other activations (counted in ``skipped`` when the forward applies them)
OTHER_ACTIVATIONS = {
    F.gelu: "gelu",
    F.silu: "silu",
    F.hardswish: "hardswish",
    F.leaky_relu: "leaky_relu",
    F.elu: "elu",
    F.selu: "selu",
    F.celu: "celu",
    F.mish: "mish",
    F.softplus: "softplus",
    F.prelu: "prelu",
    F.rrelu: "rrelu",
    F.hardsigmoid: "hardsigmoid",
    F.glu: "glu",
}


@dataclass(frozen=True)
class RectifierCall:
    """One ReLU-like call: y = clamp(x, lo, hi) (hi None for a ReLU), in place when ``inplace``."""

    x: torch.Tensor
    lo: float
    hi: float | None
    inplace: bool
    name: str


def relu_call(func, args, kwargs) -> RectifierCall | None:
    """The :class:`RectifierCall` of ``func(*args, **kwargs)`` when func is one of :data:`RELU_FUNCS`, else None."""
    if func is F.hardtanh:
        # strict=False: positional args may stop before the last name
        a = dict(zip(("input", "min_val", "max_val", "inplace"), args, strict=False), **kwargs)
        return RectifierCall(
            a["input"],
            float(a.get("min_val", -1.0)),
            float(a.get("max_val", 1.0)),
            bool(a.get("inplace", False)),
            "hardtanh",
        )
    if func is F.relu6:
        a = dict(zip(("input", "inplace"), args, strict=False), **kwargs)
        return RectifierCall(a["input"], 0.0, 6.0, bool(a.get("inplace", False)), "relu6")
    if func is F.relu:
        a = dict(zip(("input", "inplace"), args, strict=False), **kwargs)
        return RectifierCall(a["input"], 0.0, None, bool(a.get("inplace", False)), "relu")
    if func in (torch.relu, torch.Tensor.relu):
        return RectifierCall(args[0] if args else kwargs["input"], 0.0, None, False, "relu")
    if func in (torch.relu_, torch.Tensor.relu_):
        return RectifierCall(args[0] if args else kwargs["input"], 0.0, None, True, "relu_")
    return None


def clamp_gradient(g: torch.Tensor, saved: torch.Tensor, lo: float, hi: float | None) -> torch.Tensor:
    """The ordinary gradient of clamp(x, lo, hi) — g where lo < x < hi, else 0 — by the kernels autograd uses
    for relu / hardtanh (``saved`` is x, or y for an in-place call: the masks are the same)."""
    if hi is None:
        return torch.ops.aten.threshold_backward(g, saved, lo)
    return torch.ops.aten.hardtanh_backward(g, saved, lo, hi)


class Rectify(torch.autograd.Function):
    """y = clamp(x, lo, hi) with the ordinary gradient; subclasses override ``backward`` with another rule.

    ``inplace``: overwrite x with y and keep y for the backward instead of x (the masks are the same:
    lo < y < hi ⇔ lo < x < hi, y ≤ lo ⇔ x ≤ lo, y ≥ hi ⇔ x ≥ hi).
    """

    @staticmethod
    def forward(ctx, x, lo, hi, inplace):
        if inplace:  # as torch's own in-place relu: x is overwritten and the output is kept for the backward
            ctx.mark_dirty(x)
            y = x.clamp_min_(lo) if hi is None else x.clamp_(lo, hi)
        else:
            y = x.clamp_min(lo) if hi is None else x.clamp(lo, hi)
        ctx.save_for_backward(y if inplace else x)
        ctx.lo, ctx.hi = lo, hi
        return y

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return clamp_gradient(g, x, ctx.lo, ctx.hi), None, None, None


class GuidedRectify(Rectify):
    """Guided backprop's rule (Springenberg et al. 2015): R_in = 1[lo < x < hi] · 1[R_out > 0] · R_out."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return clamp_gradient(g.clamp_min(0), x, ctx.lo, ctx.hi), None, None, None


class RectifierMode(TorchFunctionMode):
    """Within this block, every ReLU / ReLU6 call that records a gradient goes to :meth:`rectify`.

        ``applied`` counts the calls :meth:`rectify` replaced; ``skipped`` counts, by function name, the
        activation calls it left alone (other activations, or calls it declined). ``active``: a callable
    that turns the mode off while it returns False (a tap's probe forward). ``gradient_only``
        (default): only calls on a tensor that requires grad, while grad mode is on, are offered.
    """

    gradient_only = True

    def __init__(self, active=None) -> None:
        super().__init__()
        self.active = active  # a callable: while it returns False, every call runs unchanged and uncounted
        self.applied = 0
        self.skipped: Counter = Counter()

    def rectify(self, call: RectifierCall) -> torch.Tensor | None:  # pragma: no cover - overridden
        """What the call returns instead (None: run it as it is)."""
        return None

    def _offered(self, x) -> bool:
        if not (torch.is_tensor(x) and x.is_floating_point()):
            return False
        return not self.gradient_only or (torch.is_grad_enabled() and x.requires_grad)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.active is not None and not self.active():
            return func(*args, **kwargs)
        if func in RELU_FUNCS:
            call = relu_call(func, args, kwargs)
            if call is not None and self._offered(call.x):
                out = self.rectify(call)
                if out is not None:
                    self.applied += 1
                    return out
                self.skipped[call.name if call.name != "hardtanh" else f"hardtanh({call.lo:g}, {call.hi:g})"] += 1
        elif func in OTHER_ACTIVATIONS and args and self._offered(args[0]):
            self.skipped[OTHER_ACTIVATIONS[func]] += 1
        return func(*args, **kwargs)


class guided_relus(RectifierMode):
    """Every ReLU / ReLU6 application (lower bound 0) backpropagates by guided backprop's rule
    (:class:`GuidedRectify`); forward values are unchanged. Hardtanh with another lower bound and
    other activations keep their ordinary gradient and are counted in ``skipped``.

    >>> with guided_relus() as mode:                       # doctest: +SKIP
    ...     (g,) = torch.autograd.grad(model(x)[:, 3].sum(), x)
    >>> mode.applied                                       # ReLU applications guided
    """

    def rectify(self, call: RectifierCall) -> torch.Tensor | None:
        if call.lo != 0.0:
            return None
        return GuidedRectify.apply(call.x, call.lo, call.hi, call.inplace)


def skipped_note(skipped: dict) -> str:
    """'gelu ×4, silu ×2' for a ``skipped`` count ('' when empty)."""
    return ", ".join(f"{k} ×{v}" for k, v in sorted(skipped.items()))
