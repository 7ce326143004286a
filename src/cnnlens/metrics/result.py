"""The value every metric returns: one score per map, and their aggregate with a confidence interval."""

from __future__ import annotations

import dataclasses
import math

import torch

from ..results import Result

# Late, for start-up (CONTRIBUTING.md, Imports): scipy, in aggregate.


@dataclasses.dataclass(frozen=True)
class Aggregate(Result):
    """Mean of the finite per-map scores with a two-sided t confidence interval.

    mean ± t_{(1+level)/2, n−1} · s / √n (s the sample standard deviation; the
    interval is (mean, mean) for n = 1 and NaN for n = 0). ``n`` counts the
    finite scores, ``undefined`` the NaN ones (e.g. an empty box).
    """

    mean: float
    low: float
    high: float
    std: float
    n: int
    undefined: int
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def aggregate(scores: torch.Tensor, level: float = 0.95) -> Aggregate:
    """The :class:`Aggregate` of a 1-D tensor of per-map scores (NaN ignored).

    >>> aggregate(torch.tensor([1.0, 2.0, 3.0])).mean
    2.0
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}; e.g. 0.95 for a 95 % interval")
    s = torch.as_tensor(scores).detach().double().reshape(-1).cpu()
    ok = s[torch.isfinite(s)]
    n, bad = int(ok.numel()), int(s.numel() - ok.numel())
    if n == 0:
        nan = float("nan")
        return Aggregate(nan, nan, nan, nan, 0, bad, level)
    mean = float(ok.mean())
    if n == 1:
        return Aggregate(mean, mean, mean, 0.0, 1, bad, level)
    from scipy.stats import t

    std = float(ok.std(unbiased=True))
    h = float(t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return Aggregate(mean, mean - h, mean + h, std, n, bad, level)


@dataclasses.dataclass(frozen=True)
class MetricResult(Result):
    """One metric on N maps.

    metric: its name; scores: N float64 (NaN where undefined, e.g. an empty box);
    higher_is_better: the direction; method: the attribution method measured,
    if known; classes: the explained class of each map; settings: the settings
    that ran; extras: metric-specific values (ROAD's curve, MPRT's per-layer
    correlations, ...). ``aggregate(level)`` gives the mean and its interval.
    """

    metric: str
    scores: torch.Tensor
    higher_is_better: bool
    classes: torch.Tensor
    method: str | None = None
    settings: dict = dataclasses.field(default_factory=dict)
    extras: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.numel())

    @property
    def mean(self) -> float:
        return self.aggregate().mean

    def aggregate(self, level: float = 0.95) -> Aggregate:
        return aggregate(self.scores, level)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["aggregate"] = self.aggregate().to_dict()
        return d
