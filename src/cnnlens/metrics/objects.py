"""From a map to an object: a box cut from the map (weakly supervised localisation) and mask overlap.

Zhou et al. (CVPR 2016, "Learning deep features for discriminative localization", §3) turned a
class activation map into a box: keep the pixels above 20 % of the map's maximum, take the largest
connected component, and draw its bounding box; the ILSVRC localisation criterion counts a box as
correct when its intersection over union with the ground-truth box is at least 0.5. Here the class is
the one explained (the true class in the leaderboard), so the accuracy is what Choe et al. (CVPR 2020,
"Evaluating weakly supervised object localization methods right") call *GT-known* localisation
accuracy: the box criterion alone, without requiring the top-1 prediction to be right.

Boxes are (x0, y0, x1, y1) in pixels of the map, end exclusive (as ``cluttered_digits().boxes``).

>>> from cnnlens import metrics, attribution
>>> e = attribution.cam(model, ds.x[:8])                                     # doctest: +SKIP
>>> metrics.localisation_accuracy(e, ds.boxes[:8]).mean                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..attribution.segment import segment
from ..extras import require
from .common import maps_of, masks_of
from .result import MetricResult

#: the localisation criterion of ILSVRC (and Zhou et al. 2016): IoU ≥ 0.5
IOU_HIT = 0.5


def box_from_map(explanation: Any, threshold: float = 0.2) -> torch.Tensor:
    """The bounding box of the largest connected region above ``threshold`` × the map's maximum
    (Zhou et al. 2016): N×4 long (x0, y0, x1, y1), end exclusive.

    Region: pixels p with a(p) ≥ threshold · max a (8-connected, ``skimage.measure.label``); the largest by
    pixel count (ties: the one met first in row-major order). A map whose maximum is not positive
    (nothing to localise, e.g. an all-zero Grad-CAM) gives the empty box (0, 0, 0, 0), whose IoU with any
    box is 0.

    >>> m = torch.zeros(1, 8, 8); m[0, 1:3, 1:3] = 1; m[0, 4:8, 5:7] = 0.9
    >>> box_from_map(m).tolist()
    [[5, 4, 7, 8]]
    """
    label = require("data", "skimage.measure", what="box_from_map (connected regions)").label
    if not 0 <= float(threshold) <= 1:
        raise ValueError(
            f"threshold must be in [0, 1] (a share of the map's maximum), got {threshold}; Zhou et al. use 0.2"
        )
    a = maps_of(explanation).numpy()
    out = np.zeros((a.shape[0], 4), dtype=np.int64)
    for i, m in enumerate(a):
        top = float(m.max())
        if not top > 0:
            continue
        lab = label(m >= threshold * top, connectivity=2)
        counts = np.bincount(lab.ravel())
        counts[0] = 0
        rows, cols = np.nonzero(lab == int(counts.argmax()))
        out[i] = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    return torch.from_numpy(out)


def box_iou(a: Any, b: Any) -> torch.Tensor:
    """Intersection over union of paired boxes (N×4 each, x0, y0, x1, y1, end exclusive): float64 N.
    Two empty boxes have IoU 0.

    >>> box_iou(torch.tensor([[0, 0, 4, 4]]), torch.tensor([[2, 0, 6, 4]])).tolist()
    [0.3333333333333333]
    """
    a = torch.as_tensor(a).double().reshape(-1, 4)
    b = torch.as_tensor(b).double().reshape(-1, 4)
    if a.shape != b.shape:
        raise ValueError(f"{a.shape[0]} boxes against {b.shape[0]}; give one box per map")
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = w * h
    area = lambda z: (z[:, 2] - z[:, 0]).clamp_min(0) * (z[:, 3] - z[:, 1]).clamp_min(0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def _classes(explanation, n):
    c = getattr(explanation, "classes", None)
    return c.clone() if torch.is_tensor(c) else torch.full((n,), -1, dtype=torch.long)


def _true_boxes(boxes, n):
    b = torch.as_tensor(boxes)
    if b.dim() == 1:
        b = b.unsqueeze(0)
    if b.dim() != 2 or tuple(b.shape) != (n, 4):
        raise ValueError(f"boxes of shape {tuple(b.shape)} do not match {n} maps; give N×4 (x0, y0, x1, y1)")
    return b


def localisation_iou(explanation: Any, boxes: Any, *, threshold: float = 0.2) -> MetricResult:
    """IoU of the box cut from each map (:func:`box_from_map`, Zhou et al. 2016) with the ground-truth box.
    Higher is better; ``extras["boxes"]`` holds the boxes cut from the maps.

    >>> localisation_iou(cam(model, x), ds.boxes[:8]).mean                   # doctest: +SKIP
    """
    a = maps_of(explanation)
    truth = _true_boxes(boxes, a.shape[0])
    pred = box_from_map(a, threshold)
    iou = box_iou(pred, truth)
    return MetricResult(
        "localisation_iou",
        iou,
        True,
        _classes(explanation, len(iou)),
        getattr(explanation, "method", None),
        settings={"threshold": threshold, "paper": "Zhou et al. 2016"},
        extras={"boxes": pred},
    )


def localisation_accuracy(
    explanation: Any, boxes: Any, *, threshold: float = 0.2, iou: float = IOU_HIT
) -> MetricResult:
    """1 where the box cut from the map overlaps the ground-truth box with IoU ≥ ``iou`` (0.5: the ILSVRC
    criterion Zhou et al. 2016 report), else 0; the mean is the GT-known localisation accuracy.

    >>> localisation_accuracy(gradcam(model, x), ds.boxes[:8]).mean          # doctest: +SKIP
    """
    r = localisation_iou(explanation, boxes, threshold=threshold)
    hit = (r.scores >= iou).double()
    return MetricResult(
        "localisation_accuracy",
        hit,
        True,
        r.classes,
        r.method,
        settings={"threshold": threshold, "iou": iou, "paper": "Zhou et al. 2016 (ILSVRC criterion)"},
        extras={"boxes": r.extras["boxes"], "iou": r.scores},
    )


def mask_iou(masks: Any, true_masks: Any) -> torch.Tensor:
    """Intersection over union of paired binary masks (N×H×W each, non-zero = inside): float64 N.
    Two empty masks have IoU NaN (nothing to find).

    >>> mask_iou(torch.tensor([[[1, 1, 0]]]), torch.tensor([[[0, 1, 1]]])).tolist()
    [0.3333333333333333]
    """
    p = torch.as_tensor(masks)
    if p.dim() == 2:
        p = p.unsqueeze(0)
    p = p.detach().cpu() != 0
    t = masks_of(masks=true_masks, n=p.shape[0], size=(int(p.shape[-2]), int(p.shape[-1])))
    inter = (p & t).flatten(1).sum(1).double()
    union = (p | t).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))


def segmentation_iou(explanation: Any, x: torch.Tensor, true_masks: Any, **segment_settings) -> MetricResult:
    """IoU of the GrabCut segmentation seeded by each map (:func:`cnnlens.attribution.segment`, Simonyan
    et al. 2014 §3) with the object's mask. Higher is better; ``extras["masks"]`` holds the segments.
    Needs ``pip install 'cnnlens[segment]'``.

    >>> segmentation_iou(saliency(model, x), x, ds.ink[:8]).mean              # doctest: +SKIP
    """
    seg = segment(explanation, x, **segment_settings)
    iou = mask_iou(seg, true_masks)
    return MetricResult(
        "segmentation_iou",
        iou,
        True,
        _classes(explanation, len(iou)),
        getattr(explanation, "method", None),
        settings={**segment_settings, "paper": "Simonyan et al. 2014 §3 (GrabCut)"},
        extras={"masks": seg},
    )
