"""Gradient attacks in pixel space: the fast gradient sign method, PGD, and the minimal ε.

Everything works on pixel-space input in [0, 1] (normalisation is inside the
model) and on the logits: the loss is the cross-entropy of the logits (never of
probabilities). After every step the image is projected back onto the ε-ball
around ``x`` and clipped to [0, 1].

* untargeted: raise the loss of the true class (``y``), or of the predicted one
  when no labels are given — ``x' = x + α·sign(∇ₓ CE(f(x), y))``;
* targeted: lower the loss of a target class — ``x' = x − α·sign(∇ₓ CE(f(x), t))``;
  ``target="second"`` pushes the image over the decision boundary to the
  second closest class.

The public functions run the model inside ``LayerTap(model)`` with no layers, so
the model is in eval mode with frozen parameters for the call (both restored
afterwards): only the input gets a gradient, no parameter ``.grad`` is touched
and BatchNorm statistics do not move. The ``_``-prefixed core functions take a
``forward`` callable and use the model as it is; adversarial training
(:mod:`cnnlens.attacks.robust`) calls them on a model in training mode.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._inputs import check_not_empty
from .._batch import check_batch_size, chunks
from ..tap import LayerTap
from ..targets import Target, as_target, model_classes
from .result import AttackResult
from .._autograd import needs_autograd

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]
_UNTARGETED = ("untargeted", "none")
_NORMS = {"inf": "inf", "linf": "inf", "l_inf": "inf", "2": "2", "l2": "2"}


# --------------------------------------------------------------------------- checks
def _norm(norm: Any) -> str:
    key = str(norm).strip().lower().replace("∞", "inf")
    if key in ("float('inf')", "infinity"):
        key = "inf"
    if isinstance(norm, float) and math.isinf(norm):
        key = "inf"
    if isinstance(norm, (int, float)) and not isinstance(norm, bool) and norm == 2:
        key = "2"
    if key not in _NORMS:
        raise ValueError(f"norm {norm!r} is not supported; use norm='inf' (L∞) or norm='2' (L2)")
    return _NORMS[key]


def _check_input(x: Any) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a tensor N×C×H×W in [0, 1], got {type(x).__name__}; load images with cnnlens.load_images")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"x must be a float tensor N×C×H×W in [0, 1], got {tuple(x.shape)} {x.dtype}; "
            "add a batch dimension with x[None] or load images with cnnlens.load_images"
        )
    check_not_empty(x)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"x has values in [{float(x.min()):.3g}, {float(x.max()):.3g}], outside [0, 1]; cnnlens attacks work in "
            "pixel space (normalisation is inside the model): pass unnormalised images, e.g. from cnnlens.load_images"
        )
    return x.detach()


def _check_model(model: Any, x: torch.Tensor) -> None:
    """The model is an nn.Module on x's device (else a one-line fix); LayerTap.run casts x to the model's dtype."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    t = next((p for p in list(model.parameters()) + list(model.buffers()) if p.is_floating_point()), None)
    if t is None:
        return
    if t.device != x.device:
        raise ValueError(f"the input is on {x.device} but the model is on {t.device}; move the input with x.to({str(t.device)!r})")


def _eps_tensor(eps: Any, n: int, x: torch.Tensor, what: str = "eps") -> torch.Tensor:
    """ε as an N×1×1×1 tensor on x's device (a number or one value per sample)."""
    if isinstance(eps, bool) or eps is None:
        raise TypeError(f"{what} must be a number or one number per sample, e.g. {what}=2/255")
    t = torch.as_tensor(eps, dtype=x.dtype).to(x.device).detach().flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"got {t.numel()} values of {what} for {n} inputs; give one number or one per input")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{what} must be finite and ≥ 0 (pixel units, e.g. 2/255), got {t.min().item():.4g}…{t.max().item():.4g}")
    return t.clone().view(n, 1, 1, 1)


def _check_logits(logits: Any) -> torch.Tensor:
    if not torch.is_tensor(logits) or logits.dim() != 2:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise TypeError(
            f"the model returned {shape}; attacks need N×K logits (wrap the model so forward() returns the logits tensor)"
        )
    return logits


def _check_labels(y: Any, n: int, device) -> torch.Tensor | None:
    if y is None:
        return None
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.dim() > 1:
        raise ValueError("y must be integer class labels, one per input (a 1-D LongTensor)")
    y = y.reshape(-1).to(device=device, dtype=torch.long)
    if len(y) != n:
        raise ValueError(f"got {len(y)} labels for {n} inputs; give one label per input")
    return y


def _parse_target(target: Any, model: nn.Module) -> Target | None:
    """None for an untargeted attack, else a class Target (validated shorthand)."""
    if target is None or (isinstance(target, str) and target.strip().lower() in _UNTARGETED):
        return None
    spec = getattr(model, "spec", None)
    names = tuple(getattr(spec, "class_names", ()) or ()) or None
    t = as_target(target, names)
    if not t.is_class:
        raise ValueError(
            f"an attack needs a class target, got {t.describe()}; use a class index or name, 'second', or None (untargeted)"
        )
    return t


# --------------------------------------------------------------------------- core (model as it is)
def _goal(pred: torch.Tensor, classes: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Targeted: the prediction is the target. Untargeted: the prediction has left the class."""
    return pred == classes if targeted else pred != classes


def _loss_grad(forward: Forward, x: torch.Tensor, classes: torch.Tensor, targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, direction): the ascent direction of the attack objective at ``x``.

    direction = ∇ₓ CE(f(x), y) (untargeted) or −∇ₓ CE(f(x), t) (targeted). The
    loss is summed over the batch, so each sample's gradient is its own.
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = _check_logits(forward(xr))
        loss = F.cross_entropy(logits, classes, reduction="sum")
        (g,) = torch.autograd.grad(loss, xr)
    return logits.detach(), (-g if targeted else g)


def _step(x_adv: torch.Tensor, direction: torch.Tensor, alpha: torch.Tensor, norm: str) -> torch.Tensor:
    """One ascent step: + α·sign(d) (L∞) or + α·d/||d||₂ (L2; a zero gradient stays put)."""
    if norm == "inf":
        return x_adv + alpha * direction.sign()
    n = direction.flatten(1).norm(dim=1).view(-1, *([1] * (direction.dim() - 1)))
    return x_adv + alpha * direction / n.clamp_min(1e-12)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project onto the ε-ball around x, then clip to [0, 1] (clipping never leaves the ball, as x ∈ [0, 1])."""
    if norm == "inf":
        x_adv = torch.maximum(torch.minimum(x_adv, x + eps), x - eps)
    else:
        d = x_adv - x
        n = d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))
        d = d * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)
        x_adv = x + d
    return x_adv.clamp(0, 1)


def _random_start(x: torch.Tensor, eps: torch.Tensor, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A uniform point in the ε-ball (L∞: a uniform cube; L2: direction normal/norm, radius ε·U^(1/d))."""
    n = x.shape[0]
    if norm == "inf":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        delta = (2 * u - 1) * eps
    else:
        d = x[0].numel()
        g = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
        r = torch.rand(n, generator=generator, dtype=x.dtype, device="cpu").to(x.device) ** (1.0 / d)
        delta = g * r.view(n, 1, 1, 1) * eps
    return _project(x + delta, x, eps, norm)


def _fgsm_core(forward: Forward, x: torch.Tensor, classes: torch.Tensor, targeted: bool, eps: torch.Tensor,
               norm: str = "inf", direction: torch.Tensor | None = None) -> torch.Tensor:
    """x' = clip(x + ε·sign(direction)) (L∞) or x + ε·direction/||direction||₂ (L2), projected and clipped."""
    if direction is None:
        _, direction = _loss_grad(forward, x, classes, targeted)
    if norm == "inf":
        x_adv = (x + eps * direction.sign()).clamp(0, 1)
    else:
        x_adv = _project(_step(x, direction, eps, norm), x, eps, norm)
    return torch.where(eps == 0, x, x_adv)


def _pgd_core(forward: Forward, x: torch.Tensor, classes: torch.Tensor, targeted: bool, eps: torch.Tensor,
              steps: int, alpha: torch.Tensor, norm: str = "inf", random_start: bool = False,
              generator: torch.Generator | None = None, early_stop: bool = True,
              reached: torch.Tensor | None = None,
              first: tuple[torch.Tensor, torch.Tensor] | None = None,
              start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected gradient ascent on the attack objective; returns (x_adv, steps used per sample).

    With ``early_stop`` a sample stops (and keeps its image) as soon as its goal is
    reached; only the samples still running are passed through the model. A
    sample with ε = 0 never moves. ``reached`` (a bool tensor N, optional) is set
    True for the samples seen to reach their goal (so callers can skip a forward).
    ``first`` = (logits, direction) already computed at ``x`` (used when there is
    no random start, saving the first step's forward and backward). ``start``: the random
    start already drawn (for a batch attacked in chunks, drawn once for the whole batch).
    """
    n = x.shape[0]
    if random_start and start is not None:
        x_adv = start.clone()
    elif random_start:
        x_adv = _random_start(x, eps, norm, generator or torch.Generator().manual_seed(0))
    else:
        x_adv = x.clone()
    used = torch.zeros(n, dtype=torch.long, device=x.device)
    active = eps.view(-1) > 0
    for i in range(steps):
        idx = active.nonzero().view(-1)
        if len(idx) == 0:
            break
        if i == 0 and first is not None and not random_start:
            logits, direction = first[0][idx], first[1][idx]
        else:
            logits, direction = _loss_grad(forward, x_adv[idx], classes[idx], targeted)
        if early_stop:
            done = _goal(logits.argmax(1), classes[idx], targeted)
            if done.any():
                active[idx[done]] = False
                if reached is not None:
                    reached[idx[done]] = True
                keep = ~done
                idx, direction = idx[keep], direction[keep]
                if len(idx) == 0:
                    break
        moved = _step(x_adv[idx], direction, alpha[idx], norm)
        x_adv[idx] = _project(moved, x[idx], eps[idx], norm)
        used[idx] += 1
    x_adv = torch.where(eps == 0, x, x_adv)
    return x_adv, used


def _resolve_classes(forward: Forward, x: torch.Tensor, y: torch.Tensor | None, t: Target | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean logits, the class each sample is attacked toward or away from)."""
    with torch.no_grad():
        logits = _check_logits(forward(x)).detach()
    k = logits.shape[1]
    if y is not None and ((y < 0) | (y >= k)).any():
        raise ValueError(f"label {int(y[(y < 0) | (y >= k)][0])} is out of range for a model with {k} classes")
    if t is None:
        classes = y if y is not None else logits.argmax(1)
    else:
        classes = t.classes(logits, y)
    return logits, classes


def _resolve_and_grad(forward: Forward, x: torch.Tensor, y: torch.Tensor | None, t: Target | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean logits, classes, attack direction at x) from one forward and one backward.

    The classes (predicted, second, ...) are read off the same forward whose graph
    then gives the gradient, so an attack costs no separate clean pass.
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = _check_logits(forward(xr))
        k = logits.shape[1]
        if y is not None and ((y < 0) | (y >= k)).any():
            raise ValueError(f"label {int(y[(y < 0) | (y >= k)][0])} is out of range for a model with {k} classes")
        if t is None:
            classes = y if y is not None else logits.detach().argmax(1)
        else:
            classes = t.classes(logits.detach(), y)
        loss = F.cross_entropy(logits, classes, reduction="sum")
        (g,) = torch.autograd.grad(loss, xr)
    return logits.detach(), classes, (-g if t is not None else g)


def _predict(forward: Forward, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _check_logits(forward(x)).detach()


def _step_size(step_size: Any, eps: torch.Tensor, steps: int, rel: float = 2.5) -> torch.Tensor:
    """α per sample: the given number, or ``rel·ε/steps`` (Madry et al.'s 2.5·ε/steps)."""
    if step_size is None:
        return eps * (rel / max(steps, 1))
    a = torch.as_tensor(step_size, dtype=eps.dtype).to(eps.device).flatten()
    if not torch.isfinite(a).all() or (a <= 0).any():
        raise ValueError(f"step_size must be > 0 (pixel units, e.g. 0.5/255), got {step_size!r}")
    return (a.expand(eps.shape[0]) if a.numel() == 1 else a).reshape(eps.shape).clone()


def _describe_target(t: Target | None, names) -> str:
    return "untargeted" if t is None else t.describe(names)


def _class_names(model: nn.Module):
    spec = getattr(model, "spec", None)
    return tuple(getattr(spec, "class_names", ()) or ()) or None


def _result(x, x_adv, used, logits0, logits1, classes, targeted, eps, settings, extras=None) -> AttackResult:
    pred1 = logits1.argmax(1)
    return AttackResult(
        x_adv=x_adv.detach().cpu(),
        success=_goal(pred1, classes, targeted).cpu(),
        pred_before=logits0.argmax(1).cpu(),
        pred_after=pred1.cpu(),
        steps=used.cpu(),
        perturbation=(x_adv - x).detach().cpu(),
        eps=eps.view(-1).detach().cpu(),
        settings=settings,
        classes=classes.detach().cpu(),
        targeted=targeted,
        logits_before=logits0.cpu(),
        logits_after=logits1.cpu(),
        extras=extras or {},
    )


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    return steps


def _checked_inputs(model: nn.Module, x: Any, y: Any, target: Any):
    """Validate an attack's image, labels and target before any hook or forward: (x, labels, target or None)."""
    x = _check_input(x)
    _check_model(model, x)
    n = x.shape[0]
    t = _parse_target(target, model)
    y = _check_labels(y, n, x.device)
    if t is not None:
        t.validate(n, model_classes(model)[1], y)
    return x, y, t


def _checked(model: nn.Module, x: Any, y: Any, target: Any, eps: Any):
    """:func:`_checked_inputs` and the budget: (x, labels, target or None, ε as N×1×1×1)."""
    x, y, t = _checked_inputs(model, x, y, target)
    return x, y, t, _eps_tensor(eps, x.shape[0], x)


# --------------------------------------------------------------------------- public API
def _chunk(a: int, b: int, y: torch.Tensor | None, t: Target | None):
    """Labels and target of samples a:b (per-sample target classes are sliced)."""
    return (None if y is None else y[a:b]), (None if t is None else t.subset(a, b))


@needs_autograd
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, eps: float | Sequence[float] | torch.Tensor,
         target: Any = None, norm: str = "inf", batch_size: int | None = None) -> AttackResult:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size ε.

    Untargeted (``target=None``): ``x' = clip(x + ε·sign(∇ₓ CE(f(x), y)))``, with
    ``y`` the labels or, without labels, the predicted class. Targeted:
    ``x' = clip(x − ε·sign(∇ₓ CE(f(x), t)))``. ``norm="2"`` gives the fast
    gradient method ``x + ε·∇/||∇||₂``. ε in pixel units (one number or one per
    sample); ε = 0 returns ``x`` bit for bit. ``batch_size``: images per forward +
    backward (None: automatic); the result does not depend on it.

    >>> r = fgsm(model, x, y, eps=2/255)                        # doctest: +SKIP
    >>> r.success.float().mean(), r.linf().max() <= 2/255 + 1e-6  # doctest: +SKIP
    """
    nm = _norm(norm)
    x, y, t, e = _checked(model, x, y, target, eps)
    parts = []
    with LayerTap(model) as tap:
        for a, b in chunks(x.shape[0], check_batch_size(batch_size, x)):
            yb, tb = _chunk(a, b, y, t)
            logits0, classes, direction = _resolve_and_grad(tap.run, x[a:b], yb, tb)
            x_adv = _fgsm_core(tap.run, x[a:b], classes, t is not None, e[a:b], nm, direction=direction)
            parts.append((x_adv, logits0, classes, _predict(tap.run, x_adv)))
    x_adv, logits0, classes, logits1 = (torch.cat(v) for v in zip(*parts))
    settings = {"method": "fgsm", "norm": nm, "eps": _eps_setting(e), "target": _describe_target(t, _class_names(model)),
                "loss": "cross-entropy on logits"}
    used = (e.view(-1) > 0).long()
    return _result(x, x_adv, used, logits0, logits1, classes, t is not None, e, settings)


@needs_autograd
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, eps: float | Sequence[float] | torch.Tensor,
        steps: int = 10, step_size: float | None = None, target: Any = "second", norm: str = "inf",
        random_start: bool = False, early_stop: bool = True, seed: int = 0,
        batch_size: int | None = None) -> AttackResult:
    """Projected gradient descent / basic iterative method (Kurakin et al. 2017; Madry et al. 2018).

    Repeats ``x ← Π_{B(x₀, ε) ∩ [0,1]}(x ± α·sign(∇ₓ CE(f(x), c)))`` (L∞; L2 steps along
    ∇/||∇||₂ and projects onto the L2 ball). Targeted toward ``target`` — by default
    the second most likely class (over the nearest decision boundary) — or
    untargeted with ``target=None``. ``step_size``
    defaults to ``2.5·ε/steps``; ``random_start`` starts from a uniform point of the
    ε-ball (seeded by ``seed``, drawn for the whole batch); ``early_stop`` freezes each
    sample once its goal is reached. With ``steps=1``, ``step_size=ε`` and no random
    start it is FGSM. ``batch_size``: images per forward + backward (None: automatic);
    the result does not depend on it.

    >>> r = pgd(model, x, eps=1/255)          # toward the second most likely class   # doctest: +SKIP
    >>> r.success, r.steps                                                            # doctest: +SKIP
    """
    nm = _norm(norm)
    steps = _check_steps(steps)
    x, y, t, e = _checked(model, x, y, target, eps)
    alpha = _step_size(step_size, e, steps)
    gen = torch.Generator().manual_seed(int(seed))
    start = _random_start(x, e, nm, gen) if random_start else None
    parts = []
    with LayerTap(model) as tap:
        for a, b in chunks(x.shape[0], check_batch_size(batch_size, x)):
            yb, tb = _chunk(a, b, y, t)
            if random_start:
                logits0, classes = _resolve_classes(tap.run, x[a:b], yb, tb)
                first = None
            else:
                logits0, classes, direction = _resolve_and_grad(tap.run, x[a:b], yb, tb)
                first = (logits0, direction)
            x_adv, used = _pgd_core(tap.run, x[a:b], classes, t is not None, e[a:b], steps, alpha[a:b], nm,
                                    random_start, gen, early_stop, first=first,
                                    start=None if start is None else start[a:b])
            parts.append((x_adv, used, logits0, classes, _predict(tap.run, x_adv)))
    x_adv, used, logits0, classes, logits1 = (torch.cat(v) for v in zip(*parts))
    settings = {"method": "pgd", "norm": nm, "eps": _eps_setting(e), "steps": steps,
                "step_size": "2.5·ε/steps" if step_size is None else step_size,
                "target": _describe_target(t, _class_names(model)), "random_start": bool(random_start),
                "early_stop": bool(early_stop), "seed": int(seed), "loss": "cross-entropy on logits"}
    return _result(x, x_adv, used, logits0, logits1, classes, t is not None, e, settings)


def _linear_eps(forward: Forward, x: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor, targeted: bool,
                norm: str) -> torch.Tensor:
    """First-order distance to the goal: margin / ||∇ₓ margin||_dual (exact for a linear model).

    margin = z_a − z_b, with (a, b) = (predicted, target) for a targeted attack and
    (class, runner-up) for an untargeted one; the dual norm is L1 for an L∞ budget
    and L2 for an L2 budget.
    """
    top2 = logits.topk(2, dim=1).indices
    if targeted:
        a, b = logits.argmax(1), classes
    else:
        a = classes
        b = torch.where(top2[:, 0] == classes, top2[:, 1], top2[:, 0])
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        z = _check_logits(forward(xr))
        margin = z.gather(1, a[:, None]).squeeze(1) - z.gather(1, b[:, None]).squeeze(1)
        (g,) = torch.autograd.grad(margin.sum(), xr)
    dual = g.flatten(1).abs().sum(1) if norm == "inf" else g.flatten(1).norm(dim=1)
    return (margin.detach() / dual.clamp_min(1e-20)).clamp_min(0)


@needs_autograd
def minimal_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, target: Any = "second",
                norm: str = "inf", steps: int = 10, start: float | str = "linear", max_eps: float | None = None,
                rtol: float = 0.05, max_iter: int = 20, factor: float = 1.5, random_start: bool = False, seed: int = 0,
                progress: Callable[[int, int | None], None] | None = None) -> AttackResult:
    """The smallest ε that reaches the goal for each image: a first-order guess, bracketing, then bisection over PGD.

    Each sample starts from ``start``: by default its first-order distance to the
    goal, margin / ||∇ₓ margin||₁ (L∞; ||·||₂ for L2), exact for a linear model; or a
    number in pixel units. ε grows by ``factor`` until PGD (``steps`` steps of
    2.5·ε/steps, early stop) succeeds or ``max_eps`` (L∞: 1; L2: √d) fails — or,
    where the start already succeeds, shrinks by ``factor`` until PGD fails; then
    bisection between the largest failing and the smallest succeeding ε until
    ``hi − lo ≤ rtol·hi`` (or ``max_iter`` more PGD runs). Bisection assumes success grows with ε (true for a
    linear model; PGD on a deep net is close to it).

    Returns an :class:`AttackResult` whose ``eps`` is the smallest succeeding ε
    (``inf`` where none succeeded), ``x_adv`` the image found at that ε, and
    ``extras["eps_lower"]`` the largest ε seen to fail (0 if none was tried);
    ``extras["eps_linear"]`` is the first-order guess. A sample already at its goal
    gets ε = 0.

    >>> r = minimal_eps(model, x)                         # toward the second class   # doctest: +SKIP
    >>> (r.eps * 255).tolist()                            # in 1/255 units            # doctest: +SKIP
    """
    nm = _norm(norm)
    steps = _check_steps(steps)
    if not (0 < rtol < 1):
        raise ValueError(f"rtol must be in (0, 1), got {rtol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer ≥ 0, got {max_iter!r}")
    x = _check_input(x)
    _check_model(model, x)
    n = x.shape[0]
    d = x[0].numel() if n else 1
    max_eps = (1.0 if nm == "inf" else math.sqrt(d)) if max_eps is None else float(max_eps)
    linear_start = isinstance(start, str)
    if linear_start and start != "linear":
        raise ValueError(f"start must be 'linear' or a number in pixel units, got {start!r}")
    if not linear_start and not (0 < float(start) <= max_eps):
        raise ValueError(f"need 0 < start ≤ max_eps, got start={start}, max_eps={max_eps}")
    if not (max_eps > 0):
        raise ValueError(f"max_eps must be > 0, got {max_eps}")
    if not (factor > 1):
        raise ValueError(f"factor must be > 1 (how much ε grows or shrinks while bracketing), got {factor!r}")
    t = _parse_target(target, model)
    y = _check_labels(y, n, x.device)
    if t is not None:
        t.validate(n, model_classes(model)[1], y)
    gen = torch.Generator().manual_seed(int(seed))
    targeted = t is not None
    lo = torch.zeros(n, dtype=x.dtype, device=x.device)
    hi = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    best = x.clone()
    best_steps = torch.zeros(n, dtype=torch.long, device=x.device)
    runs = 0
    with LayerTap(model) as tap:
        logits0, classes = _resolve_classes(tap.run, x, y, t)
        at_goal = _goal(logits0.argmax(1), classes, targeted)
        hi[at_goal] = 0.0
        if linear_start:
            guess = _linear_eps(tap.run, x, logits0, classes, targeted, nm)
            floor = max_eps * 1e-6
            eps_try = guess.clamp(min=floor, max=max_eps)
        else:
            guess = torch.full((n,), float(start), dtype=x.dtype, device=x.device)
            eps_try = guess.clone()

        def attempt(idx: torch.Tensor, eps_try: torch.Tensor) -> torch.Tensor:
            nonlocal runs
            e = eps_try.view(-1, 1, 1, 1)
            ok = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
            xa, used = _pgd_core(tap.run, x[idx], classes[idx], targeted, e, steps, _step_size(None, e, steps), nm,
                                 random_start, gen, True, reached=ok)
            rest = (~ok).nonzero().view(-1)  # ran every step: check the last iterate
            if len(rest):
                ok[rest] = _goal(_predict(tap.run, xa[rest]).argmax(1), classes[idx][rest], targeted)
            best[idx[ok]] = xa[ok]
            best_steps[idx[ok]] = used[ok]
            runs += 1
            return ok

        # 1. bracket: from the start, grow ε by `factor` until success (or max_eps fails); where the
        #    start already succeeds, shrink it by `factor` until a failure (or the floor)
        floor = max_eps * 1e-6
        searching = ~at_goal
        span = max_eps / max(float(eps_try[searching].min()), floor) if searching.any() else 1.0
        n_bracket = max(1, math.ceil(math.log(max(span, 1.0) * 1e6, factor)) + 1) if searching.any() else 1
        n_bracket = min(n_bracket, 200)
        total = n_bracket + max_iter
        done_runs = 0
        for _ in range(n_bracket):
            idx = searching.nonzero().view(-1)
            if len(idx) == 0:
                break
            e = eps_try[idx].clamp(max=max_eps)
            ok = attempt(idx, e)
            hi[idx[ok]] = torch.minimum(hi[idx[ok]], e[ok])
            lo[idx[~ok]] = torch.maximum(lo[idx[~ok]], e[~ok])
            bracketed = torch.isfinite(hi[idx]) & (lo[idx] > 0)
            stop = bracketed | (~ok & (e >= max_eps)) | (ok & (e / factor < floor))
            searching[idx[stop]] = False
            eps_try[idx] = torch.where(ok, e / factor, e * factor)
            done_runs += 1
            if progress is not None:
                progress(done_runs, total)
        # 2. bisection
        for _ in range(max_iter):
            open_ = torch.isfinite(hi) & (hi > 0) & (hi - lo > rtol * hi)
            idx = open_.nonzero().view(-1)
            if len(idx) == 0:
                break
            mid = (lo[idx] + hi[idx]) / 2
            ok = attempt(idx, mid)
            hi[idx[ok]] = mid[ok]
            lo[idx[~ok]] = mid[~ok]
            done_runs += 1
            if progress is not None:
                progress(done_runs, total)
        if progress is not None:
            progress(total, total)
        logits1 = _predict(tap.run, best)
    settings = {"method": "minimal-eps (first-order start, bracketing, bisection over PGD)", "norm": nm, "steps": steps,
                "step_size": "2.5·ε/steps", "start": "margin/||∇margin||_dual" if linear_start else float(start),
                "max_eps": max_eps, "rtol": rtol, "max_iter": max_iter, "factor": factor,
                "target": _describe_target(t, _class_names(model)), "random_start": bool(random_start),
                "seed": int(seed), "pgd_runs": runs, "loss": "cross-entropy on logits"}
    return _result(x, best, best_steps, logits0, logits1, classes, targeted, hi, settings,
                   extras={"eps_lower": lo.detach().cpu(), "eps_linear": guess.detach().cpu()})


def _eps_setting(e: torch.Tensor):
    v = e.view(-1)
    if len(v) and bool((v == v[0]).all()):
        return float(v[0])
    return "per sample"
