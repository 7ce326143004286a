"""benchmark_dataset (what `cnnlens benchmark` runs, as a library call) and its report presenter."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cnnlens.data import cluttered_digits
from cnnlens.metrics.benchmark import benchmark
from cnnlens.metrics.dataset_benchmark import benchmark_dataset, load_benchmark_data
from cnnlens.metrics.report import add_benchmark_section
from cnnlens.models.spec import ModelSpec, PixelModel
from cnnlens.report import Report

pytestmark = pytest.mark.usefixtures("one_thread")
METRICS = ["pointing_game", "relevance_mass_accuracy", "deletion_auc"]


def _net(size=(64, 64), channels: int = 1) -> PixelModel:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )
    return PixelModel(
        net, ModelSpec("tiny", size, channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)
    ).eval()


def test_run_equals_benchmark_on_the_same_images(untouched):
    m = untouched(_net())
    run = benchmark_dataset(m, "cluttered-digits", n=3, methods=["saliency", "gradcam"], metrics=METRICS)
    ds = cluttered_digits("test")
    d = run.data
    assert torch.equal(d.x, ds.x[:3]) and torch.equal(d.y, ds.y[:3]) and torch.equal(d.boxes, ds.boxes[:3])
    assert torch.equal(d.objects, ds.ink[:3]) and d.boxes_from == "built in"
    want = benchmark(
        m,
        ds.x[:3],
        y=ds.y[:3],
        boxes=ds.boxes[:3],
        objects=ds.ink[:3],
        methods=["saliency", "gradcam"],
        metrics=METRICS,
    )
    lb = run.leaderboard
    assert lb.methods == want.methods and lb.metrics == want.metrics == METRICS
    for meth in lb.methods:
        for k in METRICS:
            assert torch.allclose(
                torch.as_tensor(lb.scores[meth][k]), torch.as_tensor(want.scores[meth][k]), equal_nan=True
            )
    # loaded data given back is used as it is
    again = benchmark_dataset(m, d, methods=["saliency"], metrics=["pointing_game"])
    assert again.data is d


def test_bad_data_is_one_clear_error(untouched, tmp_path):
    m = untouched(_net())
    with pytest.raises(ValueError, match="own boxes"):
        load_benchmark_data(m, "cluttered-digits", boxes="b.csv")
    with pytest.raises(ValueError, match="1×64×64 but tiny takes 3×32×32"):
        load_benchmark_data(untouched(_net((32, 32), 3)), "cluttered-digits")
    with pytest.raises(ValueError, match="no such directory"):
        load_benchmark_data(m, str(tmp_path / "nothing"))


def test_presenter_writes_the_leaderboard(untouched):
    m = untouched(_net())
    run = benchmark_dataset(m, n=2, methods=["saliency"], metrics=["pointing_game", "deletion_auc"])
    rep = Report("t")
    add_benchmark_section(rep, run, settings={"model": "tiny"})
    files = rep._files
    assert json.loads(files["leaderboard.json"]) == json.loads(json.dumps(run.leaderboard.to_dict()))
    assert files["leaderboard.csv"].decode() == run.leaderboard.csv()
    assert rep.sections[-1].title == "How far to trust each map"
