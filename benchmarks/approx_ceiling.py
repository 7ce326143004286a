"""How far can approximate occlusion go? SSIM ceilings of the drill-down, from exact maps.

Approximate occlusion's time is proportional to the share of window positions it runs
(the coarse grid plus ``fraction`` of the rest; ``bench_occlusion.py --approximate``
times it). This script asks the other half of the trade-off without timing anything:
for a given share of positions run, how close to the exact map can *any* choice of
positions get? It computes the exact maps once (window 16, stride 4, 53×53 positions,
the bundled photos; cached in ``--cache``), then, with no model, builds approximate maps
from them in several ways and prints mean / min SSIM against exact (cnnlens' own
``check`` computation):

* ``linear`` / ``cubic``: the coarse grid only (every 2nd position, 26 % of them),
  bilinear or Catmull-Rom interpolation;
* ``cnnlens f``: what ``approximate={"fraction": f}`` computes (its ranking of the
  other positions and its neighbour fill);
* ``oracle f``: the same share of extra positions, chosen knowing the exact map (the
  positions the fill gets most wrong) — a ceiling no ranking from the coarse grid can pass;
* ``gradient-guided``: interpolating the residual after the best linear fit of the coarse
  drops on a first-order estimate (the window sum of ∇score · (x − fill)), which would
  help if the fine-scale detail the grid misses were predictable from the gradient.

Run:  python benchmarks/approx_ceiling.py [--photos 6] [--cache /tmp/cnnlens-exact-maps.pt]

Measured 2026-12-02 (quiet machine; the exact maps take ≈ 4 minutes):

    model (6 photos)        linear  cubic   cnnlens 0.05 / 0.1 / 0.15   oracle 0.05 / 0.1 / 0.15   gradient-guided
    ResNet-18 (random)      0.918   0.922   0.929 / 0.940 / 0.951        0.944 / 0.953 / 0.961        0.895
    EfficientNet-Lite0      0.881   0.883   0.895 / 0.910 / 0.923        0.916 / 0.934 / 0.947        0.879

so on EfficientNet-Lite0 no choice of 5 % more positions reaches 0.92, and neither a smoother interpolant nor the
gradient recovers what the coarse grid misses: SSIM follows the share of positions run.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

WINDOW, STRIDE, SIZE = 16, 4, 224


def exact_maps(photos: int, cache: str) -> dict:
    if os.path.exists(cache):
        return torch.load(cache)
    import torchvision

    import cnnlens
    from cnnlens.attribution import occlusion
    from cnnlens.demo import DemoContext

    names, x = DemoContext().photos
    torch.manual_seed(0)
    models = {
        "ResNet-18 (random)": torchvision.models.resnet18().eval(),
        "EfficientNet-Lite0": cnnlens.load_model("efficientnet-lite0"),
    }
    out = {}
    for label, model in models.items():
        for i, name in enumerate(names[:photos]):
            xi = x[i : i + 1]
            with torch.no_grad():
                cls = model(xi).argmax(1)
            e = occlusion(model, xi, cls, window=WINDOW, stride=STRIDE)
            g = xi.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(g)[0, cls[0]], g)
            out[(label, name)] = {"raw": e.raw[0].double(), "grad_drop": (grad * (xi - 0.5)).sum(1)[0].double()}
            print(f"  exact map: {label}, {name}", flush=True)
    torch.save(out, cache + ".tmp")
    os.replace(cache + ".tmp", cache)
    return out


def _cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    return np.where(
        t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1, np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0)
    )


def interp_matrix(n: int, coarse: list[int], kind: str) -> torch.Tensor:
    """n × len(coarse) interpolation weights (linear, or Catmull-Rom with clamped ends)."""
    c = np.array(coarse)
    M = torch.zeros(n, len(c), dtype=torch.float64)
    for i in range(n):
        j = int(max(0, min(len(c) - 2, np.searchsorted(c, i, side="right") - 1)))
        t = (i - c[j]) / (c[j + 1] - c[j])
        taps = ((0, 1 - t), (1, t)) if kind == "linear" else ((k, float(_cubic(t - k))) for k in (-1, 0, 1, 2))
        for k, w in taps:
            M[i, min(max(j + k, 0), len(c) - 1)] += w
    return M


def main(argv=None) -> None:
    from cnnlens.attribution.occlusion import _coarse_index, _drill_order, _fill, _ssim, coverage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--cache", default="/tmp/cnnlens-exact-maps.pt")
    a = ap.parse_args(argv)
    maps = exact_maps(a.photos, a.cache)
    starts = list(range(0, SIZE - WINDOW + 1, STRIDE))
    P = len(starts)
    R = coverage(SIZE, starts, WINDOW).double()
    norm = R.sum(1).view(-1, 1) * R.sum(1).view(1, -1)

    def to_map(raw: torch.Tensor) -> torch.Tensor:  # the map occlusion draws from its positions' drops
        return ((R @ raw @ R.T) / norm).float()

    rc = _coarse_index(P, 2)
    on = torch.zeros(P, P, dtype=torch.bool)
    on[np.ix_(rc, rc)] = True
    res: dict = {}
    for (label, _), d in maps.items():
        raw, exact = d["raw"], to_map(d["raw"])

        def add(kind, est):
            res.setdefault(label, {}).setdefault(kind, []).append(_ssim(to_map(est.double()), exact))

        for kind in ("linear", "cubic"):
            M = interp_matrix(P, rc, kind)
            add(kind, torch.where(on, raw, M @ raw[rc][:, rc] @ M.T))
        base = _fill(torch.where(on, raw, 0), on, rc, rc, starts, starts).double()
        err = (base - raw).abs().flatten().masked_fill(on.flatten(), -1)
        oracle = err.argsort(descending=True)
        order = _drill_order(raw[rc][:, rc], rc, rc, P, P)
        for f in (0.05, 0.1, 0.15):
            for kind, rank in (("cnnlens", order), ("oracle", oracle)):
                known = on.clone()
                known.view(-1)[rank[: int(round(f * int((~on).sum())))]] = True
                add(f"{kind} {f}", _fill(torch.where(known, raw, 0), known, rc, rc, starts, starts))
        L = F.avg_pool2d(d["grad_drop"][None, None], WINDOW, stride=STRIDE)[0, 0] * WINDOW * WINDOW
        dc, lc = raw[rc][:, rc].flatten(), L[rc][:, rc].flatten()
        b = float(torch.linalg.lstsq(torch.stack([torch.ones_like(lc), lc], 1), dc[:, None]).solution[1])
        M = interp_matrix(P, rc, "linear")
        r = raw - b * L
        add("gradient-guided", torch.where(on, raw, M @ r[rc][:, rc] @ M.T + b * L))
    for label, kinds in res.items():
        n = len(next(iter(kinds.values())))
        print(f"{label}, {n} photos, window {WINDOW}, stride {STRIDE}: SSIM against exact, mean / min")
        for kind, v in kinds.items():
            print(f"  {kind:18s} {np.mean(v):.3f} / {np.min(v):.3f}")


if __name__ == "__main__":
    main()
