"""From a map to an object mask: GrabCut seeded by the map (Simonyan et al. 2014, §3).

Simonyan, Vedaldi and Zisserman ("Deep inside convolutional networks", ICLR 2014 workshop, §3)
segmented the object from a class saliency map alone: pixels above the map's 95 % quantile seed the
foreground colour model, pixels below its 30 % quantile the background's, GrabCut (Rother et al. 2004)
labels the rest, and the object is the largest connected component of the foreground. cnnlens runs
OpenCV's ``cv2.grabCut`` (an optional extra: ``pip install 'cnnlens[segment]'``); the pixels between the
two quantiles start as "probably background" (``GC_PR_BGD``), so GrabCut adds to the seeds only what the
colour models and the image's edges support.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..extras import require
from ..results import Explanation

#: Simonyan et al.'s seeds: foreground above this quantile of the map, background below the next
FOREGROUND_QUANTILE = 0.95
BACKGROUND_QUANTILE = 0.30


def _cv2():
    return require("segment", "cv2", what="attribution.segment (OpenCV's GrabCut)")


def _maps(e: Any) -> torch.Tensor:
    m = e.maps if isinstance(e, Explanation) else e
    if not torch.is_tensor(m):
        raise TypeError(f"give an Explanation or an N×H×W tensor of maps, got {type(m).__name__}")
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() != 3:
        raise ValueError(f"maps of shape {tuple(m.shape)}: give N×H×W maps, one per image")
    return m.detach().float().cpu()


def segment(
    explanation: Any,
    x: torch.Tensor,
    *,
    foreground: float = FOREGROUND_QUANTILE,
    background: float = BACKGROUND_QUANTILE,
    iterations: int = 5,
    largest: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """A foreground mask per image (N×H×W bool) from GrabCut seeded by the map (Simonyan et al. 2014 §3).

    Seeds: a(p) ≥ q_foreground(a) → foreground, a(p) ≤ q_background(a) → background (quantiles of each map),
    the rest "probably background"; ``iterations`` rounds of GrabCut on the image (grey images are
    repeated to RGB, values in [0, 1] → 0–255); with ``largest`` only the largest 8-connected foreground
    component is kept. A constant map (no seeds apart) gives an empty mask. GrabCut's colour models start
    from k-means on OpenCV's global random generator: it is seeded with ``seed`` before each image, so a
    mask does not depend on what ran before (OpenCV's generator is left in that state).

    >>> e = cnnlens.attribution.saliency(model, x)                       # doctest: +SKIP
    >>> masks = cnnlens.attribution.segment(e, x)                          # doctest: +SKIP
    >>> cnnlens.metrics.mask_iou(masks, ds.ink[:len(x)])                   # doctest: +SKIP
    """
    if not 0 <= background < foreground <= 1:
        raise ValueError(
            f"need 0 ≤ background < foreground ≤ 1 (quantiles of the map), got {background} and "
            f"{foreground}; Simonyan et al. use 0.30 and 0.95"
        )
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    a = _maps(explanation)
    if not torch.is_tensor(x) or x.dim() not in (3, 4):
        raise TypeError("x must be the explained images as an N×C×H×W tensor in [0, 1]")
    x = x.unsqueeze(0) if x.dim() == 3 else x
    if x.shape[0] != a.shape[0] or tuple(x.shape[-2:]) != tuple(a.shape[-2:]):
        raise ValueError(
            f"{a.shape[0]} maps of size {tuple(a.shape[-2:])} for images of shape {tuple(x.shape)}; "
            "give the images the maps explain"
        )
    if x.shape[1] not in (1, 3):
        raise ValueError(f"GrabCut works on grey or RGB images; got {x.shape[1]} channels")
    cv2 = _cv2()

    label = require("data", "skimage.measure", what="segment's largest component").label

    img = (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    img = img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img
    bgr = img.permute(0, 2, 3, 1).numpy()[..., ::-1]  # OpenCV's BGR
    out = np.zeros(tuple(a.shape), dtype=bool)
    for i, m in enumerate(a.numpy()):
        hi, lo = np.quantile(m, foreground), np.quantile(m, background)
        fg, bg = m >= hi, m <= lo
        if not hi > lo or not fg.any() or not bg.any():
            continue
        mask = np.full(m.shape, cv2.GC_PR_BGD, dtype=np.uint8)
        mask[fg] = cv2.GC_FGD
        mask[bg] = cv2.GC_BGD
        cv2.setRNGSeed(int(seed))
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(np.ascontiguousarray(bgr[i]), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
        obj = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
        if largest and obj.any():
            lab = label(obj, connectivity=2)
            counts = np.bincount(lab.ravel())
            counts[0] = 0
            obj = lab == int(counts.argmax())
        out[i] = obj
    return torch.from_numpy(out)
