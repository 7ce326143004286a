"""Every cnnlens metric equals Quantus 0.6 (the reference implementation) on the same maps, model and
settings, to 1e-4 — with the same random draws (np.random.seed before Quantus, seed= for cnnlens)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens import attribution, metrics

quantus = pytest.importorskip("quantus")


class Tiny(nn.Module):
    """conv-ReLU-pool, conv-ReLU, GAP, linear on 1×16×16: Grad-CAM, saliency and guided backprop apply."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


N, H = 6, 16


@pytest.fixture
def setup(untouched, one_thread):
    model = untouched(Tiny().eval())
    g = torch.Generator().manual_seed(1)
    x = 0.25 + 0.5 * torch.rand(N, 1, H, H, generator=g)  # x ± 0.2 stays in [0, 1]
    with torch.no_grad():
        y = model(x).argmax(1)
    maps = torch.rand(N, H, H, generator=g) - 0.2  # signed, tie-free
    boxes = torch.tensor([[2, 3, 9, 12], [0, 0, 16, 4], [5, 5, 6, 6], [8, 1, 15, 15], [1, 9, 7, 16], [3, 3, 13, 13]])
    masks = torch.zeros(N, H, H, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        masks[i, y0:y1, x0:x1] = True
    return model, x, y, maps, boxes, masks


def _q(metric, model, x, y, a=None, s=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=None if a is None else a.unsqueeze(1).numpy(),
            s_batch=None if s is None else s.unsqueeze(1).numpy().astype(float),
            **kw,
        )
    return out


def _explain(name, **settings):
    fn = attribution.METHODS[name]

    def explain(model, inputs, targets, **kwargs):
        return fn(model, torch.as_tensor(inputs), target=torch.as_tensor(targets), **settings).maps.numpy()

    return explain


@pytest.mark.parametrize("abs_", [False, True])
def test_localisation_metrics_equal_quantus(setup, abs_):
    model, x, y, maps, boxes, masks = setup
    kw = dict(disable_warnings=True, abs=abs_)
    pg = _q(quantus.PointingGame(**kw), None, x, y, maps, masks)
    mass = _q(quantus.RelevanceMassAccuracy(**kw), None, x, y, maps, masks)
    rank = _q(quantus.RelevanceRankAccuracy(**kw), None, x, y, maps, masks)
    got_pg = metrics.pointing_game(maps, boxes, abs=abs_).scores
    got_mass = metrics.relevance_mass_accuracy(maps, boxes, abs=abs_).scores
    got_rank = metrics.relevance_rank_accuracy(maps, masks=masks, abs=abs_).scores
    np.testing.assert_allclose(got_pg.numpy(), np.asarray(pg, dtype=float), atol=1e-4)
    np.testing.assert_allclose(got_mass.numpy(), np.asarray(mass, dtype=float), atol=1e-4)
    np.testing.assert_allclose(got_rank.numpy(), np.asarray(rank, dtype=float), atol=1e-4)
    # the values mean something: a map that peaks inside every box scores 1 on all three
    inside = masks.float() * (1 + torch.rand(N, H, H, generator=torch.Generator().manual_seed(3)))
    assert metrics.pointing_game(inside, boxes).scores.tolist() == [1.0] * N
    assert torch.allclose(metrics.relevance_mass_accuracy(inside, boxes).scores, torch.ones(N, dtype=torch.float64))
    assert torch.allclose(metrics.relevance_rank_accuracy(inside, boxes).scores, torch.ones(N, dtype=torch.float64))


def test_empty_box_is_nan_and_left_out(setup):
    _, _, _, maps, boxes, _ = setup
    b = boxes.clone()
    b[2] = torch.tensor([4, 4, 4, 9])  # zero width
    r = metrics.relevance_rank_accuracy(maps, b)
    assert torch.isnan(r.scores[2]) and torch.isfinite(r.scores[[0, 1, 3, 4, 5]]).all()
    agg = r.aggregate()
    assert agg.n == N - 1 and agg.undefined == 1
    assert agg.mean == pytest.approx(float(r.scores[torch.isfinite(r.scores)].mean()))


def test_faithfulness_correlation_equals_quantus(setup):
    model, x, y, maps, _, _ = setup
    np.random.seed(7)
    q = _q(
        quantus.FaithfulnessCorrelation(nr_runs=30, subset_size=40, disable_warnings=True, return_aggregate=False),
        model,
        x,
        y,
        maps,
    )
    got = metrics.faithfulness_correlation(model, x, maps, y, runs=30, subset_size=40, seed=7, batch_size=7)
    np.testing.assert_allclose(got.scores.numpy(), np.asarray(q, dtype=float), atol=1e-4)
    # and the gradient × input map of a linear model predicts its logit drops exactly (ρ = 1)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(H * H, 3)).eval()
    e = attribution.gradient_x_input(lin, x, target=y)
    r = metrics.faithfulness_correlation(lin, x, e, runs=20, subset_size=30, baseline=0.0)
    assert torch.allclose(r.scores, torch.ones(N, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_equals_quantus(setup, order):
    model, x, y, maps, _, _ = setup
    pcts = [5, 20, 40, 60, 80, 95]
    a = maps if order == "morf" else -maps  # Quantus has MoRF only: LeRF is MoRF of the negated map
    np.random.seed(3)
    q = _q(quantus.ROAD(percentages=pcts, noise=0.01, disable_warnings=True), model, x, y, a, batch_size=N)
    got = metrics.road(model, x, maps, y, order=order, percentages=pcts, noise=0.01, seed=3, batch_size=4)
    np.testing.assert_allclose(got.extras["curve"].numpy(), np.array([q[p] for p in pcts]), atol=1e-4)
    assert got.higher_is_better == (order == "lerf")


def test_noisy_linear_imputation_equals_quantus_and_is_harmonic():
    from quantus.functions.perturb_func import noisy_linear_imputation as q_impute

    g = np.random.RandomState(0)
    img = g.rand(1, 9, 11).astype(np.float32)
    removed = g.choice(99, 40, replace=False)
    ours = metrics.noisy_linear_imputation(img, removed, 0.0, None)
    np.testing.assert_allclose(ours, q_impute(img, removed, noise=0.0), atol=1e-6)
    # a removed interior pixel whose 8 neighbours are all kept becomes their weighted mean
    lone = np.array([5 * 11 + 5])
    v = metrics.noisy_linear_imputation(img, lone, 0.0, None)[0, 5, 5]
    w = img[0, 4:7, 4:7] * np.array([[1, 2, 1], [2, 0, 2], [1, 2, 1]]) / 12
    assert v == pytest.approx(w.sum(), abs=1e-6)


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_max_sensitivity_equals_quantus(setup, method):
    model, x, y, _, _, _ = setup
    np.random.seed(5)
    q = _q(
        quantus.MaxSensitivity(nr_samples=5, lower_bound=0.2, disable_warnings=True),
        model,
        x,
        y,
        attribution.METHODS[method](model, x, target=y).maps,
        explain_func=_explain(method),
    )
    got = metrics.max_sensitivity(model, x, method, y, samples=5, radius=0.2, seed=5)
    np.testing.assert_allclose(got.scores.numpy(), np.asarray(q, dtype=float), rtol=1e-4, atol=1e-4)
    assert (got.scores > 0).all()


# (Grad-CAM is left out: on this tiny net, once the head is random its maps are all zero for the whole
# batch, which Quantus refuses; cnnlens returns NaN correlations there.)
@pytest.mark.parametrize("method", ["saliency", "gradient_x_input", "guided_backprop"])
def test_model_parameter_randomisation_equals_quantus(setup, method):
    model, x, y, _, _, _ = setup
    a = attribution.METHODS[method](model, x, target=y).maps
    mprt = quantus.MPRT(disable_warnings=True, seed=42)
    q = _q(mprt, model, x, y, a, explain_func=_explain(method))
    got = metrics.model_parameter_randomisation(model, x, method, y, seed=42)
    layers = [k for k in q if k != "original"]
    assert got.extras["layers"] == layers
    np.testing.assert_allclose(got.extras["correlations"].numpy(), np.array([q[k] for k in layers]), atol=1e-4)
    np.testing.assert_allclose(got.scores.numpy(), np.mean([q[k] for k in layers], 0), atol=1e-4)
