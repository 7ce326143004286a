"""cnnlens.metrics beyond the Quantus agreement: intervals, batch-size independence, colour images,
the leaderboard's bookkeeping, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from test_metrics_quantus import Tiny
from torch import nn

from cnnlens import attribution, metrics
from cnnlens.metrics.benchmark import METRICS, benchmark


def test_aggregate_is_the_t_interval():
    from scipy import stats

    s = torch.tensor([0.1, 0.5, 0.2, float("nan"), 0.9, 0.4], dtype=torch.float64)
    a = metrics.aggregate(s)
    ok = s[torch.isfinite(s)].numpy()
    lo, hi = stats.t.interval(0.95, len(ok) - 1, loc=ok.mean(), scale=stats.sem(ok))
    assert (a.n, a.undefined) == (5, 1)
    assert a.mean == pytest.approx(ok.mean()) and a.low == pytest.approx(lo) and a.high == pytest.approx(hi)
    one = metrics.aggregate(torch.tensor([0.3], dtype=torch.float64))
    assert (one.low, one.high) == (0.3, 0.3)
    assert math.isnan(metrics.aggregate(torch.tensor([float("nan")])).mean)
    with pytest.raises(ValueError, match="level"):
        metrics.aggregate(s, level=95)


@pytest.fixture
def rgb(untouched, one_thread):
    torch.manual_seed(0)
    model = untouched(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
        ).eval()
    )
    x = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    return model, x


def test_results_do_not_depend_on_the_batch_size(rgb):
    model, x = rgb
    maps = torch.rand(5, 12, 12, generator=torch.Generator().manual_seed(4))
    a = metrics.faithfulness_correlation(model, x, maps, runs=10, subset_size=30, batch_size=1)
    b = metrics.faithfulness_correlation(model, x, maps, runs=10, subset_size=30, batch_size=64)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)  # float32 convs differ in the last bits
    r1 = metrics.road(model, x, maps, percentages=(10, 50, 90), batch_size=1)
    r2 = metrics.road(model, x, maps, percentages=(10, 50, 90), batch_size=64)
    assert torch.equal(r1.extras["hits"], r2.extras["hits"])


def test_road_imputes_every_channel_of_the_removed_pixels(rgb):
    import numpy as np

    _, x = rgb
    img = x[0].numpy()
    removed = np.array([3 * 12 + 4, 7 * 12 + 7])
    out = metrics.noisy_linear_imputation(img, removed, 0.0, None)
    changed = np.argwhere((out != img).any(0).reshape(-1)).ravel()
    assert set(changed) == set(removed)
    for c in range(3):  # each channel of an isolated pixel becomes its neighbours' weighted mean
        w = img[c, 2:5, 3:6] * np.array([[1, 2, 1], [2, 0, 2], [1, 2, 1]]) / 12
        assert out[c, 3, 4] == pytest.approx(w.sum(), abs=1e-6)


def test_road_morf_on_a_model_that_reads_one_pixel(one_thread):
    """A model whose class depends on one pixel: MoRF of a map that ranks that pixel first loses the class at
    the first level; LeRF of the same map keeps it until the pixel goes."""

    class OnePixel(nn.Module):
        def forward(self, x):
            v = x[:, 0, 5, 5]
            return torch.stack([v - 0.5, 0.5 - v], 1) * 10

    x = torch.zeros(3, 1, 10, 10)
    x[:, 0, 5, 5] = 1.0  # class 0; imputing the pixel from its black neighbours makes it class 1
    m = torch.zeros(3, 10, 10)
    m[:, 5, 5] = 1.0
    m += torch.linspace(0, 0.5, 100).view(1, 10, 10)  # tie-free elsewhere
    m[:, 5, 5] = 2.0
    morf = metrics.road(OnePixel(), x, m, 0, percentages=(1, 50, 99), noise=0.0)
    lerf = metrics.road(OnePixel(), x, m, 0, order="lerf", percentages=(1, 50, 99), noise=0.0)
    assert morf.extras["curve"].tolist() == [0.0, 0.0, 0.0]
    assert lerf.extras["curve"].tolist() == [1.0, 1.0, 1.0]  # 99 % is 99 of 100 pixels: (5, 5) stays
    assert morf.scores.tolist() == [0.0] * 3 and lerf.scores.tolist() == [1.0] * 3


def test_mprt_is_one_for_a_map_that_ignores_the_model_and_lower_for_saliency(one_thread, untouched):
    model = untouched(Tiny().eval())
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def image_edges(model, x, target="predicted", **kw):  # an "explanation" that never reads the model
        e = attribution.saliency(model, x, target=target)
        return type(e)(maps=x[:, 0].abs() + 0.01 * torch.arange(256.0).view(16, 16), method="edges", classes=e.classes)

    r = metrics.model_parameter_randomisation(model, x, image_edges)
    assert torch.allclose(r.extras["correlations"], torch.ones_like(r.extras["correlations"]))
    s = metrics.model_parameter_randomisation(model, x, "saliency")
    assert (s.scores < 0.99).all() and s.extras["layers"] == ["fc", "features.3", "features.0"]


def test_leaderboard_holds_the_metric_values_and_orders_by_direction(one_thread, untouched):
    model = untouched(Tiny().eval())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 16, 16, generator=g)
    boxes = torch.tensor([[2, 2, 10, 10], [0, 0, 8, 16], [4, 4, 16, 16], [1, 1, 15, 15]])
    small = {
        "faithfulness_correlation": {"runs": 5},
        "road_morf": {"percentages": (50,)},
        "road_lerf": {"percentages": (50,)},
        "max_sensitivity": {"samples": 2},
    }
    lb = benchmark(model, x, boxes=boxes, methods=["gradcam", "saliency"], metric_settings=small)
    assert lb.metrics == list(METRICS)
    e = attribution.gradcam(model, x)
    torch.testing.assert_close(
        lb.scores["gradcam"]["relevance_mass_accuracy"], metrics.relevance_mass_accuracy(e, boxes).scores
    )
    torch.testing.assert_close(
        lb.scores["gradcam"]["deletion_auc"], attribution.deletion(model, x, e, steps=16).auc.double()
    )
    for k in lb.metrics:
        a, b = lb.aggregates["gradcam"][k].mean, lb.aggregates["saliency"][k].mean
        if a != b:
            assert lb.best(k) == (
                ("gradcam" if a > b else "saliency") if METRICS[k][0] else ("gradcam" if a < b else "saliency")
            )
    lines = lb.csv().splitlines()
    assert lines[0].startswith("method,metric,mean,ci_low,ci_high") and len(lines) == 1 + 2 * len(METRICS)
    # without ground truth the localisation metrics are left out, and asking for one is an error
    lb2 = benchmark(model, x, methods=["cam"], metrics=["deletion_auc"])
    assert lb2.metrics == ["deletion_auc"]
    with pytest.raises(ValueError, match="need a ground truth"):
        benchmark(model, x, methods=["cam"], metrics=["pointing_game"])
    with pytest.raises(ValueError, match="unknown metric"):
        benchmark(model, x, methods=["cam"], metrics=["accuracy"])


def test_bad_input_is_one_line():
    maps = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        metrics.pointing_game(maps)
    with pytest.raises(ValueError, match="do not match 2 maps"):
        metrics.pointing_game(maps, torch.tensor([[0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="NaN"):
        metrics.relevance_mass_accuracy(torch.full((1, 4, 4), float("nan")), torch.tensor([[0, 0, 2, 2]]))
    m = Tiny().eval()
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="subset_size"):
        metrics.faithfulness_correlation(m, x, torch.rand(2, 16, 16), subset_size=10_000)
    with pytest.raises(ValueError, match="order"):
        metrics.road(m, x, torch.rand(2, 16, 16), order="random")
    with pytest.raises(ValueError, match="unknown method"):
        metrics.max_sensitivity(m, x, "lime")
