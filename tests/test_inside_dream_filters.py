"""Deep Dream climbs its objective and stays an image; filters and feature maps are the weights and activations."""

from __future__ import annotations

import pytest
import torch
from inside_nets import ChainNet, OddNet, pixel_chain_net
from torch import nn

from cnnlens import LayerTap
from cnnlens.inside import deep_dream, feature_maps, filters

pytestmark = pytest.mark.usefixtures("one_thread")


def _energy(model, x, layer="features.4"):
    with LayerTap(model, [layer], detach=True) as tap, torch.no_grad():
        tap.run(x)
        return tap[layer].pow(2).flatten(1).mean(1)


def test_dream_amplifies_the_layer_and_stays_an_image(untouched):
    model = untouched(pixel_chain_net())
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    d = deep_dream(model, x, "features.4", octaves=2, min_size=8, steps=10, step_size=0.02, jitter=2, seed=1)
    assert d.settings["sizes"] == [(11, 11), (16, 16)]
    assert float(d.images.min()) >= 0 and float(d.images.max()) <= 1
    assert bool((d.final > 1.5 * d.start).all())
    assert torch.allclose(d.final, _energy(model, d.images), rtol=1e-4)
    assert torch.allclose(d.start, _energy(model, x), rtol=1e-4)
    again = deep_dream(model, x, "features.4", octaves=2, min_size=8, steps=10, step_size=0.02, jitter=2, seed=1)
    assert torch.equal(again.images, d.images)
    cls = deep_dream(model, x[0], target=1, octaves=1, steps=10, step_size=0.02)
    assert float(cls.final[0]) > float(cls.start[0]) + 1


def test_dream_errors(untouched):
    model = untouched(pixel_chain_net())
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="either a layer"):
        deep_dream(model, x, "features.4", target=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        deep_dream(model, x * 3, "features.4")
    fixed = untouched(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 14 * 14, 3)).eval())
    with pytest.raises(ValueError, match="octaves=1"):
        deep_dream(fixed, x, target=0, octaves=2, min_size=8, steps=2)
    assert deep_dream(fixed, x, target=0, octaves=1, steps=2).images.shape == x.shape


def test_filter_tiles_are_the_normalised_weights(untouched):
    model = untouched(OddNet().eval())
    f = filters(model)  # the first conv: 3 input channels → RGB tiles
    w = model.stem.weight.detach()
    assert f.layer == "stem" and f.mode == "rgb" and torch.equal(f.weights, w)
    for k in range(w.shape[0]):
        m = w[k].abs().max()
        assert torch.allclose(f.tiles[k], 0.5 + w[k] / (2 * m))
        assert float(f.tiles[k].max() - 0.5) == pytest.approx(0.5) or float(0.5 - f.tiles[k].min()) == pytest.approx(
            0.5
        )
    g = filters(model, "dil")  # deeper: one grey tile per input channel
    assert g.mode == "grey" and g.tiles.shape == (6, 6, 3, 3)
    assert g.figure(max_filters=4, max_inputs=3).axes[0].images[0].get_array().shape == (
        4 * 26 + 2,
        3 * 26 + 2,
    )  # 24-px tiles, 2 px apart
    with pytest.raises(ValueError, match="no 4-D conv weight"):
        filters(model, "block1.relu")


def test_feature_maps_are_the_layer_output(untouched):
    model = untouched(ChainNet().eval())
    x = torch.rand(2, 1, 16, 16)
    fm = feature_maps(model, x, "features.4")
    with torch.no_grad():
        assert torch.equal(fm.activations, model.features[:5](x))
    fig = fm.figure(sample=1, image=x[1], ncols=3, tile=8)
    grid = fig.axes[1].images[0].get_array()  # 6 maps, 3 per row, 8 px each, 2 px apart
    m = fm.activations[1, 4]
    want = (m - m.min()) / (m.max() - m.min())
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2)
    assert torch.allclose(torch.as_tensor(grid[12:20, 12:20]).float(), want)
    with pytest.raises(ValueError, match="not N×C×H×W"):
        feature_maps(model, x, "fc")


def test_mosaic_places_tiles():
    from cnnlens.figures.inside import mosaic

    t = torch.arange(5 * 2 * 2, dtype=torch.float32).view(5, 1, 2, 2) / 20
    m = mosaic(t, ncols=2, pad=1, pad_value=1.0)
    assert m.shape == (1, 3 * 3 + 1, 2 * 3 + 1)
    assert torch.equal(m[0, 1:3, 4:6], t[1, 0]) and torch.equal(m[0, 7:9, 1:3], t[4, 0])
    assert torch.equal(m[0, 7:9, 4:6], torch.ones(2, 2))  # the empty slot stays padding
