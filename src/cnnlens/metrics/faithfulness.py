"""Does the map say what the model uses? Faithfulness correlation (Bhatt et al.) and ROAD (Rong et al.).

Both perturb the input where the map says and watch the model: faithfulness
correlation removes random subsets and asks whether the map's mass on a subset
predicts the logit drop; ROAD removes the most (MoRF) or least (LeRF) relevant
pixels by noisy linear imputation — which hides what was there without the
sharp edges a constant fill leaves — and asks whether the prediction survives.
Deletion/insertion AUC (Petsiuk et al.) are :func:`cnnlens.attribution.deletion`
and :func:`~cnnlens.attribution.insertion`.

Random draws come from numpy's legacy ``RandomState(seed)`` in the order Quantus
0.6 draws them from the global numpy generator, so with ``np.random.seed(seed)``
before the Quantus call both give the same numbers (the tests check it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..autograd import needs_autograd
from ..batching import check_batch_size, chunks
from .common import class_scores, explained_classes, maps_of, pearson_rows, rng
from .result import MetricResult

# Late, for start-up (CONTRIBUTING.md, Imports): scipy, in noisy_linear_imputation.

Progress = Any

#: ROAD's default removal percentages (Quantus' default: 1, 3, …, 99)
ROAD_PERCENTAGES = tuple(range(1, 100, 2))


def _fill_values(x: torch.Tensor, baseline: Any) -> torch.Tensor:
    """Per-image fill (N) for a baseline name or number: "black" = the image's minimum (Quantus'
    definition, 0 for an image that reaches black), "white" its maximum, "mean" its mean."""
    flat = x.reshape(x.shape[0], -1)
    if isinstance(baseline, str):
        if baseline == "black":
            return flat.min(1).values
        if baseline == "white":
            return flat.max(1).values
        if baseline == "mean":
            return flat.mean(1)
        raise ValueError(f"baseline {baseline!r}: give 'black' (the image's minimum), 'white', 'mean' or a number")
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full((x.shape[0],), float(baseline), dtype=x.dtype, device=x.device)
    raise TypeError(f"baseline must be a name or a number, got {type(baseline).__name__}")


def _subsets(runs: int, n: int, features: int, size: int, seed: int, uniform_draw: bool) -> np.ndarray:
    """runs × n × size feature indices, each image's subset drawn without replacement, in Quantus' order of
    draws (with ``uniform_draw``, one uniform draw per run for its baseline table)."""
    rs = rng(seed)
    idx = np.empty((runs, n, size), dtype=np.int64)
    for r in range(runs):
        for i in range(n):
            idx[r, i] = rs.choice(features, size, replace=False)
        if uniform_draw:
            rs.uniform(size=n)  # Quantus builds its baseline table with a uniform draw each run
    return idx


@needs_autograd
def faithfulness_correlation(
    model: nn.Module,
    x: torch.Tensor,
    explanation: Any,
    target: Any = None,
    *,
    runs: int = 100,
    subset_size: int = 224,
    baseline: Any = "black",
    seed: int = 0,
    abs: bool = False,
    batch_size: int | None = None,
    y: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> MetricResult:
    """Faithfulness correlation (Bhatt, Weller & Moura 2020, "Evaluating and aggregating feature-based
    model explanations", IJCAI).

    For r = 1 … ``runs``: draw a random subset S_r of ``subset_size`` input features (of the C·H·W;
    the map is shared by the channels), set them to ``baseline``, and record
    Δ_r = f_c(x) − f_c(x_{S_r}) (logits) and A_r = Σ_{j ∈ S_r} a_j. The score is
    ρ = Pearson(A, Δ). Higher is better (1: the map's mass predicts the drop exactly). Equals
    Quantus' ``FaithfulnessCorrelation`` (same draws: see the module docs; its batch-wide
    normalisation does not change ρ; it draws per batch, so compare with a Quantus ``batch_size``
    ≥ N).

    >>> faithfulness_correlation(model, x, saliency(model, x), runs=50).mean      # doctest: +SKIP
    """
    x_c, classes = explained_classes(model, x, target, explanation, y, "faithfulness_correlation")
    n, C, H, W = x_c.shape
    a = maps_of(explanation, n)
    if tuple(a.shape[-2:]) != (H, W):
        raise ValueError(f"maps of size {tuple(a.shape[-2:])} for images of size {(H, W)}; give maps at input size")
    if abs:
        a = a.abs()
    F_ = C * H * W
    if not (isinstance(runs, int) and runs >= 2):
        raise ValueError(f"runs must be an int ≥ 2 (a correlation needs points), got {runs!r}")
    if not (isinstance(subset_size, int) and 1 <= subset_size < F_):
        raise ValueError(f"subset_size must be an int in [1, {F_}) (the C·H·W input features), got {subset_size!r}")
    idx_t = torch.from_numpy(_subsets(runs, n, F_, subset_size, seed, isinstance(baseline, str))).to(x_c.device)
    a_full = a.to(x_c.device).unsqueeze(1).expand(n, C, H, W).reshape(n, -1)
    fill = _fill_values(x_c, baseline)
    base_scores = class_scores(model, x_c, classes, batch_size)
    total = runs * n
    bs = check_batch_size(batch_size, x_c)
    pert = torch.empty(total, device=x_c.device)
    flat = x_c.reshape(n, -1)
    for s0, s1 in chunks(total, bs):
        k = torch.arange(s0, s1, device=x_c.device)
        run, row = k // n, k % n
        xb = flat[row].clone()
        xb.scatter_(1, idx_t[run, row], fill[row].view(-1, 1).expand(-1, subset_size).to(xb.dtype))
        pert[s0:s1] = class_scores(model, xb.view(-1, C, H, W), classes[row], bs)
        if progress:
            progress(s1, total)
    deltas = (base_scores.view(1, n) - pert.view(runs, n)).T  # n × runs, float32 as Quantus
    sums = torch.stack([a_full.double().gather(1, idx_t[r]).sum(1) for r in range(runs)], 1)
    rho = pearson_rows(sums.cpu(), deltas.cpu())
    return MetricResult(
        "faithfulness_correlation",
        rho,
        True,
        classes.cpu(),
        getattr(explanation, "method", None),
        settings={
            "runs": runs,
            "subset_size": subset_size,
            "baseline": baseline,
            "seed": seed,
            "abs": abs,
            "score": "logit",
            "paper": "Bhatt et al. 2020",
        },
    )


# -- ROAD ------------------------------------------------------------------------------------------

_OFFSETS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def noisy_linear_imputation(
    image: np.ndarray, removed: np.ndarray, noise: float, rs: np.random.RandomState | None
) -> np.ndarray:
    """ROAD's imputation (Rong et al. 2022): each removed pixel becomes the weighted mean of its 8
    neighbours (1/6 for the 4 direct, 1/12 for the diagonal ones; neighbours outside the image
    dropped), removed neighbours solved for jointly — one sparse linear system per image — plus
    ``noise``·N(0, 1). ``image`` is C×H×W float, ``removed`` flat pixel indices (of H×W).
    """
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    C, H, W = image.shape
    flat = image.reshape(C, -1)
    out = flat.copy()
    k = len(removed)
    if k == 0:
        return out.reshape(C, H, W)
    known = np.ones(H * W, dtype=bool)
    known[removed] = False
    var = np.zeros(H * W, dtype=np.int64)
    var[removed] = np.arange(k)
    row, col = removed // W, removed % W
    rows, cols, vals = [np.arange(k)], [np.arange(k)], []
    b = np.zeros((k, C))
    diag = np.ones(k)
    ids = np.arange(k)
    for (dr, dc), w in _OFFSETS:
        rr, cc = row + dr, col + dc
        valid = (rr >= 0) & (cc >= 0) & (rr < H) & (cc < W)
        nb = (rr * W + cc)[valid]
        vid = ids[valid]
        kn = known[nb]
        b[vid[kn], :] -= w * flat[:, nb[kn]].T
        rows.append(vid[~kn])
        cols.append(var[nb[~kn]])
        vals.append(np.full(int((~kn).sum()), w))
        diag[~valid] -= w
    vals.insert(0, -diag)
    A = csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(k, k))
    res = np.transpose(spsolve(A, b))  # (k,) for one channel, C×k otherwise
    if noise and rs is not None:
        res = res + noise * rs.randn(*res.shape)
    elif noise:
        raise ValueError("noisy_linear_imputation needs a RandomState when noise > 0")
    out[:, removed] = res
    return out.reshape(C, H, W)


@needs_autograd
def road(
    model: nn.Module,
    x: torch.Tensor,
    explanation: Any,
    target: Any = None,
    *,
    order: str = "morf",
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int | None = None,
    y: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> MetricResult:
    """ROAD, RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci 2022, "A consistent and
    efficient evaluation strategy for attribution methods", ICML).

    For each p in ``percentages``, the k = ⌊H·W·p/100⌋ most (``order="morf"``) or least
    (``"lerf"``) relevant pixels are replaced by :func:`noisy_linear_imputation`, and
    hit_p = [argmax f(x̃_p) = c]. The per-map score is the mean of hit_p over the percentages (the
    normalised area under the accuracy curve): **lower is better for MoRF** (the prediction falls
    when the relevant pixels go), **higher for LeRF**. ``extras["curve"]`` is the accuracy per
    percentage over the maps — what Quantus' ``ROAD`` returns (MoRF only; LeRF is Quantus on the
    negated map). Quantus quirks not copied: it keeps only its first batch's scores; it orders the
    C·H·W values of a map broadcast over channels (for C > 1 this removes the wrong count and its
    imputation indexes out of range), cnnlens orders pixels and imputes all channels; ties are
    ranked by pixel index here, by numpy's unstable sort there.

    >>> road(model, x, gradcam(model, x), order="morf", percentages=range(10, 100, 10)).mean   # doctest: +SKIP
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}")
    pcts = [float(p) for p in percentages]
    if not pcts or any(not 0 <= p <= 100 for p in pcts):
        raise ValueError(f"percentages must be a non-empty list of values in [0, 100], got {list(percentages)!r}")
    if noise < 0:
        raise ValueError(f"noise must be ≥ 0, got {noise}")
    x_c, classes = explained_classes(model, x, target, explanation, y, "road")
    n, C, H, W = x_c.shape
    a = maps_of(explanation, n)
    if tuple(a.shape[-2:]) != (H, W):
        raise ValueError(f"maps of size {tuple(a.shape[-2:])} for images of size {(H, W)}; give maps at input size")
    flat = a.reshape(n, -1)
    ranking = torch.argsort(-flat if order == "morf" else flat, dim=1, stable=True).numpy()
    rs = rng(seed)
    xs = x_c.detach().cpu().double().numpy() if x_c.dtype == torch.float64 else x_c.detach().cpu().float().numpy()
    imputed = np.empty((len(pcts), n, C, H, W), dtype=xs.dtype)
    for j, p in enumerate(pcts):
        k = int(H * W * p / 100)
        for i in range(n):
            imputed[j, i] = noisy_linear_imputation(xs[i], ranking[i, :k], noise, rs)
        if progress:
            progress(j + 1, len(pcts) + 1)
    xt = torch.from_numpy(imputed.reshape(-1, C, H, W)).to(device=x_c.device, dtype=x_c.dtype)
    pred = class_scores(model, xt, classes.repeat(len(pcts)), batch_size, kind="argmax").view(len(pcts), n)
    hits = (pred == classes.view(1, n)).T.cpu()  # n × P
    if progress:
        progress(len(pcts) + 1, len(pcts) + 1)
    return MetricResult(
        f"road_{order}",
        hits.double().mean(1),
        order == "lerf",
        classes.cpu(),
        getattr(explanation, "method", None),
        settings={"order": order, "percentages": pcts, "noise": noise, "seed": seed, "paper": "Rong et al. 2022"},
        extras={"hits": hits, "curve": hits.double().mean(0)},
    )
