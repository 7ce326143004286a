"""Does the map point at the evidence? Scores of a map against a ground-truth box or mask.

All three need only the maps and the ground truth (``boxes`` N×4 x0, y0, x1, y1
in map pixels, end exclusive, or ``masks`` N×H×W); a map whose mask is empty
scores NaN (left out of the aggregate). They agree with Quantus 0.6
(``PointingGame``, ``RelevanceMassAccuracy``, ``RelevanceRankAccuracy``) at its
defaults (``abs=False``; Quantus' batch-wide max-normalisation changes none of
them). Ties: cnnlens ranks equal values by pixel index (a stable sort), Quantus
by numpy's unstable sort, so rank accuracy can differ where tied values straddle
the top K.
"""

from __future__ import annotations

from typing import Any

import torch

from .common import maps_of, masks_of
from .result import MetricResult


def _prep(explanation, boxes, masks, abs_):
    a = maps_of(explanation)
    s = masks_of(boxes, masks, a.shape[0], tuple(a.shape[-2:]))
    if abs_:
        a = a.abs()
    return a.reshape(a.shape[0], -1).double(), s.reshape(s.shape[0], -1), a


def _classes(explanation, n):
    c = getattr(explanation, "classes", None)
    return c.clone() if torch.is_tensor(c) else torch.full((n,), -1, dtype=torch.long)


def _method(explanation):
    return getattr(explanation, "method", None)


def pointing_game(explanation: Any, boxes: Any = None, *, masks: Any = None, abs: bool = False) -> MetricResult:
    """Pointing game (Zhang et al. 2018, "Top-down neural attention by excitation backprop", IJCV):
    a hit when the map's maximum lies inside the ground truth.

    hit_i = 1 if any pixel p with a_i(p) = max a_i is in mask_i, else 0 (ties: any maximum counts,
    as Quantus). Higher is better; the mean is the hit rate.

    >>> pointing_game(gradcam(model, x), boxes=ds.boxes[:8]).mean         # doctest: +SKIP
    """
    a, s, raw = _prep(explanation, boxes, masks, abs)
    top = a == a.max(1, keepdim=True).values
    hit = (top & s).any(1).double()
    hit[s.sum(1) == 0] = float("nan")
    return MetricResult(
        "pointing_game",
        hit,
        True,
        _classes(explanation, len(hit)),
        _method(explanation),
        settings={"abs": abs, "paper": "Zhang et al. 2018"},
    )


def relevance_mass_accuracy(
    explanation: Any, boxes: Any = None, *, masks: Any = None, abs: bool = False
) -> MetricResult:
    """Relevance mass accuracy (Arras et al. 2022, "CLEVR-XAI: a benchmark dataset for the ground truth
    evaluation of neural network explanations", Information Fusion):

    mass_i = Σ_{p ∈ GT_i} a_i(p) / Σ_p a_i(p). Higher is better (1: all relevance inside). With
    ``abs=False`` (Quantus' default) a signed map can give values outside [0, 1]; Arras et al.
    use the positive relevance, which for non-negative maps (Grad-CAM, saliency) is the same.

    >>> relevance_mass_accuracy(saliency(model, x), boxes=ds.boxes[:8]).scores   # doctest: +SKIP
    """
    a, s, _ = _prep(explanation, boxes, masks, abs)
    total = a.sum(1)
    mass = (a * s).sum(1) / total
    mass[s.sum(1) == 0] = float("nan")
    return MetricResult(
        "relevance_mass_accuracy",
        mass,
        True,
        _classes(explanation, len(mass)),
        _method(explanation),
        settings={"abs": abs, "paper": "Arras et al. 2022"},
    )


def relevance_rank_accuracy(
    explanation: Any, boxes: Any = None, *, masks: Any = None, abs: bool = False
) -> MetricResult:
    """Relevance rank accuracy (Arras et al. 2022, CLEVR-XAI): of the K = |GT_i| highest-relevance
    pixels, the fraction inside the ground truth.

    rank_i = |top_K(a_i) ∩ GT_i| / K. Higher is better (1: the K most relevant pixels are exactly
    the box).

    >>> relevance_rank_accuracy(gradcam(model, x), boxes=ds.boxes[:8]).mean     # doctest: +SKIP
    """
    a, s, _ = _prep(explanation, boxes, masks, abs)
    k = s.sum(1)
    order = torch.argsort(-a, dim=1, stable=True)
    picked = s.gather(1, order)
    first_k = torch.arange(a.shape[1]).view(1, -1) < k.view(-1, 1)
    rank = (picked & first_k).sum(1).double() / k.clamp_min(1).double()
    rank[k == 0] = float("nan")
    return MetricResult(
        "relevance_rank_accuracy",
        rank,
        True,
        _classes(explanation, len(rank)),
        _method(explanation),
        settings={"abs": abs, "paper": "Arras et al. 2022"},
    )
