"""What every attack shares: input checks, the class each sample is pushed away from or toward, a gradient
step and its projection onto the ε-ball, the cores of FGSM and PGD, and the result.

The cores take a ``forward`` callable and use the model as it is (adversarial training,
:mod:`cnnlens.attacks.robust`, calls them on a model in training mode); the public attacks
(:mod:`cnnlens.attacks.gradient`, :mod:`~cnnlens.attacks.minnorm`, :mod:`~cnnlens.attacks.bridge`) run the model
inside ``LayerTap(model)`` with no layers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..inputs import check_not_empty
from ..targets import Target, as_target, model_classes
from .result import AttackResult

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]
_UNTARGETED = ("untargeted", "none")
_NORMS = {"inf": "inf", "linf": "inf", "l_inf": "inf", "2": "2", "l2": "2"}


# --------------------------------------------------------------------------- checks
def parse_norm(norm: Any) -> str:
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


def check_input(x: Any) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(
            f"x must be a tensor N×C×H×W in [0, 1], got {type(x).__name__}; load images with cnnlens.load_images"
        )
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


def check_model(model: Any, x: torch.Tensor) -> None:
    """The model is an nn.Module on x's device (else a one-line fix); LayerTap.run casts x to the model's dtype."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    t = next((p for p in list(model.parameters()) + list(model.buffers()) if p.is_floating_point()), None)
    if t is None:
        return
    if t.device != x.device:
        raise ValueError(
            f"the input is on {x.device} but the model is on {t.device}; move the input with x.to({str(t.device)!r})"
        )


def eps_tensor(eps: Any, n: int, x: torch.Tensor, what: str = "eps") -> torch.Tensor:
    """ε as an N×1×1×1 tensor on x's device (a number or one value per sample)."""
    if isinstance(eps, bool) or eps is None:
        raise TypeError(f"{what} must be a number or one number per sample, e.g. {what}=2/255")
    t = torch.as_tensor(eps, dtype=x.dtype).to(x.device).detach().flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"got {t.numel()} values of {what} for {n} inputs; give one number or one per input")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(
            f"{what} must be finite and ≥ 0 (pixel units, e.g. 2/255), got {t.min().item():.4g}…{t.max().item():.4g}"
        )
    return t.clone().view(n, 1, 1, 1)


def check_logits(logits: Any) -> torch.Tensor:
    if not torch.is_tensor(logits) or logits.dim() != 2:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise TypeError(
            f"the model returned {shape}; attacks need N×K logits (wrap the model so forward() returns the logits "
            "tensor)"
        )
    return logits


def check_labels(y: Any, n: int, device) -> torch.Tensor | None:
    if y is None:
        return None
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.dim() > 1:
        raise ValueError("y must be integer class labels, one per input (a 1-D LongTensor)")
    y = y.reshape(-1).to(device=device, dtype=torch.long)
    if len(y) != n:
        raise ValueError(f"got {len(y)} labels for {n} inputs; give one label per input")
    return y


def parse_target(target: Any, model: nn.Module) -> Target | None:
    """None for an untargeted attack, else a class Target (validated shorthand)."""
    if target is None or (isinstance(target, str) and target.strip().lower() in _UNTARGETED):
        return None
    spec = getattr(model, "spec", None)
    names = tuple(getattr(spec, "class_names", ()) or ()) or None
    t = as_target(target, names)
    if not t.is_class:
        raise ValueError(
            f"an attack needs a class target, got {t.describe()}; use a class index or name, 'second', or None "
            "(untargeted)"
        )
    return t


# --------------------------------------------------------------------------- core (model as it is)
def goal_reached(pred: torch.Tensor, classes: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Targeted: the prediction is the target. Untargeted: the prediction has left the class."""
    return pred == classes if targeted else pred != classes


def loss_grad(
    forward: Forward, x: torch.Tensor, classes: torch.Tensor, targeted: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, direction): the ascent direction of the attack objective at ``x``.

    direction = ∇ₓ CE(f(x), y) (untargeted) or −∇ₓ CE(f(x), t) (targeted). The
    loss is summed over the batch, so each sample's gradient is its own.
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = check_logits(forward(xr))
        loss = F.cross_entropy(logits, classes, reduction="sum")
        (g,) = torch.autograd.grad(loss, xr)
    return logits.detach(), (-g if targeted else g)


def take_step(x_adv: torch.Tensor, direction: torch.Tensor, alpha: torch.Tensor, norm: str) -> torch.Tensor:
    """One ascent step: + α·sign(d) (L∞) or + α·d/||d||₂ (L2; a zero gradient stays put)."""
    if norm == "inf":
        return x_adv + alpha * direction.sign()
    n = direction.flatten(1).norm(dim=1).view(-1, *([1] * (direction.dim() - 1)))
    return x_adv + alpha * direction / n.clamp_min(1e-12)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project onto the ε-ball around x, then clip to [0, 1] (clipping never leaves the ball, as x ∈ [0, 1])."""
    if norm == "inf":
        x_adv = torch.maximum(torch.minimum(x_adv, x + eps), x - eps)
    else:
        d = x_adv - x
        n = d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))
        d = d * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)
        x_adv = x + d
    return x_adv.clamp(0, 1)


def random_start_point(x: torch.Tensor, eps: torch.Tensor, norm: str, generator: torch.Generator) -> torch.Tensor:
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
    return project(x + delta, x, eps, norm)


def fgsm_core(
    forward: Forward,
    x: torch.Tensor,
    classes: torch.Tensor,
    targeted: bool,
    eps: torch.Tensor,
    norm: str = "inf",
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """x' = clip(x + ε·sign(direction)) (L∞) or x + ε·direction/||direction||₂ (L2), projected and clipped."""
    if direction is None:
        _, direction = loss_grad(forward, x, classes, targeted)
    if norm == "inf":
        x_adv = (x + eps * direction.sign()).clamp(0, 1)
    else:
        x_adv = project(take_step(x, direction, eps, norm), x, eps, norm)
    return torch.where(eps == 0, x, x_adv)


def pgd_core(
    forward: Forward,
    x: torch.Tensor,
    classes: torch.Tensor,
    targeted: bool,
    eps: torch.Tensor,
    steps: int,
    alpha: torch.Tensor,
    norm: str = "inf",
    random_start: bool = False,
    generator: torch.Generator | None = None,
    early_stop: bool = True,
    reached: torch.Tensor | None = None,
    first: tuple[torch.Tensor, torch.Tensor] | None = None,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
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
        x_adv = random_start_point(x, eps, norm, generator or torch.Generator().manual_seed(0))
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
            logits, direction = loss_grad(forward, x_adv[idx], classes[idx], targeted)
        if early_stop:
            done = goal_reached(logits.argmax(1), classes[idx], targeted)
            if done.any():
                active[idx[done]] = False
                if reached is not None:
                    reached[idx[done]] = True
                keep = ~done
                idx, direction = idx[keep], direction[keep]
                if len(idx) == 0:
                    break
        moved = take_step(x_adv[idx], direction, alpha[idx], norm)
        x_adv[idx] = project(moved, x[idx], eps[idx], norm)
        used[idx] += 1
    x_adv = torch.where(eps == 0, x, x_adv)
    return x_adv, used


def resolve_classes(
    forward: Forward, x: torch.Tensor, y: torch.Tensor | None, t: Target | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean logits, the class each sample is attacked toward or away from)."""
    with torch.no_grad():
        logits = check_logits(forward(x)).detach()
    k = logits.shape[1]
    if y is not None and ((y < 0) | (y >= k)).any():
        raise ValueError(f"label {int(y[(y < 0) | (y >= k)][0])} is out of range for a model with {k} classes")
    if t is None:
        classes = y if y is not None else logits.argmax(1)
    else:
        classes = t.classes(logits, y)
    return logits, classes


def resolve_and_grad(
    forward: Forward, x: torch.Tensor, y: torch.Tensor | None, t: Target | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean logits, classes, attack direction at x) from one forward and one backward.

    The classes (predicted, second, ...) are read off the same forward whose graph
    then gives the gradient, so an attack costs no separate clean pass.
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = check_logits(forward(xr))
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


def predict(forward: Forward, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return check_logits(forward(x)).detach()


def resolve_step_size(step_size: Any, eps: torch.Tensor, steps: int, rel: float = 2.5) -> torch.Tensor:
    """α per sample: the given number, or ``rel·ε/steps`` (Madry et al.'s 2.5·ε/steps)."""
    if step_size is None:
        return eps * (rel / max(steps, 1))
    a = torch.as_tensor(step_size, dtype=eps.dtype).to(eps.device).flatten()
    if not torch.isfinite(a).all() or (a <= 0).any():
        raise ValueError(f"step_size must be > 0 (pixel units, e.g. 0.5/255), got {step_size!r}")
    return (a.expand(eps.shape[0]) if a.numel() == 1 else a).reshape(eps.shape).clone()


def describe_target(t: Target | None, names) -> str:
    return "untargeted" if t is None else t.describe(names)


def class_names_of(model: nn.Module):
    spec = getattr(model, "spec", None)
    return tuple(getattr(spec, "class_names", ()) or ()) or None


def attack_result(x, x_adv, used, logits0, logits1, classes, targeted, eps, settings, extras=None) -> AttackResult:
    pred1 = logits1.argmax(1)
    return AttackResult(
        x_adv=x_adv.detach().cpu(),
        success=goal_reached(pred1, classes, targeted).cpu(),
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


def check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    return steps


def checked_inputs(model: nn.Module, x: Any, y: Any, target: Any):
    """Validate an attack's image, labels and target before any hook or forward: (x, labels, target or None)."""
    x = check_input(x)
    check_model(model, x)
    n = x.shape[0]
    t = parse_target(target, model)
    y = check_labels(y, n, x.device)
    if t is not None:
        t.validate(n, model_classes(model)[1], y)
    return x, y, t


def checked_with_eps(model: nn.Module, x: Any, y: Any, target: Any, eps: Any):
    """:func:`checked_inputs` and the budget: (x, labels, target or None, ε as N×1×1×1)."""
    x, y, t = checked_inputs(model, x, y, target)
    return x, y, t, eps_tensor(eps, x.shape[0], x)


# --------------------------------------------------------------------------- public API
def chunk_targets(a: int, b: int, y: torch.Tensor | None, t: Target | None):
    """Labels and target of samples a:b (per-sample target classes are sliced)."""
    return (None if y is None else y[a:b]), (None if t is None else t.subset(a, b))
