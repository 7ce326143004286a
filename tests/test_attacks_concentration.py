"""Measure concentration: the formula 1 − (1 − ε)^d against Monte Carlo sampling of the ball."""

from __future__ import annotations

import math

import pytest
import torch

from cnnlens.attacks.concentration import concentration_table, monte_carlo_shell_fraction, sample_ball, shell_fraction
from cnnlens.figures.attacks import concentration_figure


def test_shell_fraction_closed_form():
    assert shell_fraction(1, 0.3) == pytest.approx(0.3)
    assert shell_fraction(2, 0.5) == pytest.approx(0.75)  # ring area π(1 − 0.25)/π
    assert shell_fraction(3, 0.1) == pytest.approx(1 - 0.9**3)
    assert shell_fraction(10, 0.0) == 0.0 and shell_fraction(10, 1.0) == 1.0
    # → 1 as d grows, for any ε > 0
    vals = [shell_fraction(d, 0.01) for d in (1, 10, 100, 1000, 10000)]
    assert vals == sorted(vals) and vals[-1] > 0.9999
    with pytest.raises(ValueError, match="eps"):
        shell_fraction(5, 1.5)


@pytest.mark.parametrize("d", [1, 2, 5, 50, 1000])
@pytest.mark.parametrize("eps", [0.01, 0.1, 0.3])
def test_monte_carlo_agrees_with_the_formula_within_sampling_error(d, eps):
    n = 4000
    p, se = monte_carlo_shell_fraction(d, eps, n=n, seed=d)
    f = shell_fraction(d, eps)
    sigma = math.sqrt(f * (1 - f) / n)
    assert abs(p - f) <= 4 * sigma + 1.5 / n
    assert se == pytest.approx(math.sqrt(p * (1 - p) / n))


def test_samples_are_uniform_in_the_ball():
    g = torch.Generator().manual_seed(0)
    for d in (2, 7, 30):
        x = sample_ball(20000, d, g)
        r = x.norm(dim=1)
        assert float(r.max()) <= 1.0
        # P(r ≤ t) = t^d, so r^d is uniform on [0, 1]: mean 1/2, variance 1/12
        u = r.pow(d)
        assert float(u.mean()) == pytest.approx(0.5, abs=4 * math.sqrt(1 / 12 / 20000))
        assert float((u < 0.25).double().mean()) == pytest.approx(0.25, abs=4 * math.sqrt(0.25 * 0.75 / 20000))
        # directions: no preferred axis
        assert float(x.mean(0).abs().max()) < 4 * math.sqrt(1 / d / 20000) + 1e-3


def test_table_and_figure():
    t = concentration_table(dims=(1, 10, 100), eps=(0.05,), n=2000)
    rows = t[0.05]
    assert rows["d"] == [1, 10, 100]
    assert rows["formula"] == pytest.approx([0.05, 1 - 0.95**10, 1 - 0.95**100])
    for p, f, s in zip(rows["mc"], rows["formula"], rows["stderr"], strict=True):
        assert abs(p - f) <= 4 * max(s, math.sqrt(f * (1 - f) / 2000)) + 1 / 2000
    fig = concentration_figure(
        t, {"a": (64, torch.tensor([0.01, 0.02, float("inf")])), "b": (4096, torch.tensor([0.001]))}
    )
    left, right = fig.axes
    assert left.get_xscale() == "log" and right.get_yscale() == "log"
    # the measured medians are drawn at (d, median·255)
    offsets = [tuple(c.get_offsets()[0]) for c in right.collections if len(c.get_offsets()) == 1]
    assert any(abs(a - 64) < 1e-9 and abs(b - 0.015 * 255) < 1e-4 for a, b in offsets)  # inf is left out
    assert any(abs(a - 4096) < 1e-9 and abs(b - 0.001 * 255) < 1e-4 for a, b in offsets)
