"""Measure concentration: why adversarial examples exist in high dimension.

In a d-dimensional unit ball, the share of the volume within ε of the boundary is

    P(||x|| > 1 − ε) = 1 − (1 − ε)^d  →  1  as d → ∞,

so in high dimension almost every point is near the boundary. Images live in
spaces of d = 10³ (digits) to 10⁵ (ImageNet) pixels: a perturbation invisible
per pixel moves far in total, and a data point is never far from a decision
boundary. :func:`monte_carlo_shell_fraction` checks the formula by sampling the
ball uniformly (direction = normal / norm, radius = U^(1/d)); the demo puts it
beside the measured minimal ε of two models of very different input dimension.

>>> shell_fraction(1000, 0.01)
0.9999568...
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_DIMS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
DEFAULT_EPS = (0.01, 0.05, 0.1)


def shell_fraction(d: int | float, eps: float) -> float:
    """Share of a d-ball's volume within ε of its boundary: 1 − (1 − ε)^d (ε ∈ [0, 1]).

    >>> round(shell_fraction(2, 0.5), 4)       # the outer ring of a disc of radius 1 − 0.5
    0.75
    """
    if not (0 <= eps <= 1):
        raise ValueError(f"eps must be in [0, 1] (a distance in a unit ball), got {eps}")
    if d < 1:
        raise ValueError(f"the dimension d must be ≥ 1, got {d}")
    return -math.expm1(d * math.log1p(-eps)) if eps < 1 else 1.0


def sample_ball(n: int, d: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """n points uniform in the d-dimensional unit ball: (g/||g||)·U^(1/d), g ~ N(0, I), U ~ U(0, 1).

    The normal's direction is uniform on the sphere; P(radius ≤ r) = r^d is the
    volume share of the ball of radius r, hence the U^(1/d).
    """
    if n < 1 or d < 1:
        raise ValueError(f"need n ≥ 1 points in d ≥ 1 dimensions, got n={n}, d={d}")
    g = torch.randn(n, d, generator=generator, dtype=dtype)
    u = torch.rand(n, 1, generator=generator, dtype=dtype)
    return g / g.norm(dim=1, keepdim=True) * u.pow(1.0 / d)


def monte_carlo_shell_fraction(
    d: int, eps: float, n: int = 4000, seed: int = 0, chunk: int = 2_000_000
) -> tuple[float, float]:
    """(estimate, standard error) of P(||x|| > 1 − ε) for x uniform in the d-ball, from n samples.

    stderr = sqrt(p(1 − p)/n); the estimate should match :func:`shell_fraction`
    within a few standard errors.
    """
    if not (0 <= eps <= 1):
        raise ValueError(f"eps must be in [0, 1], got {eps}")
    gen = torch.Generator().manual_seed(int(seed))
    per = max(1, chunk // max(d, 1))
    hits, done = 0, 0
    while done < n:
        m = min(per, n - done)
        x = sample_ball(m, d, gen)
        hits += int((x.norm(dim=1) > 1 - eps).sum())
        done += m
    p = hits / n
    return p, math.sqrt(max(p * (1 - p), 0.0) / n)


def concentration_table(
    dims: Sequence[int] = DEFAULT_DIMS, eps: Sequence[float] = DEFAULT_EPS, n: int = 4000, seed: int = 0
) -> dict:
    """Formula and Monte Carlo estimate (with standard error) for each ε and d: ``{eps: {d, formula, mc, stderr}}``."""
    out = {}
    for j, e in enumerate(eps):
        rows: dict[str, list[Any]] = {"d": list(dims), "formula": [], "mc": [], "stderr": []}
        for i, d in enumerate(dims):
            p, se = monte_carlo_shell_fraction(int(d), float(e), n=n, seed=seed + 1000 * j + i)
            rows["formula"].append(shell_fraction(d, e))
            rows["mc"].append(p)
            rows["stderr"].append(se)
        out[float(e)] = rows
    return out
