"""Occlusion sensitivity (Zeiler & Fergus 2014): slide a patch over the image and re-score.

Every window position is one forward pass; all positions of all images are
batched (``batch_size`` images per forward), and the result is the same for any
batch size. Two readings of the same passes:

* ``maps``: the drop of the target's logit, S(x) − S(x with the patch at p),
  averaged over the windows p that cover each pixel (the sliding grid gets a
  last window flush with the border, so every pixel is covered);
* ``extras["probability"]``: the target's softmax probability with the patch at
  each position — Zeiler & Fergus's probability map (low = the patch hid something
  the model needs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._batch import check_batch_size, chunks
from ..results import Explanation
from ..tap import LayerTap
from ._common import (Layout, Progress, describe_fill, finish, logits_of, pick_classes, pixel_fill, prepare, score,
                      target_layers)
from .._autograd import needs_autograd


def _pair(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) and i >= 1 for i in v)):
        raise ValueError(f"{name} must be a positive int or a pair (h, w) of positive ints, got {v!r}")
    return int(v[0]), int(v[1])


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of a window sliding with ``stride`` over ``size`` pixels, plus one flush with the end.

    >>> window_starts(10, 4, 3)
    [0, 3, 6]
    >>> window_starts(11, 4, 3)
    [0, 3, 6, 7]
    """
    window = min(window, size)
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def coverage(size: int, starts: list[int], window: int, device=None) -> torch.Tensor:
    """size × P indicator: pixel i is covered by the window starting at starts[p]."""
    i = torch.arange(size, device=device).view(-1, 1)
    s = torch.tensor(starts, device=device).view(1, -1)
    return ((i >= s) & (i < s + window)).float()


@needs_autograd
def occlusion(model: nn.Module, x: torch.Tensor, target: Any = "predicted", *, window: Any = None,
              stride: Any = None, fill: Any = "grey", batch_size: int | None = None, blur_sigma: float | None = None,
              y: torch.Tensor | None = None, progress: Progress | None = None,
              channels_last: bool | None = None) -> Explanation:
    """Occlusion sensitivity: the drop of the target's logit when a patch hides each region.

    For window positions p (the patch covers every channel, filled with ``fill``):
    raw[p] = S(x) − S(x ⊙ (1 − m_p) + fill ⊙ m_p); maps(i, j) = mean of raw[p] over
    the windows with m_p(i, j) = 1. ``fill``: "grey" (0.5, default), "black", "blur"
    (a Gaussian-blurred copy of the image), a number or a tensor, in pixel units.
    ``window`` defaults to min(H, W)/8, ``stride`` to window/2; ``batch_size`` (images
    per forward) is automatic by default (8 images of 224² on a CPU).
    ``extras["probability"]`` is the target's softmax probability at each position
    (class targets), ``extras["rows"]``/``["cols"]`` the window offsets.

    >>> e = occlusion(model, x, window=32, stride=16)          # doctest: +SKIP
    >>> e.raw.shape, e.extras["probability"].shape             # N×P_h×P_w both
    """
    batch_size = check_batch_size(batch_size, x)
    p = prepare(model, x, target, y, "occlusion")
    H, W = p.size
    if window is None:
        window = max(1, min(H, W) // 8)
    wh, ww = _pair(window, "window")
    wh, ww = min(wh, H), min(ww, W)
    if stride is None:
        stride = (max(1, wh // 2), max(1, ww // 2))
    sh, sw = _pair(stride, "stride")
    if (sh > wh and wh < H) or (sw > ww and ww < W):
        raise ValueError(
            f"stride {(sh, sw)} is larger than the window {(wh, ww)}, which leaves pixels that no patch covers; "
            "use a stride ≤ the window"
        )
    rows, cols = window_starts(H, wh, sh), window_starts(W, ww, sw)
    P = len(rows) * len(cols)
    dev = p.x.device
    filled = pixel_fill(fill, p.x, blur_sigma, "fill")
    per_sample_fill = filled.shape[0] == p.n and p.n > 1
    r0 = torch.tensor(rows, device=dev).repeat_interleave(len(cols))
    c0 = torch.tensor(cols, device=dev).repeat(len(rows))
    ii = torch.arange(H, device=dev).view(1, 1, H, 1)
    jj = torch.arange(W, device=dev).view(1, 1, 1, W)
    is_class = p.target.is_class
    drops = torch.empty(p.n * P, device=dev, dtype=torch.float32)
    probs = torch.empty(p.n * P, device=dev, dtype=torch.float32) if is_class else None
    total = p.n * P
    layout = Layout(model, p.x, channels_last)
    with LayerTap(model, target_layers(p.target)) as tap, torch.no_grad():
        out = tap.run(p.x)
        classes = pick_classes(p, out, p.n)
        s0 = score(p, tap, out, classes).float()
        p0 = logits_of(out).float().softmax(1).gather(1, classes.view(-1, 1)).squeeze(1) if is_class else None
        for a, b in chunks(total, batch_size):
            idx = torch.arange(a, b, device=dev)
            si, pi = idx // P, idx % P
            r, c = r0[pi].view(-1, 1, 1, 1), c0[pi].view(-1, 1, 1, 1)
            mask = (ii >= r) & (ii < r + wh) & (jj >= c) & (jj < c + ww)
            f = filled[si] if per_sample_fill else filled
            xb = torch.where(mask, f, p.x[si])
            ob = layout.run(tap, xb)
            sb = score(p, tap, ob, classes[si]).float()
            # a patch that changes no pixel (fill equal to the image there) changes nothing, exactly —
            # not up to the batch-size-dependent rounding of the convolutions
            same = ~(xb != p.x[si]).flatten(1).any(1)
            drops[a:b] = torch.where(same, torch.zeros_like(sb), s0[si] - sb)
            if is_class:
                pb = logits_of(ob).float().softmax(1).gather(1, classes[si].view(-1, 1)).squeeze(1)
                probs[a:b] = torch.where(same, p0[si], pb)
            if progress:
                progress(b, total)
    raw = drops.view(p.n, len(rows), len(cols))
    R = coverage(H, rows, wh, dev)  # H × Ph
    C = coverage(W, cols, ww, dev)  # W × Pw
    summed = torch.einsum("hp,npq,wq->nhw", R, raw, C)
    count = R.sum(1).view(H, 1) * C.sum(1).view(1, W)
    maps = summed / count
    extras = {"rows": torch.tensor(rows), "cols": torch.tensor(cols), "score": s0}
    if is_class:
        extras["probability"] = probs.view(p.n, len(rows), len(cols))
        extras["clean_probability"] = p0
    settings = {"window": (wh, ww), "stride": (sh, sw), "fill": describe_fill(fill), "positions": (len(rows), len(cols))}
    if isinstance(fill, str) and fill == "blur":
        settings["blur_sigma"] = blur_sigma
    return finish(p, maps, "occlusion", classes, settings=settings, raw=raw, extras=extras)
