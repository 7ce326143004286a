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

Three paths compute the passes (``settings["path"]`` says which ran):

* **full** re-inference runs the whole model per position. ``batch_size`` (images per
  forward) is automatic by default: on a CPU, :class:`cnnlens.batching.Tuner` measures,
  while the work runs, which batch size (the automatic one or 4× it) and thread count
  (the process's or one) is fastest per image, and keeps following the machine's load
  (an explicit ``batch_size`` fixes the size; the thread count is still measured). The
  map never depends on these choices.
* **incremental** (Krypton, Nakandala et al. 2019; :mod:`cnnlens.attribution.incremental`)
  recomputes, per position, only the part of each layer that the patch can reach — the
  same values as full re-inference up to float rounding.
* **approximate** (Krypton §4) trades exactness for speed by adaptive drill-down: every
  ``coarse``-th window position along each axis (and the last) runs first; then the share
  ``fraction`` of the other positions, those inside a coarse cell first, each group ranked
  by how much the coarse drops at the cell's corners differ (:func:`_drill_order`); the
  rest are estimated from the computed positions around them (weighted mean of the 8
  neighbours, beside 1, diagonal ½: :func:`_fill`). ``tau`` < 1 caps every recomputed box
  at ⌈τ · size⌉ of its layer, centred on the patch, and reads clean values outside the
  cap. With ``fraction=1`` and ``tau=1`` the map is exact. How close the defaults come to
  the exact map, and at what speed, is measured in ``benchmarks/bench_occlusion.py``
  (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..autograd import needs_autograd
from ..batching import Arm, Tuner, arms, check_batch_size, chunks, workload
from ..extras import require
from ..results import Explanation
from ..tap import LayerTap
from ..targets import TargetError
from .common import (
    Layout,
    Progress,
    describe_fill,
    finish,
    logits_of,
    pick_classes,
    pixel_fill,
    prepare,
    score,
    target_layers,
)
from .incremental import IncrementalOcclusion, Unsupported, input_box, log_fallback

log = logging.getLogger("cnnlens.attribution")

#: approximate mode (Krypton §4): box cap τ (share of each layer's size; 1 = no cap), coarse grid = every
#: ``coarse``-th window position, ``fraction`` of the other positions recomputed (see :func:`occlusion`)
APPROXIMATE = {"tau": 1.0, "coarse": 2, "fraction": 0.2}


def _approx_settings(approximate: Any) -> dict | None:
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
    if not (0 < float(a["tau"]) <= 1) or not (0 <= float(a["fraction"]) <= 1) or int(a["coarse"]) < 1:
        raise ValueError(f"approximate needs 0 < tau ≤ 1, 0 ≤ fraction ≤ 1 and coarse ≥ 1, got {a}")
    return {"tau": float(a["tau"]), "coarse": int(a["coarse"]), "fraction": float(a["fraction"])}


def _coarse_index(n: int, every: int) -> list[int]:
    """Every ``every``-th of n window positions along one axis, and the last.

    >>> _coarse_index(7, 2), _coarse_index(6, 2), _coarse_index(1, 3)
    ([0, 2, 4, 6], [0, 2, 4, 5], [0])
    """
    idx = list(range(0, n, every))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    return idx


def _around(n: int, coarse: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of n fine indices, the coarse indices of the nearest coarse lines at or before it and at or after
    it (the same one for a fine index on a coarse line)."""
    c, i = torch.tensor(coarse), torch.arange(n)
    return torch.searchsorted(c, i, right=True) - 1, torch.searchsorted(c, i, right=False)


def _drill_order(dc: torch.Tensor, rc: list[int], cc: list[int], Pr: int, Pc: int) -> torch.Tensor:
    """The fine positions off the coarse grid (flat indices into Pr × Pc), most worth recomputing first: those
    inside a coarse cell (off every coarse row and column: farthest from what is known) before those on a cell's
    edge, and within each group by the spread (max − min) of the coarse drops around them (a cell's four corners,
    an edge's two ends) — where the map changes most, interpolation errs most; ties in position order."""
    r0, r1 = _around(Pr, rc)
    c0, c1 = _around(Pc, cc)
    d = dc.cpu().double()
    corners = torch.stack([d[r0][:, c0], d[r0][:, c1], d[r1][:, c0], d[r1][:, c1]])
    spread = corners.amax(0) - corners.amin(0)
    on_r, on_c = r0 == r1, c0 == c1
    coarse = on_r.view(-1, 1) & on_c.view(1, -1)
    inside = ~on_r.view(-1, 1) & ~on_c.view(1, -1)
    key = spread / (float(spread.max()) + 1) + inside.double()  # inside first, then by spread
    order = key.flatten().argsort(descending=True, stable=True)
    return order[~coarse.flatten()[order]]


def _fill(
    v: torch.Tensor, known: torch.Tensor, rc: list[int], cc: list[int], rows: list[int], cols: list[int]
) -> torch.Tensor:
    """Pr × Pc values with the unknown ones estimated: the weighted mean of the known values among the 8
    neighbouring positions (weight 1 for the 4 beside, ½ for the 4 diagonal), or, with none known nearby,
    bilinear interpolation between the coarse grid's positions."""
    v = v.double()
    est = _interp(rows, [rows[i] for i in rc]).double() @ v[rc][:, cc] @ _interp(cols, [cols[j] for j in cc]).double().T
    k = known.double()
    ker = torch.tensor([[0.5, 1, 0.5], [1, 0, 1], [0.5, 1, 0.5]], dtype=torch.float64).view(1, 1, 3, 3)
    num = F.conv2d((v * k)[None, None], ker, padding=1)[0, 0]
    den = F.conv2d(k[None, None], ker, padding=1)[0, 0]
    est = torch.where(den > 0, num / den.clamp(min=1e-12), est)
    return torch.where(known, v, est).float()


def _ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of map ``a`` against the exact map ``b``: scikit-image's ``structural_similarity`` with its defaults
    (7×7 uniform window, K1 = 0.01, K2 = 0.03; a smaller odd window on maps under 7 pixels) and ``data_range`` the
    exact map's max − min (the maps are logit drops in no fixed range; 1 if the exact map is constant)."""
    structural_similarity = require(
        "data", "skimage.metrics", what="occlusion's check=True (SSIM)"
    ).structural_similarity

    an, bn = a.double().cpu().numpy(), b.double().cpu().numpy()
    rng = float(bn.max() - bn.min()) or 1.0
    win = min(7, *an.shape)
    win -= 1 - win % 2
    if win < 3:
        raise ValueError(f"check=True needs maps of at least 3×3 pixels for SSIM, got {tuple(an.shape)}")
    return float(structural_similarity(an, bn, data_range=rng, win_size=win))


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
def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    window: Any = None,
    stride: Any = None,
    fill: Any = "grey",
    batch_size: int | None = None,
    blur_sigma: float | None = None,
    y: torch.Tensor | None = None,
    progress: Progress | None = None,
    channels_last: bool | None = None,
    incremental: bool | None = None,
    approximate: Any = False,
    check: bool = False,
) -> Explanation:
    """Occlusion sensitivity: the drop of the target's logit when a patch hides each region.

    For window positions p (the patch covers every channel, filled with ``fill``):
    raw[p] = S(x) − S(x ⊙ (1 − m_p) + fill ⊙ m_p); maps(i, j) = mean of raw[p] over
    the windows with m_p(i, j) = 1. ``fill``: "grey" (0.5, default), "black", "blur"
    (a Gaussian-blurred copy of the image), a number or a tensor, in pixel units.
    ``window`` defaults to min(H, W)/8, ``stride`` to window/2.
    ``extras["probability"]`` is the target's softmax probability at each position
    (class targets), ``extras["rows"]``/``["cols"]`` the window offsets.

    ``incremental`` (default: whenever the model allows it) takes the incremental path (see
    the module's docstring); ``batch_size`` then counts window positions per batch, else
    images per forward (automatic by default). A model that does not trace with torch.fx,
    an incremental run that fails for any reason, or a channel/neuron target runs the whole
    model per position (logged once); ``settings["path"]`` says which ran ("incremental",
    "approximate" or "full") and ``settings["full_reason"]`` why the whole model ran.

    ``approximate=True`` (or a dict overriding ``tau``, ``coarse`` and ``fraction``;
    defaults in :data:`APPROXIMATE`) takes the approximate path. ``settings["approximate"]``
    records τ, coarse, fraction, the coarse grid's size and ``computed`` (the share of
    positions run); ``check=True`` also computes the exact map and stores the SSIM of each
    approximate map against it in ``extras["ssim"]`` (:func:`_ssim`).

    >>> e = occlusion(model, x, window=32, stride=16)          # doctest: +SKIP
    >>> e.raw.shape, e.extras["probability"].shape             # N×P_h×P_w both
    """
    batch_size_given = batch_size is not None
    batch_size = check_batch_size(batch_size, x)
    p = prepare(model, x, target, y, "occlusion")
    (wh, ww), (sh, sw), rows, cols = _windows(p.size, window, stride)
    filled = pixel_fill(fill, p.x, blur_sigma, "fill")
    approx = _approx_settings(approximate)
    if approx is not None and incremental is False:
        raise ValueError("approximate=True needs the incremental path; drop incremental=False")
    drops, probs, s0, p0, classes, path, why = _run_positions(
        model, p, filled, rows, cols, wh, ww, batch_size, batch_size_given, progress, channels_last, incremental, approx
    )
    raw = drops.view(p.n, len(rows), len(cols))
    maps = _window_mean(raw, p.size, rows, cols, wh, ww)
    extras = {"rows": torch.tensor(rows), "cols": torch.tensor(cols), "score": s0}
    if p.target.is_class:
        extras["probability"] = probs.view(p.n, len(rows), len(cols))
        extras["clean_probability"] = p0
    settings = {
        "window": (wh, ww),
        "stride": (sh, sw),
        "fill": describe_fill(fill),
        "positions": (len(rows), len(cols)),
        "path": path,
    }
    if why is not None:
        settings["full_reason"] = why
    if approx is not None:
        settings["approximate"] = _approx_record(approx, rows, cols)
        if check:
            again = dict(window=window, stride=stride, fill=fill, blur_sigma=blur_sigma, y=y, incremental=True)
            exact = occlusion(model, x, target, batch_size=batch_size if batch_size_given else None, **again)
            extras["ssim"] = torch.tensor([_ssim(a, b) for a, b in zip(maps.cpu(), exact.maps, strict=True)])
    if isinstance(fill, str) and fill == "blur":
        settings["blur_sigma"] = blur_sigma
    return finish(p, maps, "occlusion", classes, settings=settings, raw=raw, extras=extras)


def _windows(size: tuple[int, int], window: Any, stride: Any):
    """The window (h, w) and stride (h, w) with their defaults, checked, and the rows' and columns' offsets."""
    H, W = size
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
    return (wh, ww), (sh, sw), window_starts(H, wh, sh), window_starts(W, ww, sw)


def _run_positions(
    model, p, filled, rows, cols, wh, ww, batch_size, batch_size_given, progress, channels_last, incremental, approx
):
    """Every window position's drop (and probability, class targets) by the incremental path where it can run
    (and is wanted), else by full re-inference: (drops, probs, s0, p0, classes, path, why the whole model ran)."""
    per_sample_fill = filled.shape[0] == p.n and p.n > 1
    is_class = p.target.is_class
    P = len(rows) * len(cols)
    drops = torch.empty(p.n * P, device=p.x.device, dtype=torch.float32)
    probs = torch.empty(p.n * P, device=p.x.device, dtype=torch.float32) if is_class else None
    grid = (filled, per_sample_fill, rows, cols, wh, ww, drops, probs)
    path, why = "full", None
    if incremental is not False:
        why = None if is_class else "a channel or neuron target is read inside the model"
        if why is None:
            try:
                s0, p0, classes = _incremental(model, p, *grid, batch_size_given, batch_size, progress, approx=approx)
                path = "incremental" if approx is None else "approximate"
            except Unsupported as e:
                why = str(e)
            except TargetError:
                raise  # the caller's target: the whole model would refuse it too (after one more forward)
            except Exception as e:  # noqa: BLE001 - any failure of the incremental run: the whole model instead
                first = str(e).splitlines()[0] if str(e) else ""
                why = f"the incremental run failed ({type(e).__name__}: {first[:200]})"
        if why is not None:
            if incremental or approx is not None:
                raise ValueError(
                    f"incremental occlusion is not possible here: {why}; use incremental=None or False"
                    + (" and approximate=False" if approx is not None else "")
                )
            log_fallback(why)
    if path == "full":
        s0, p0, classes = _full_reinference(
            model, p, *grid, batch_size, progress, channels_last, calibrate=not batch_size_given
        )
    return drops, probs, s0, p0, classes, path, why


def _window_mean(raw: torch.Tensor, size: tuple[int, int], rows, cols, wh: int, ww: int) -> torch.Tensor:
    """N × H × W: each pixel's mean of ``raw`` (N × P_h × P_w) over the windows that cover it."""
    H, W = size
    R = coverage(H, rows, wh, raw.device)  # H × Ph
    C = coverage(W, cols, ww, raw.device)  # W × Pw
    summed = torch.einsum("hp,npq,wq->nhw", R, raw, C)
    count = R.sum(1).view(H, 1) * C.sum(1).view(1, W)
    return summed / count


def _approx_record(approx: dict, rows: list[int], cols: list[int]) -> dict:
    """``settings["approximate"]``: τ, coarse, fraction, the coarse grid's size and the share of positions run."""
    record = {k: approx[k] for k in ("tau", "coarse", "fraction")}
    record["coarse_positions"] = (
        len(_coarse_index(len(rows), approx["coarse"])),
        len(_coarse_index(len(cols), approx["coarse"])),
    )
    record["computed"] = approx["computed"]  # share of the window positions run
    return record


def _full_reinference(
    model,
    p,
    filled,
    per_sample_fill,
    rows,
    cols,
    wh,
    ww,
    drops,
    probs,
    batch_size,
    progress,
    channels_last,
    calibrate=False,
):
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


def _incremental(
    model,
    p,
    filled,
    per_sample_fill,
    rows,
    cols,
    wh,
    ww,
    drops,
    probs,
    batch_size_given,
    batch_size,
    progress,
    stats=None,
    approx: dict | None = None,
):
    """Every window position through only the part of each layer that the patch reaches (see incremental.py).

    With ``approx`` (Krypton §4): boxes capped at τ of each layer, and adaptive drill-down — the positions of a
    coarse grid first, then the ``fraction`` of the other positions ranked first by :func:`_drill_order`, the
    rest estimated from their neighbours (:func:`_fill`)."""
    P = len(rows) * len(cols)
    dev = p.x.device
    is_class = p.target.is_class
    total = p.n * P
    with LayerTap(model, []) as tap, torch.no_grad():
        out = logits_of(tap.run(p.x))
        classes = pick_classes(p, out, p.n)
        inc = IncrementalOcclusion(model, tau=None if approx is None or approx["tau"] >= 1 else approx["tau"])
        run = _IncrementalRun(
            model, p, inc, rows, cols, wh, ww, batch_size if batch_size_given else POSITIONS_PER_BATCH
        )
        s0 = torch.empty(p.n, device=dev)
        p0 = torch.empty(p.n, device=dev) if is_class else None
        done = computed = 0
        for i in range(p.n):
            xi = p.x[i : i + 1]
            env = inc.clean(xi)
            o = env[inc.nodes[-1]]
            if (
                not torch.is_tensor(o)
                or o.shape != out[i : i + 1].shape
                or not torch.allclose(o, out[i : i + 1], rtol=1e-4, atol=1e-4 * float(out[i].abs().max()) + 1e-6)
            ):
                raise Unsupported("the traced model's output differs from the model's")
            ci = classes[i : i + 1]
            s0[i] = p.target.score(o, ci).float()[0]
            if p0 is not None:  # is_class
                p0[i] = o.float().softmax(1)[0, ci[0]]
            fi = filled[i : i + 1] if per_sample_fill else filled
            img = _Clean(xi, fi, env, ci, s0[i], p0[i] if p0 is not None else s0[i], stats)
            if approx is None:
                d, q = run.grid(img, rows, cols)
                computed += P
            else:
                d, q, known = run.drill_down(img, approx)
                computed += known
            drops[i * P : (i + 1) * P] = d
            if is_class:
                probs[i * P : (i + 1) * P] = q
            done += P
            if progress:
                progress(done, total)
        if approx is not None:
            approx["computed"] = computed / total
    return s0, p0, classes


class _Clean(NamedTuple):
    """One image on the incremental path: itself, its fill, its clean run (``env``), class, score, probability."""

    x: torch.Tensor
    fill: torch.Tensor
    env: Any
    cls: torch.Tensor
    s0: torch.Tensor
    p0: torch.Tensor
    stats: Any


class _IncrementalRun:
    """The incremental path's chunks of window positions: through the traced model ``inc``, ``per`` positions
    at a time, each chunk shape on the thread count measured fastest for it."""

    def __init__(self, model, p, inc: IncrementalOcclusion, rows, cols, wh: int, ww: int, per: int):
        self.model, self.p, self.inc, self.per = model, p, inc, per
        self.rows, self.cols, self.wh, self.ww = rows, cols, wh, ww
        self.dev = p.x.device
        self.rows_all, self.cols_all = torch.tensor(rows, device=self.dev), torch.tensor(cols, device=self.dev)
        self.tuners: dict = {}

    def tuned(self, what: str, step: int, n: int):
        """Run one chunk of ``n`` positions on the thread count measured fastest for chunks of ``step`` positions
        (on a CPU with several torch threads: the process's count or one — on cores busy with other work, two
        threads crawl; :class:`cnnlens.batching.Tuner`); the values do not depend on it."""
        if (what, step) not in self.tuners:
            threads = [0, 1] if self.dev.type == "cpu" and torch.get_num_threads() > 1 else [0]
            self.tuners[what, step] = Tuner(
                workload(f"occlusion-incremental-{what}-{step}", self.model, self.p.x),
                tuple(Arm(step, False, t) for t in threads),
            )
        t = self.tuners[what, step]
        return t.timed(t.next(n if n < step else step), n)

    def drops_of(self, box, same, img: _Clean):
        """The chunk's drops and probabilities: every position of ``box`` through the incremental model (a
        position that changes no pixel changes nothing, exactly)."""
        ob = logits_of(self.inc.run(img.env, box, img.stats))
        cb = img.cls.expand(ob.shape[0])
        sb = self.p.target.score(ob, cb).float()
        d = torch.where(same, torch.zeros_like(sb), img.s0 - sb)
        if not self.p.target.is_class:
            return d, d
        pb = ob.float().softmax(1).gather(1, cb.view(-1, 1)).squeeze(1)
        return d, torch.where(same, img.p0.expand_as(pb), pb)

    def at(self, img: _Clean, idx: torch.Tensor):
        """drops and probabilities at the flat grid positions ``idx``."""
        d = torch.empty(len(idx), device=self.dev)
        q = torch.empty(len(idx), device=self.dev)
        nc = len(self.cols)
        for a, b in chunks(len(idx), self.per):
            with self.tuned("pairs", self.per, b - a):
                r, c = self.rows_all[idx[a:b] // nc], self.cols_all[idx[a:b] % nc]
                box, same = input_box(img.x, img.fill, r, c, self.wh, self.ww, pairs=True)
                d[a:b], q[a:b] = self.drops_of(box, same, img)
        return d, q

    def grid(self, img: _Clean, rr: list[int], cc: list[int]):
        """drops and probabilities (len(rr)·len(cc)) for the grid rr × cc of window offsets."""
        rows_t = torch.tensor(rr, device=self.dev)
        cols_t = torch.tensor(cc, device=self.dev)
        d = torch.empty(len(rr) * len(cc), device=self.dev)
        q = torch.empty(len(rr) * len(cc), device=self.dev)
        step = max(1, self.per // len(cc))
        for a, b in chunks(len(rr), step):
            with self.tuned(f"grid{len(cc)}", step * len(cc), (b - a) * len(cc)):
                box, same = input_box(img.x, img.fill, rows_t[a:b], cols_t, self.wh, self.ww)
                lo, hi = a * len(cc), b * len(cc)
                d[lo:hi], q[lo:hi] = self.drops_of(box, same, img)
        return d, q

    def drill_down(self, img: _Clean, approx: dict):
        """Approximate drops and probabilities (flat, rows × cols): the coarse grid, then the ``fraction`` of the
        other positions ranked first by :func:`_drill_order`, the rest estimated by :func:`_fill`; and how many
        positions ran."""
        rows, cols, dev = self.rows, self.cols, self.dev
        rc, cc = _coarse_index(len(rows), approx["coarse"]), _coarse_index(len(cols), approx["coarse"])
        dc, qc = self.grid(img, [rows[r] for r in rc], [cols[c] for c in cc])
        on = (torch.tensor(rc).view(-1, 1), torch.tensor(cc).view(1, -1))  # the coarse grid in rows × cols
        known = torch.zeros(len(rows), len(cols), dtype=torch.bool)
        known[on] = True
        d = torch.zeros(len(rows), len(cols), device=dev)
        q = torch.zeros(len(rows), len(cols), device=dev)
        d[on], q[on] = dc.view(len(rc), len(cc)), qc.view(len(rc), len(cc))
        order = _drill_order(dc.view(len(rc), len(cc)), rc, cc, len(rows), len(cols))
        pick = order[: round(approx["fraction"] * len(order))].to(dev)
        if len(pick):
            dp, qp = self.at(img, pick)
            d.view(-1)[pick] = dp
            q.view(-1)[pick] = qp
            known.view(-1)[pick.cpu()] = True
        d = _fill(d.cpu(), known, rc, cc, rows, cols).to(dev).flatten()
        q = _fill(q.cpu(), known, rc, cc, rows, cols).to(dev).flatten()
        return d, q, int(known.sum())
