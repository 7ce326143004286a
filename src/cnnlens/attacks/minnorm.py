"""Minimum-norm attacks in pixel space: DeepFool and Carlini–Wagner L2.

Both look for the *smallest* L2 perturbation that changes the decision, rather
than the best one inside a fixed budget (FGSM, PGD):

* **DeepFool** (Moosavi-Dezfooli et al. 2016) linearises the classifier around the
  current point and steps to the closest linearised decision boundary: the
  push over the boundary to the closest class, in its geometric form.
  With f_k = z_k − z_a (a the class to leave) and w_k = ∇ₓ f_k, the closest boundary
  is l = argmin_k |f_k| / ||w_k||₂ and the step r = (|f_l| + 10⁻⁴) w_l / ||w_l||₂².
  The steps add up to r_tot; the image is x + (1 + overshoot)·r_tot, clipped to [0, 1].
* **Carlini–Wagner L2** (Carlini & Wagner 2017) minimises
  ||x' − x||₂² + c · max(Z_a(x') − max_{j≠a} Z_j(x'), −κ)  (untargeted, a the class to leave;
  targeted: max(max_{j≠t} Z_j − Z_t, −κ)) over x' = (tanh(w) + 1)/2 with Adam, so the
  box [0, 1] holds by construction; the best (smallest) successful x' seen is kept.
  ``search_steps > 1`` adds the paper's binary search over c per image.

Both return an :class:`AttackResult` whose ``eps`` is the L2 norm of the
perturbation found (``inf`` where the goal was not reached).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..autograd import needs_autograd
from ..batching import check_batch_size, chunks
from ..tap import LayerTap
from .common import (
    attack_result,
    check_logits,
    check_steps,
    checked_inputs,
    chunk_targets,
    class_names_of,
    describe_target,
    goal_reached,
    predict,
    resolve_classes,
)
from .result import AttackResult

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _check_positive(name: str, v: Any, integer: bool = False, allow_zero: bool = False) -> Any:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} {'≥' if allow_zero else '>'} 0, got {v!r}")
    return v


def deepfool_core(
    forward: Forward,
    x: torch.Tensor,
    classes: torch.Tensor,
    targeted: bool,
    steps: int,
    overshoot: float,
    candidates: int,
    logits0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_adv, iterations used) for a batch; ``classes`` = the class to leave (untargeted) or reach."""
    n, k = logits0.shape
    if targeted:
        cand = classes.view(-1, 1)
    else:  # the `candidates` most likely other classes at x (the paper's code: the top 10)
        m = min(candidates, k - 1)
        order = logits0.argsort(1, descending=True)
        keep = order != classes.view(-1, 1)
        cand = order[keep].view(n, k - 1)[:, :m]
    r_tot = torch.zeros_like(x)
    x_adv = x.clone()
    used = torch.zeros(n, dtype=torch.long, device=x.device)
    active = ~goal_reached(logits0.argmax(1), classes, targeted)
    for _ in range(steps):
        idx = active.nonzero().view(-1)
        if len(idx) == 0:
            break
        with torch.enable_grad():
            xa = x_adv[idx].detach().requires_grad_(True)
            z = check_logits(forward(xa))
            pred = z.detach().argmax(1)
            done = goal_reached(pred, classes[idx], targeted)
            if done.all():
                active[idx] = False
                break
            ref = pred if targeted else classes[idx]  # the class whose region the image must leave
            zr = z.gather(1, ref.view(-1, 1)).squeeze(1)
            c = cand[idx]
            f = z.gather(1, c) - zr.view(-1, 1)  # N'×M, < 0 while ref is ahead
            grads = []
            for j in range(c.shape[1]):
                (g,) = torch.autograd.grad(f[:, j].sum(), xa, retain_graph=j + 1 < c.shape[1])
                grads.append(g)
        w = torch.stack(grads, 1)  # N'×M×C×H×W
        f = f.detach()
        wn = w.flatten(2).norm(dim=2)  # N'×M
        dist = f.abs() / wn.clamp_min(1e-12)
        dist = torch.where(wn > 0, dist, torch.full_like(dist, math.inf))
        best = dist.argmin(1)
        wl = w[torch.arange(len(idx)), best]
        fl = f.gather(1, best.view(-1, 1)).squeeze(1)
        nl = wn.gather(1, best.view(-1, 1)).squeeze(1)
        r = _bcast((fl.abs() + 1e-4) / nl.clamp_min(1e-12) ** 2, wl) * wl
        r = torch.where(_bcast(nl > 0, r), r, torch.zeros_like(r))
        step = idx[~done]
        r_tot[step] += r[~done]
        x_adv[step] = (x[step] + (1 + overshoot) * r_tot[step]).clamp(0, 1)
        used[step] += 1
        active[idx[done]] = False
        active[step[(nl[~done] == 0)]] = False  # a flat point: no direction to follow
    return x_adv, used


@needs_autograd
def deepfool(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    target: Any = None,
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
    batch_size: int | None = None,
) -> AttackResult:
    """DeepFool (Moosavi-Dezfooli et al. 2016): the smallest L2 step over the closest decision boundary.

    Untargeted (``target=None``): away from ``y`` (or the predicted class without
    labels), toward whichever of the ``candidates`` most likely other classes has the
    nearest linearised boundary. With a class ``target`` (index, name, ``"second"``)
    only that boundary is followed. Each iteration costs one forward and one backward
    per candidate; an image stops as soon as its goal is reached (at most ``steps``
    iterations). ``result.eps`` = ||x_adv − x||₂ (``inf`` where it failed).

    >>> r = deepfool(model, x, y)                   # doctest: +SKIP
    >>> r.success_rate, r.l2().median()             # doctest: +SKIP
    """
    steps = check_steps(steps)
    _check_positive("overshoot", overshoot, allow_zero=True)
    _check_positive("candidates", candidates, integer=True)
    x, y, t = checked_inputs(model, x, y, target)
    n = x.shape[0]
    parts = []
    with LayerTap(model) as tap:
        for a, b in chunks(n, check_batch_size(batch_size, x)):
            yb, tb = chunk_targets(a, b, y, t)
            logits0, classes = resolve_classes(tap.run, x[a:b], yb, tb)
            x_adv, used = deepfool_core(
                tap.run, x[a:b], classes, t is not None, steps, float(overshoot), int(candidates), logits0
            )
            parts.append((x_adv, used, logits0, classes, predict(tap.run, x_adv)))
    x_adv, used, logits0, classes, logits1 = (torch.cat(v) for v in zip(*parts, strict=True))
    ok = goal_reached(logits1.argmax(1), classes, t is not None)
    eps = torch.where(ok, _flat_norm(x_adv - x), torch.full_like(ok, math.inf, dtype=x.dtype))
    settings = {
        "method": "deepfool",
        "norm": "2",
        "steps": steps,
        "overshoot": float(overshoot),
        "candidates": int(candidates),
        "target": describe_target(t, class_names_of(model)),
    }
    return attack_result(x, x_adv, used, logits0, logits1, classes, t is not None, eps, settings)


def _cw_margin(z: torch.Tensor, classes: torch.Tensor, targeted: bool, kappa: float) -> torch.Tensor:
    """max(Z_a − max_{j≠a} Z_j, −κ) untargeted; max(max_{j≠t} Z_j − Z_t, −κ) targeted."""
    zc = z.gather(1, classes.view(-1, 1)).squeeze(1)
    other = z.masked_fill(torch.nn.functional.one_hot(classes, z.shape[1]).bool(), -math.inf).amax(1)
    return (other - zc if targeted else zc - other).clamp_min(-kappa)


def cw_core(
    forward: Forward,
    x: torch.Tensor,
    classes: torch.Tensor,
    targeted: bool,
    c0: float,
    kappa: float,
    steps: int,
    lr: float,
    search_steps: int,
):
    """(best x_adv, its squared L2 or inf, Adam steps run, the c that found it) for a batch."""
    n = x.shape[0]
    dev, dt = x.device, x.dtype
    w0 = torch.atanh((2 * x - 1).clamp(-1, 1) * (1 - 1e-6))
    best = x.clone()
    best_l2 = torch.full((n,), math.inf, dtype=dt, device=dev)
    c = torch.full((n,), float(c0), dtype=dt, device=dev)
    best_c = c.clone()
    lo = torch.zeros(n, dtype=dt, device=dev)
    hi = torch.full((n,), math.inf, dtype=dt, device=dev)
    used = torch.zeros(n, dtype=torch.long, device=dev)
    for _ in range(search_steps):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        for _ in range(steps):
            with torch.enable_grad():
                xa = (torch.tanh(w) + 1) / 2
                l2 = (xa - x).flatten(1).pow(2).sum(1)
                z = check_logits(forward(xa))
                cost = l2 + c * _cw_margin(z, classes, targeted, kappa)
                opt.zero_grad(set_to_none=True)
                cost.sum().backward()  # Adam is element-wise: each image's steps are its own
            opt.step()
            with torch.no_grad():
                ok = goal_reached(z.detach().argmax(1), classes, targeted)
                better = ok & (l2.detach() < best_l2)
                best_l2 = torch.where(better, l2.detach(), best_l2)
                best[better] = xa.detach()[better]
                best_c = torch.where(better, c, best_c)
                found |= ok
        used += steps
        if search_steps > 1:  # the paper's binary search: smaller c where it worked, larger where not
            hi = torch.where(found, torch.minimum(hi, c), hi)
            lo = torch.where(found, lo, torch.maximum(lo, c))
            c = torch.where(torch.isfinite(hi), (lo + hi) / 2, c * 10)
    return best, best_l2, used, best_c


@needs_autograd
def cw(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    target: Any = None,
    c: float = 1.0,
    kappa: float = 0.0,
    steps: int = 100,
    lr: float = 0.01,
    search_steps: int = 1,
    batch_size: int | None = None,
) -> AttackResult:
    """Carlini–Wagner L2 (Carlini & Wagner 2017): min ||x' − x||₂² + c·f(x') over x' = (tanh(w) + 1)/2.

    f(x') = max(Z_a(x') − max_{j≠a} Z_j(x'), −κ) to leave class a (``target=None``: ``y``
    or the predicted class), or max(max_{j≠t} Z_j(x') − Z_t(x'), −κ) to reach a class
    ``target``; Z are the logits. ``steps`` Adam steps of rate ``lr`` from w = atanh(2x − 1)
    (pixels at exactly 0 or 1 start at atanh(±(1 − 10⁻⁶)), as in the reference code; their
    gradient there is ~10⁻⁶, so in practice they stay where they are); the smallest x' that
    reaches the goal is kept (x itself where none does). Every image runs all ``steps``
    (no early abort: a per-batch abort, as in the reference code, would make an image's
    result depend on the others in its batch).
    ``search_steps > 1``: the paper's binary search over c per image (×10 until one
    succeeds, then bisection; ``extras["c"]`` is the c that found each image's result).
    ``result.eps`` = ||x_adv − x||₂ (``inf`` where it failed).

    >>> r = cw(model, x, y, c=1, steps=100)           # doctest: +SKIP
    >>> r.success_rate, r.l2()[r.success].median()    # doctest: +SKIP
    """
    _check_positive("c", c)
    _check_positive("kappa", kappa, allow_zero=True)
    steps = check_steps(steps)
    _check_positive("lr", lr)
    search_steps = check_steps(search_steps)
    x, y, t = checked_inputs(model, x, y, target)
    n = x.shape[0]
    parts = []
    with LayerTap(model) as tap:
        for a, b in chunks(n, check_batch_size(batch_size, x)):
            yb, tb = chunk_targets(a, b, y, t)
            logits0, classes = resolve_classes(tap.run, x[a:b], yb, tb)
            best, best_l2, used, cf = cw_core(
                tap.run, x[a:b], classes, t is not None, float(c), float(kappa), steps, float(lr), search_steps
            )
            parts.append((best, used, logits0, classes, predict(tap.run, best), cf))
    x_adv, used, logits0, classes, logits1, cf = (torch.cat(v) for v in zip(*parts, strict=True))
    ok = goal_reached(logits1.argmax(1), classes, t is not None)
    eps = torch.where(ok, _flat_norm(x_adv - x), torch.full_like(ok, math.inf, dtype=x.dtype))
    settings = {
        "method": "cw",
        "norm": "2",
        "c": float(c),
        "kappa": float(kappa),
        "steps": steps,
        "lr": float(lr),
        "search_steps": search_steps,
        "optimizer": "Adam",
        "target": describe_target(t, class_names_of(model)),
    }
    return attack_result(
        x, x_adv, used, logits0, logits1, classes, t is not None, eps, settings, extras={"c": cf.detach().cpu()}
    )
