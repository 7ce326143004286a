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

import logging
from typing import Any

import torch
from torch import nn

from .._batch import Tuner, arms, check_batch_size, chunks, workload
from ..results import Explanation
from ..tap import LayerTap
from .incremental import IncrementalOcclusion, Unsupported, input_box, log_fallback
from ._common import (Layout, Progress, describe_fill, finish, logits_of, pick_classes, pixel_fill, prepare, score,
                      target_layers)
from .._autograd import needs_autograd


log = logging.getLogger("cnnlens.attribution")

#: approximate mode (Krypton §4): box cap τ (share of each layer's size), coarse grid = stride × ``coarse``,
#: ``fraction`` of the fine positions recomputed (the top ones by the coarse map)
APPROXIMATE = {"tau": 0.5, "coarse": 2, "fraction": 0.25}


def _approx_settings(approximate: Any, H: int, W: int, wh: int, ww: int, sh: int, sw: int) -> dict | None:
    if approximate is False or approximate is None:
        return None
    if approximate is True:
        a = dict(APPROXIMATE)
    elif isinstance(approximate, dict):
        unknown = set(approximate) - set(APPROXIMATE)
        if unknown:
            raise ValueError(f"approximate: unknown setting(s) {sorted(unknown)}; use {sorted(APPROXIMATE)}")
        a = {**APPROXIMATE, **approximate}
    else:
        raise TypeError(f"approximate must be True, False or a dict of {sorted(APPROXIMATE)}, got {approximate!r}")
    if not (0 < float(a["tau"]) <= 1) or not (0 < float(a["fraction"]) <= 1) or int(a["coarse"]) < 1:
        raise ValueError(f"approximate needs 0 < tau ≤ 1, 0 < fraction ≤ 1 and coarse ≥ 1, got {a}")
    log.warning("approximate occlusion is experimental: with these settings its map can differ much from the "
                "exact one (mean SSIM 0.14–0.31 measured on EfficientNet-Lite0); pass check=True to see how far")
    a["coarse_rows"] = window_starts(H, wh, sh * int(a["coarse"]) if sh * int(a["coarse"]) <= wh else wh)
    a["coarse_cols"] = window_starts(W, ww, sw * int(a["coarse"]) if sw * int(a["coarse"]) <= ww else ww)
    return a


def _ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity  # noqa: PLC0415

    a, b = a.double().numpy(), b.double().numpy()
    rng = float(b.max() - b.min()) or 1.0
    return float(structural_similarity(a, b, data_range=rng))


#: window positions per batch on the incremental path (a layer's boxes for this many positions are one tensor)
POSITIONS_PER_BATCH = 128


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
              channels_last: bool | None = None, incremental: bool | None = None, approximate: Any = False,
              check: bool = False) -> Explanation:
    """Occlusion sensitivity: the drop of the target's logit when a patch hides each region.

    For window positions p (the patch covers every channel, filled with ``fill``):
    raw[p] = S(x) − S(x ⊙ (1 − m_p) + fill ⊙ m_p); maps(i, j) = mean of raw[p] over
    the windows with m_p(i, j) = 1. ``fill``: "grey" (0.5, default), "black", "blur"
    (a Gaussian-blurred copy of the image), a number or a tensor, in pixel units.
    ``window`` defaults to min(H, W)/8, ``stride`` to window/2. On the full
    re-inference path, ``batch_size`` (images per forward) is automatic by default:
    on a CPU, :class:`cnnlens._batch.Tuner` measures, while the work runs, which batch
    size (the automatic one or 4× it) and thread count (the process's or one) is
    fastest per image, and keeps following the machine's load (an explicit
    ``batch_size`` fixes the size; the thread count is still measured). The map never
    depends on these choices.
    ``extras["probability"]`` is the target's softmax probability at each position
    (class targets), ``extras["rows"]``/``["cols"]`` the window offsets.

    ``incremental`` (default: whenever the model allows it) recomputes, per position,
    only the part of each layer that the patch can reach (Krypton, Nakandala et al.
    2019; :mod:`cnnlens.attribution.incremental`) — the same values as full
    re-inference up to float rounding. A model that does not trace with torch.fx, or
    a channel/neuron target, runs the whole model per position (logged once);
    ``settings["path"]`` says which ran ("incremental" or "full"). With
    ``incremental``, ``batch_size`` counts window positions per batch.

    ``approximate=True`` (or a dict overriding ``tau``, ``coarse`` and ``fraction``;
    defaults in :data:`APPROXIMATE`) trades exactness for speed as Krypton §4 does: every
    recomputed box is capped at τ of its layer's size (centre-cropped), and the fine grid
    is drilled down adaptively — a grid ``coarse`` times coarser first, then only the top
    ``fraction`` of the fine positions (ranked by the coarse map), the rest interpolated.
    ``settings["approximate"]`` records the parameters; ``check=True`` also computes the
    exact map and stores the SSIM of each approximate map against it in
    ``extras["ssim"]`` (scikit-image's ``structural_similarity``).

    >>> e = occlusion(model, x, window=32, stride=16)          # doctest: +SKIP
    >>> e.raw.shape, e.extras["probability"].shape             # N×P_h×P_w both
    """
    batch_size_given = batch_size is not None
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
    is_class = p.target.is_class
    drops = torch.empty(p.n * P, device=dev, dtype=torch.float32)
    probs = torch.empty(p.n * P, device=dev, dtype=torch.float32) if is_class else None
    approx = _approx_settings(approximate, H, W, wh, ww, sh, sw)
    if approx is not None and incremental is False:
        raise ValueError("approximate=True needs the incremental path; drop incremental=False")
    path, why = "full", None
    if incremental is not False:
        why = None if is_class else "a channel or neuron target is read inside the model"
        if why is None:
            try:
                s0, p0, classes = _incremental(model, p, filled, per_sample_fill, rows, cols, wh, ww, drops, probs,
                                               batch_size_given, batch_size, progress, approx=approx)
                path = "incremental" if approx is None else "approximate"
            except Unsupported as e:
                why = str(e)
        if why is not None:
            if incremental or approx is not None:
                raise ValueError(f"incremental occlusion is not possible here: {why}; use incremental=None or False"
                                 + (" and approximate=False" if approx is not None else ""))
            log_fallback(why)
    if path == "full":
        s0, p0, classes = _full_reinference(model, p, filled, per_sample_fill, rows, cols, wh, ww, drops, probs,
                                            batch_size, progress, channels_last, calibrate=not batch_size_given)
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
    settings = {"window": (wh, ww), "stride": (sh, sw), "fill": describe_fill(fill), "positions": (len(rows), len(cols)),
                "path": path}
    if why is not None:
        settings["full_reason"] = why
    if approx is not None:
        settings["approximate"] = {k: approx[k] for k in ("tau", "coarse", "fraction")}
        settings["approximate"]["coarse_positions"] = (len(approx["coarse_rows"]), len(approx["coarse_cols"]))
        if check:
            exact = occlusion(model, x, target, window=window, stride=stride, fill=fill, batch_size=batch_size
                              if batch_size_given else None, blur_sigma=blur_sigma, y=y, incremental=True)
            extras["ssim"] = torch.tensor([_ssim(a, b) for a, b in zip(maps.cpu(), exact.maps)])
    if isinstance(fill, str) and fill == "blur":
        settings["blur_sigma"] = blur_sigma
    return finish(p, maps, "occlusion", classes, settings=settings, raw=raw, extras=extras)


def _full_reinference(model, p, filled, per_sample_fill, rows, cols, wh, ww, drops, probs, batch_size, progress,
                      channels_last, calibrate=False):
    """Every window position through the whole model, ``batch_size`` images per forward (or as calibrated)."""
    H, W = p.size
    P = len(rows) * len(cols)
    dev = p.x.device
    is_class = p.target.is_class
    r0 = torch.tensor(rows, device=dev).repeat_interleave(len(cols))
    c0 = torch.tensor(cols, device=dev).repeat(len(rows))
    ii = torch.arange(H, device=dev).view(1, 1, H, 1)
    jj = torch.arange(W, device=dev).view(1, 1, 1, W)
    total = p.n * P
    layout = Layout(model, p.x, channels_last)
    tuner = Tuner(workload("occlusion", model, p.x), arms(p.x, None if calibrate else batch_size, layout.channels_last))
    with LayerTap(model, target_layers(p.target)) as tap, torch.no_grad():
        with tuner.threads():
            out = tap.run(p.x)
        classes = pick_classes(p, out, p.n)
        s0 = score(p, tap, out, classes).float()
        p0 = logits_of(out).float().softmax(1).gather(1, classes.view(-1, 1)).squeeze(1) if is_class else None
        a = 0
        while a < total:
            arm = tuner.next(total - a)
            b = min(total, a + arm.batch)
            with tuner.timed(arm, b - a):
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
            a = b
            if progress:
                progress(b, total)
    return s0, p0, classes


def _interp(fine: list[int], coarse: list[int]) -> torch.Tensor:
    """len(fine) × len(coarse) linear-interpolation weights between window offsets."""
    c = torch.tensor(coarse, dtype=torch.float64)
    f = torch.tensor(fine, dtype=torch.float64)
    M = torch.zeros(len(fine), len(coarse), dtype=torch.float64)
    if len(coarse) == 1:
        M[:, 0] = 1
        return M.float()
    j = (torch.searchsorted(c, f, right=True) - 1).clamp(0, len(coarse) - 2)
    t = ((f - c[j]) / (c[j + 1] - c[j])).clamp(0, 1)
    M[torch.arange(len(fine)), j] = 1 - t
    M[torch.arange(len(fine)), j + 1] += t
    return M.float()


def _incremental(model, p, filled, per_sample_fill, rows, cols, wh, ww, drops, probs, batch_size_given, batch_size,
                 progress, stats=None, approx: dict | None = None):
    """Every window position through only the part of each layer that the patch reaches (see incremental.py).

    With ``approx`` (Krypton §4): boxes capped at τ of each layer, and adaptive drill-down — the positions of a
    coarse grid first, then only the top ``fraction`` of the fine positions (ranked by the coarse map,
    interpolated), the others interpolated from the coarse grid."""
    P = len(rows) * len(cols)
    Pc = len(cols)
    dev = p.x.device
    is_class = p.target.is_class
    per = batch_size if batch_size_given else POSITIONS_PER_BATCH
    total = p.n * P
    with LayerTap(model, []) as tap, torch.no_grad():
        out = logits_of(tap.run(p.x))
        classes = pick_classes(p, out, p.n)
        inc = IncrementalOcclusion(model, tau=None if approx is None else approx["tau"])
        s0 = torch.empty(p.n, device=dev)
        p0 = torch.empty(p.n, device=dev) if is_class else None
        done = 0

        def grid(xi, fi, env, ci, s0i, p0i, rr: list[int], cc: list[int]):
            """drops and probabilities (len(rr)·len(cc)) for the grid rr × cc of window offsets."""
            rows_t = torch.tensor(rr, device=dev)
            cols_t = torch.tensor(cc, device=dev)
            d = torch.empty(len(rr) * len(cc), device=dev)
            q = torch.empty(len(rr) * len(cc), device=dev)
            for a, b in chunks(len(rr), max(1, per // len(cc))):
                box, same = input_box(xi, fi, rows_t[a:b], cols_t, wh, ww)
                ob = logits_of(inc.run(env, box, stats))
                cb = ci.expand(ob.shape[0])
                sb = p.target.score(ob, cb).float()
                lo, hi = a * len(cc), b * len(cc)
                d[lo:hi] = torch.where(same, torch.zeros_like(sb), s0i - sb)
                if is_class:
                    pb = ob.float().softmax(1).gather(1, cb.view(-1, 1)).squeeze(1)
                    q[lo:hi] = torch.where(same, p0i.expand_as(pb), pb)
            return d, q

        for i in range(p.n):
            xi = p.x[i:i + 1]
            env = inc.clean(xi)
            o = env[inc.nodes[-1]]
            if not torch.is_tensor(o) or o.shape != out[i:i + 1].shape or not torch.allclose(
                    o, out[i:i + 1], rtol=1e-4, atol=1e-4 * float(out[i].abs().max()) + 1e-6):
                raise Unsupported("the traced model's output differs from the model's")
            ci = classes[i:i + 1]
            s0[i] = p.target.score(o, ci).float()[0]
            if is_class:
                p0[i] = o.float().softmax(1)[0, ci[0]]
            p0i = p0[i] if is_class else s0[i]
            fi = filled[i:i + 1] if per_sample_fill else filled
            lo, hi = i * P, (i + 1) * P
            if approx is None:
                d, q = grid(xi, fi, env, ci, s0[i], p0i, rows, cols)
            else:
                rc, cc = approx["coarse_rows"], approx["coarse_cols"]
                dc, qc = grid(xi, fi, env, ci, s0[i], p0i, rc, cc)
                Mr, Mc = _interp(rows, rc).to(dev), _interp(cols, cc).to(dev)
                d = (Mr @ dc.view(len(rc), len(cc)) @ Mc.T).flatten()
                q = (Mr @ qc.view(len(rc), len(cc)) @ Mc.T).flatten()
                k = min(P, max(1, round(approx["fraction"] * P)))
                top = torch.zeros(P, dtype=torch.bool, device=dev)
                top[d.topk(k).indices] = True
                top = top.view(len(rows), len(cols))
                for r in range(len(rows)):
                    js = top[r].nonzero().flatten().tolist()
                    if js:
                        dr, qr = grid(xi, fi, env, ci, s0[i], p0i, [rows[r]], [cols[j] for j in js])
                        d[r * Pc + torch.tensor(js, device=dev)] = dr
                        q[r * Pc + torch.tensor(js, device=dev)] = qr
            drops[lo:hi] = d
            if is_class:
                probs[lo:hi] = q
            done += P
            if progress:
                progress(done, total)
    return s0, p0, classes
