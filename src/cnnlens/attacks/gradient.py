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
and BatchNorm statistics do not move. The shared helpers and the cores that take a ``forward``
callable are :mod:`cnnlens.attacks.common`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..autograd import needs_autograd
from ..batching import check_batch_size, chunks
from ..tap import LayerTap
from ..targets import model_classes
from .common import (
    Forward,
    attack_result,
    check_input,
    check_labels,
    check_logits,
    check_model,
    check_steps,
    checked_with_eps,
    chunk_targets,
    class_names_of,
    describe_target,
    fgsm_core,
    goal_reached,
    parse_norm,
    parse_target,
    pgd_core,
    predict,
    random_start_point,
    resolve_and_grad,
    resolve_classes,
    resolve_step_size,
)
from .result import AttackResult

log = logging.getLogger(__name__)


@needs_autograd
def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float | Sequence[float] | torch.Tensor,
    target: Any = None,
    norm: str = "inf",
    batch_size: int | None = None,
) -> AttackResult:
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
    nm = parse_norm(norm)
    x, y, t, e = checked_with_eps(model, x, y, target, eps)
    parts = []
    with LayerTap(model) as tap:
        for a, b in chunks(x.shape[0], check_batch_size(batch_size, x)):
            yb, tb = chunk_targets(a, b, y, t)
            logits0, classes, direction = resolve_and_grad(tap.run, x[a:b], yb, tb)
            x_adv = fgsm_core(tap.run, x[a:b], classes, t is not None, e[a:b], nm, direction=direction)
            parts.append((x_adv, logits0, classes, predict(tap.run, x_adv)))
    x_adv, logits0, classes, logits1 = (torch.cat(v) for v in zip(*parts, strict=True))
    settings = {
        "method": "fgsm",
        "norm": nm,
        "eps": _eps_setting(e),
        "target": describe_target(t, class_names_of(model)),
        "loss": "cross-entropy on logits",
    }
    used = (e.view(-1) > 0).long()
    return attack_result(x, x_adv, used, logits0, logits1, classes, t is not None, e, settings)


@needs_autograd
def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float | Sequence[float] | torch.Tensor,
    steps: int = 10,
    step_size: float | None = None,
    target: Any = "second",
    norm: str = "inf",
    random_start: bool = False,
    early_stop: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
) -> AttackResult:
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
    nm = parse_norm(norm)
    steps = check_steps(steps)
    x, y, t, e = checked_with_eps(model, x, y, target, eps)
    alpha = resolve_step_size(step_size, e, steps)
    gen = torch.Generator().manual_seed(int(seed))
    start = random_start_point(x, e, nm, gen) if random_start else None
    parts = []
    with LayerTap(model) as tap:
        for a, b in chunks(x.shape[0], check_batch_size(batch_size, x)):
            yb, tb = chunk_targets(a, b, y, t)
            if random_start:
                logits0, classes = resolve_classes(tap.run, x[a:b], yb, tb)
                first = None
            else:
                logits0, classes, direction = resolve_and_grad(tap.run, x[a:b], yb, tb)
                first = (logits0, direction)
            x_adv, used = pgd_core(
                tap.run,
                x[a:b],
                classes,
                t is not None,
                e[a:b],
                steps,
                alpha[a:b],
                nm,
                random_start,
                gen,
                early_stop,
                first=first,
                start=None if start is None else start[a:b],
            )
            parts.append((x_adv, used, logits0, classes, predict(tap.run, x_adv)))
    x_adv, used, logits0, classes, logits1 = (torch.cat(v) for v in zip(*parts, strict=True))
    settings = {
        "method": "pgd",
        "norm": nm,
        "eps": _eps_setting(e),
        "steps": steps,
        "step_size": "2.5·ε/steps" if step_size is None else step_size,
        "target": describe_target(t, class_names_of(model)),
        "random_start": bool(random_start),
        "early_stop": bool(early_stop),
        "seed": int(seed),
        "loss": "cross-entropy on logits",
    }
    return attack_result(x, x_adv, used, logits0, logits1, classes, t is not None, e, settings)


def _linear_eps(
    forward: Forward, x: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor, targeted: bool, norm: str
) -> torch.Tensor:
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
        z = check_logits(forward(xr))
        margin = z.gather(1, a[:, None]).squeeze(1) - z.gather(1, b[:, None]).squeeze(1)
        (g,) = torch.autograd.grad(margin.sum(), xr)
    dual = g.flatten(1).abs().sum(1) if norm == "inf" else g.flatten(1).norm(dim=1)
    return (margin.detach() / dual.clamp_min(1e-20)).clamp_min(0)


@needs_autograd
def minimal_eps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    target: Any = "second",
    norm: str = "inf",
    steps: int = 10,
    start: float | str = "linear",
    max_eps: float | None = None,
    rtol: float = 0.05,
    max_iter: int = 20,
    factor: float = 1.5,
    random_start: bool = False,
    seed: int = 0,
    progress: Callable[[int, int | None], None] | None = None,
) -> AttackResult:
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
    nm, steps, x, max_eps, linear_start = _check_minimal_eps(
        model, x, norm, steps, start, max_eps, rtol, max_iter, factor
    )
    n = x.shape[0]
    t = parse_target(target, model)
    y = check_labels(y, n, x.device)
    if t is not None:
        t.validate(n, model_classes(model)[1], y)
    gen = torch.Generator().manual_seed(int(seed))
    targeted = t is not None
    with LayerTap(model) as tap:
        logits0, classes = resolve_classes(tap.run, x, y, t)
        search = _EpsSearch(tap.run, x, classes, targeted, nm, steps, random_start, gen)
        at_goal = goal_reached(logits0.argmax(1), classes, targeted)
        search.hi[at_goal] = 0.0
        if linear_start:
            guess = _linear_eps(tap.run, x, logits0, classes, targeted, nm)
            eps_try = guess.clamp(min=max_eps * 1e-6, max=max_eps)
        else:
            guess = torch.full((n,), float(start), dtype=x.dtype, device=x.device)
            eps_try = guess.clone()
        search.run_all(eps_try, ~at_goal, max_eps, factor, rtol, max_iter, progress)
        logits1 = predict(tap.run, search.best)
    settings = {
        "method": "minimal-eps (first-order start, bracketing, bisection over PGD)",
        "norm": nm,
        "steps": steps,
        "step_size": "2.5·ε/steps",
        "start": "margin/||∇margin||_dual" if linear_start else float(start),
        "max_eps": max_eps,
        "rtol": rtol,
        "max_iter": max_iter,
        "factor": factor,
        "target": describe_target(t, class_names_of(model)),
        "random_start": bool(random_start),
        "seed": int(seed),
        "pgd_runs": search.runs,
        "loss": "cross-entropy on logits",
    }
    extras = {"eps_lower": search.lo.detach().cpu(), "eps_linear": guess.detach().cpu()}
    return attack_result(
        x, search.best, search.best_steps, logits0, logits1, classes, targeted, search.hi, settings, extras=extras
    )


def _check_minimal_eps(
    model: nn.Module,
    x: torch.Tensor,
    norm: str,
    steps: int,
    start: float | str,
    max_eps: float | None,
    rtol: float,
    max_iter: int,
    factor: float,
) -> tuple[str, int, torch.Tensor, float, bool]:
    """:func:`minimal_eps`'s settings checked: (norm, steps, x, max_eps with its default, start is "linear")."""
    nm = parse_norm(norm)
    steps = check_steps(steps)
    if not (0 < rtol < 1):
        raise ValueError(f"rtol must be in (0, 1), got {rtol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer ≥ 0, got {max_iter!r}")
    x = check_input(x)
    check_model(model, x)
    d = x[0].numel() if x.shape[0] else 1
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
    return nm, steps, x, max_eps, linear_start


class _EpsSearch:
    """The state of :func:`minimal_eps`'s search: per sample the largest failing ε (``lo``), the smallest
    succeeding one (``hi``, ``inf`` until one succeeds), the image found at ``hi`` and its PGD steps."""

    def __init__(
        self,
        run: Forward,
        x: torch.Tensor,
        classes: torch.Tensor,
        targeted: bool,
        nm: str,
        steps: int,
        random_start: bool,
        gen: torch.Generator,
    ):
        n = x.shape[0]
        self.run, self.x, self.classes, self.targeted = run, x, classes, targeted
        self.nm, self.steps, self.random_start, self.gen = nm, steps, random_start, gen
        self.lo = torch.zeros(n, dtype=x.dtype, device=x.device)
        self.hi = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        self.best = x.clone()
        self.best_steps = torch.zeros(n, dtype=torch.long, device=x.device)
        self.runs = 0

    def attempt(self, idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """One PGD run at ``eps`` on the samples ``idx``; keeps the images that reach the goal; which did."""
        e = eps.view(-1, 1, 1, 1)
        ok = torch.zeros(len(idx), dtype=torch.bool, device=self.x.device)
        xa, used = pgd_core(
            self.run,
            self.x[idx],
            self.classes[idx],
            self.targeted,
            e,
            self.steps,
            resolve_step_size(None, e, self.steps),
            self.nm,
            self.random_start,
            self.gen,
            True,
            reached=ok,
        )
        rest = (~ok).nonzero().view(-1)  # ran every step: check the last iterate
        if len(rest):
            ok[rest] = goal_reached(predict(self.run, xa[rest]).argmax(1), self.classes[idx][rest], self.targeted)
        self.best[idx[ok]] = xa[ok]
        self.best_steps[idx[ok]] = used[ok]
        self.runs += 1
        return ok

    def run_all(
        self,
        eps_try: torch.Tensor,
        searching: torch.Tensor,
        max_eps: float,
        factor: float,
        rtol: float,
        max_iter: int,
        progress: Callable[[int, int | None], None] | None,
    ) -> None:
        """Bracket from ``eps_try`` the samples still ``searching``, then bisect; ``progress(runs, total)``."""
        floor = max_eps * 1e-6
        span = max_eps / max(float(eps_try[searching].min()), floor) if searching.any() else 1.0
        n_bracket = max(1, math.ceil(math.log(max(span, 1.0) * 1e6, factor)) + 1) if searching.any() else 1
        n_bracket = min(n_bracket, 200)
        total = n_bracket + max_iter
        self.bracket(eps_try, searching, n_bracket, max_eps, factor, floor, lambda: _tick(progress, self.runs, total))
        self.bisect(rtol, max_iter, lambda: _tick(progress, self.runs, total))
        _tick(progress, total, total)

    def bracket(
        self,
        eps_try: torch.Tensor,
        searching: torch.Tensor,
        n_bracket: int,
        max_eps: float,
        factor: float,
        floor: float,
        tick: Callable[[], None],
    ) -> None:
        """From the start, grow ε by ``factor`` until success (or ``max_eps`` fails); where the start
        already succeeds, shrink it by ``factor`` until a failure (or the floor)."""
        lo, hi = self.lo, self.hi
        for _ in range(n_bracket):
            idx = searching.nonzero().view(-1)
            if len(idx) == 0:
                break
            e = eps_try[idx].clamp(max=max_eps)
            ok = self.attempt(idx, e)
            hi[idx[ok]] = torch.minimum(hi[idx[ok]], e[ok])
            lo[idx[~ok]] = torch.maximum(lo[idx[~ok]], e[~ok])
            bracketed = torch.isfinite(hi[idx]) & (lo[idx] > 0)
            stop = bracketed | (~ok & (e >= max_eps)) | (ok & (e / factor < floor))
            searching[idx[stop]] = False
            eps_try[idx] = torch.where(ok, e / factor, e * factor)
            tick()

    def bisect(self, rtol: float, max_iter: int, tick: Callable[[], None]) -> None:
        """Halve each open bracket until ``hi − lo ≤ rtol·hi``, at most ``max_iter`` PGD runs."""
        lo, hi = self.lo, self.hi
        for _ in range(max_iter):
            open_ = torch.isfinite(hi) & (hi > 0) & (hi - lo > rtol * hi)
            idx = open_.nonzero().view(-1)
            if len(idx) == 0:
                break
            mid = (lo[idx] + hi[idx]) / 2
            ok = self.attempt(idx, mid)
            hi[idx[ok]] = mid[ok]
            lo[idx[~ok]] = mid[~ok]
            tick()


def _tick(progress: Callable[[int, int | None], None] | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _eps_setting(e: torch.Tensor):
    v = e.view(-1)
    if len(v) and bool((v == v[0]).all()):
        return float(v[0])
    return "per sample"
