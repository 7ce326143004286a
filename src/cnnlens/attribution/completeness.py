"""Completeness of bridged attributions: do the attributions add up to the score they explain?

Methods with a conservation property promise what their attributions sum to:

=====================================================  ==================================  ===========
method (Captum class)                                  Σ attributions =                    tolerance
=====================================================  ==================================  ===========
DeepLift, LayerDeepLift (rescale rule)                 f(x) − f(x′)                        1 %
DeepLiftShap, LayerDeepLiftShap                        f(x) − mean over baselines f(x′)    1 %
LRP, LayerLRP (ε rule)                                 f(x)                                5 %
IntegratedGradients, LayerIntegratedGradients          f(x) − f(x′)                        5 %
GradientShap, LayerGradientShap (in expectation)       f(x) − mean over baselines f(x′)    25 %
=====================================================  ==================================  ===========

f is the explained class's logit. The *gap* of image i is
``|Σ attributions − expected| / max(|expected|, 1e-3 · (|f(x)| + |f(x′)|), 1e-8)``,
stored per image in ``extras["completeness_gap"]``.

Why these tolerances: DeepLift's rescale rule satisfies summation-to-delta exactly
(Shrikumar et al. 2017, §3.3) where every non-linearity has its rule, so anything
above float rounding means an operation escaped the rules (a product, a module called
twice, an activation with no rule). LRP-ε conserves relevance up to what biases and
ε absorb (Montavon et al. 2019, "Layer-wise relevance propagation: an overview",
§10.2), typically a few per cent on trained networks. Integrated gradients is a
numerical integral; Sundararajan et al. 2017 (§4) suggest checking that it is
within 5 % and raising the number of steps if not. GradientShap's sum equals the
difference only in expectation over its random points and baselines
(Lundberg & Lee 2017; Erion et al. 2021), so one estimate from a few samples
misses it by more: only a gross miss (25 %) is flagged, and the fix is more
``n_samples``.

Above the tolerance, the explanation is marked: ``extras["complete"] = False``,
``extras["completeness_note"]`` holds :data:`INCOMPLETE` (the figure title, the
report and the explorer show it) and a warning is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("cnnlens.attribution")

#: the one-line mark shown wherever an incomplete explanation is drawn
INCOMPLETE = "does not add up to the score: not a valid explanation for this model"


@dataclass(frozen=True)
class Rule:
    """What a method's attributions sum to: ``"delta"`` f(x) − f(x′), ``"mean_delta"`` f(x) − mean f(x′)
    over a distribution of baselines, ``"score"`` f(x); ``tolerance`` relative; ``hint`` the fix."""

    kind: str
    tolerance: float
    hint: str


_EXACT = "a layer or operation escaped the rules (a product, a reused module, an activation with no rule)"
RULES: dict[str, Rule] = {
    "DeepLift": Rule("delta", 0.01, _EXACT),
    "LayerDeepLift": Rule("delta", 0.01, _EXACT),
    "DeepLiftShap": Rule("mean_delta", 0.01, _EXACT),
    "LayerDeepLiftShap": Rule("mean_delta", 0.01, _EXACT),
    "LRP": Rule(
        "score", 0.05, "LRP has no conserving rule for skip connections or products, and biases absorb relevance"
    ),
    "LayerLRP": Rule(
        "score", 0.05, "LRP has no conserving rule for skip connections or products, and biases absorb relevance"
    ),
    "IntegratedGradients": Rule("delta", 0.05, "raise n_steps"),
    "LayerIntegratedGradients": Rule("delta", 0.05, "raise n_steps"),
    "GradientShap": Rule("mean_delta", 0.25, "raise n_samples"),
    "LayerGradientShap": Rule("mean_delta", 0.25, "raise n_samples"),
}


def baseline_batch(baselines: Any, x: torch.Tensor, kind: str) -> torch.Tensor | None:
    """The baselines as images: N×C×H×W matched to ``x`` (``"delta"``) or B×C×H×W (``"mean_delta"``);
    None where they are not images (a callable, a tuple of several inputs)."""
    if baselines is None:
        return torch.zeros_like(x[:1]).expand_as(x) if kind == "delta" else None
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return torch.full_like(x, float(baselines))
    if not torch.is_tensor(baselines):
        return None
    b = baselines.to(device=x.device, dtype=x.dtype)
    if kind == "mean_delta":
        return b if b.dim() == x.dim() else None
    try:
        return b.expand_as(x)
    except RuntimeError:
        return None


def completeness(
    attributions: torch.Tensor,
    method: str,
    logits: Callable[[torch.Tensor], torch.Tensor],
    classes: torch.Tensor,
    x: torch.Tensor,
    baselines: Any,
    *,
    multiply_by_inputs: bool = True,
) -> dict:
    """The completeness extras of one bridged run: ``completeness_gap`` (N, relative), ``complete``,
    ``completeness_sum``, ``completeness_expected`` and, above the tolerance, ``completeness_note``.

    ``logits(images)`` is the model's output (B×K, no gradient); ``classes`` the explained class of each
    of the N images. Methods without a conservation property, or
    run with ``multiply_by_inputs=False`` (their attributions are multipliers), give ``{}``.
    """
    rule = RULES.get(method)
    if rule is None or not multiply_by_inputs:
        return {}
    n = x.shape[0]
    idx = classes.view(-1, 1).to(x.device)
    fx = logits(x).double().gather(1, idx)[:, 0]
    if rule.kind == "score":
        ref = torch.zeros_like(fx)
    else:
        b = baseline_batch(baselines, x, rule.kind)
        if b is None:
            return {"completeness_note": "completeness not checked: the baselines are not images"}
        lb = logits(b).double()
        ref = lb.gather(1, idx)[:, 0] if rule.kind == "delta" else lb[:, idx[:, 0]].mean(0)
    expected = fx - ref
    total = attributions.detach().double().reshape(n, -1).sum(1)
    floor = (1e-3 * (fx.abs() + ref.abs())).clamp_min(1e-8)
    gap = ((total - expected).abs() / torch.maximum(expected.abs(), floor)).float()
    finite = torch.isfinite(gap)
    gap = torch.where(finite, gap, torch.full_like(gap, float("inf")))
    ok = bool((gap <= rule.tolerance).all())
    out = {
        "completeness_gap": gap.cpu(),
        "complete": ok,
        "completeness_sum": total.float().cpu(),
        "completeness_expected": expected.float().cpu(),
        "completeness_tolerance": rule.tolerance,
    }
    if not ok:
        worst = float(gap.max())
        out["completeness_note"] = INCOMPLETE
        log.warning(
            "%s %s: Σ attributions misses %s by %s (tolerance %.0f %%; %s)",
            method,
            INCOMPLETE,
            {"score": "f(x)", "delta": "f(x) − f(x′)", "mean_delta": "f(x) − E f(x′)"}[rule.kind],
            "a non-finite amount" if worst == float("inf") else f"{worst:.1%}",
            100 * rule.tolerance,
            rule.hint,
        )
    return out


def incomplete_note(extras: dict) -> str | None:
    """The mark to show with an explanation whose attributions do not add up (None when they do,
    or when nothing was checked)."""
    return INCOMPLETE if extras.get("complete") is False else None
