"""Is the map stable? Max-sensitivity (Yeh et al.): how much it moves under small input noise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..autograd import needs_autograd
from .common import explained_classes, maps_of, resolve_method, rng
from .result import MetricResult

Progress = Any


@needs_autograd
def max_sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    method: Callable | str,
    target: Any = "predicted",
    *,
    explanation: Any = None,
    radius: float = 0.2,
    samples: int = 200,
    seed: int = 0,
    y: torch.Tensor | None = None,
    progress: Progress | None = None,
    **settings,
) -> MetricResult:
    """Max-sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, "On the (in)fidelity and
    sensitivity of explanations", NeurIPS), Monte-Carlo estimate:

    SENS_max = max_{j ≤ samples} ‖Φ(x + δ_j) − Φ(x)‖_F / ‖Φ(x)‖_F,  δ_j ~ U(−r, r)^{C×H×W},

    Φ the map of ``method`` (run with ``settings``) for the same class c. Lower is better. The
    noisy input is not clipped to [0, 1] (as Quantus' ``MaxSensitivity``, whose ``lower_bound`` is
    ``radius``; it equals Quantus at its defaults with the same draws). ``explanation``: the map
    of x if already computed (else computed here). Costs ``samples`` runs of the method.

    >>> max_sensitivity(model, x, "gradcam", samples=10).mean                # doctest: +SKIP
    """
    name, fn = resolve_method(method)
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0 (the half-width of the uniform noise, in pixel units), got {radius}")
    x_c, classes = explained_classes(
        model, x, target if explanation is None else None, explanation, y, "max_sensitivity"
    )
    n = x_c.shape[0]
    a = maps_of(explanation if explanation is not None else fn(model, x_c, target=classes, **settings), n)
    a = a.reshape(n, -1)
    denom = a.norm(dim=1)
    rs = rng(seed)
    sens = torch.empty(n, samples, dtype=torch.float64)
    for j in range(samples):
        noise = torch.from_numpy(rs.uniform(low=-radius, high=radius, size=(n, x_c[0].numel())))
        xp = (x_c.detach().cpu().double().reshape(n, -1) + noise).to(x_c.dtype).view_as(x_c).to(x_c.device)
        ap = maps_of(fn(model, xp, target=classes, **settings), n).reshape(n, -1)
        sens[:, j] = ((a - ap).norm(dim=1) / denom).double()
        if progress:
            progress(j + 1, samples)
    finite = torch.where(torch.isnan(sens), torch.full_like(sens, float("-inf")), sens)
    score = finite.max(1).values
    score[torch.isneginf(score)] = float("nan")
    return MetricResult(
        "max_sensitivity",
        score,
        False,
        classes.cpu(),
        name,
        settings={
            "radius": radius,
            "samples": samples,
            "seed": seed,
            "norm": "Frobenius",
            "paper": "Yeh et al. 2019",
            **settings,
        },
    )
