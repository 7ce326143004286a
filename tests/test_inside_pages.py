"""The library half of the ``cnnlens inside`` commands: the helpers they call and the pages they write."""

from __future__ import annotations

import json

import pytest
import torch
from inside_nets import pixel_chain_net

from cnnlens.inside import filters, influence
from cnnlens.inside.maximize import objective_for
from cnnlens.inside.pages import filters_page, influence_page, json_file, regularisers
from cnnlens.inside.receptive import field_layers
from cnnlens.inside.tcav import class_images, class_index


def test_field_layers_are_the_convolutions_and_pools_in_module_order():
    m = pixel_chain_net()
    assert field_layers(m) == [
        "net.features.0",
        "net.features.2",
        "net.features.3",
        "net.features.5",
        "net.features.6",
        "net.pool",
    ]


def test_class_index_takes_an_index_or_one_of_the_class_names():
    m = pixel_chain_net()  # classes a, b, c
    assert class_index(m, "b") == (1, "b")
    assert class_index(m, 2) == (2, "c")
    assert class_index(m, "2") == (2, "c")
    with pytest.raises(ValueError, match="not a class of the model"):
        class_index(m, "zebra")
    with pytest.raises(TypeError):
        class_index(m, 1.5)


def test_class_images_are_the_first_n_of_the_class_in_order():
    ds = [(torch.full((1, 2, 2), float(i)), i % 3) for i in range(10)]
    got = class_images(ds, 1, n=2)
    assert [float(x[0, 0, 0]) for x in got] == [1.0, 4.0]
    assert [float(x[0, 0, 0]) for x in class_images(ds, 2)] == [2.0, 5.0, 8.0]
    assert class_images(ds, 7) == []


def test_objective_for_channels_neurons_and_classes_with_their_titles():
    J, titles = objective_for("features.3", [0, 5])
    assert titles == ["features.3 ch 0", "features.3 ch 5"]
    assert J.layers == ("features.3",)
    _, titles = objective_for("features.3", None, neuron=True)
    assert titles == [f"features.3 unit {c}" for c in range(4)]
    J, titles = objective_for(classes=["b", 2], class_names=["a", "b", "c"])
    assert titles == ["b", "c"] and J.layers == ()
    with pytest.raises(ValueError, match="give a layer"):
        objective_for()


def test_regularisers_in_words_name_only_those_that_ran():
    assert regularisers("pixel", 0, 0, 0, 0, 0.5, 0, None, None) == []
    words = regularisers("fourier", 0.1, 0, 0, 4, 0.5, 2, 0.1, None)
    assert words == [
        "a Fourier parameterisation with decorrelated colour",
        "total variation (weight 0.1)",
        "a Gaussian blur (σ = 0.5) every 4 steps",
        "random jitter of ±2 px",
        "random scaling by ±0.1",
    ]


def test_filters_page_is_one_section_with_the_figure_and_the_numbers():
    m = pixel_chain_net()
    f = filters(m, "features.0")
    rep, files = filters_page("chain", m, f)
    assert list(files) == ["filters.png", "filters.json", "filters.pt"]
    assert files["filters.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(files["filters.json"]) == json.loads(json_file(f))
    assert [s.title for s in rep.sections] == ["Filters"]
    settings = rep.sections[0].settings
    assert (settings["model"], settings["layer"]) == ("chain", "net.features.0")
    assert rep.title == "cnnlens inside filters: chain"


def test_influence_page_says_which_channels_were_zeroed():
    m = pixel_chain_net()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    inf = influence(m, x, "features.3", "predicted", ablate_top=2)
    rep, files = influence_page("chain", m, inf, ablation=True, processes=1)
    settings = rep.sections[0].settings
    assert settings["zeroed (ablation)"] == f"the top 2 of {len(inf.channels)} channels by a·∂y/∂a"
    assert settings["images"] == 3 and settings["processes"] == 1
    assert list(files) == ["influence.png", "influence.json", "influence.pt"]
    inf0 = influence(m, x, "features.3", "predicted", ablation=False)
    rep, _ = influence_page("chain", m, inf0, ablation=False, processes=1)
    assert rep.sections[0].settings["zeroed (ablation)"] == "no"
