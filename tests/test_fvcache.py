"""The feature visualisation disk cache: a second call with the same model, layer, channel and settings runs
no optimisation and returns the same pixels; any changed weight or setting misses; a damaged file (or one
that would need unpickling) is rendered again, never trusted; a channel's result does not depend on the
channels rendered with it."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch
from inside_nets import pixel_chain_net

from cnnlens.inside import maximize_channels
from cnnlens.inside.fvcache import FeatureCache, model_hash

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = "features.4"
BASE = dict(steps=6, lr=0.1, seed=1)


@pytest.fixture
def renders(monkeypatch):
    """How many images the optimiser rendered (every call of ``maximize`` made by ``maximize_channels``)."""
    mx = importlib.import_module("cnnlens.inside.maximize")
    real = mx.maximize
    count = {"calls": 0, "images": 0}

    def counting(model, objective, *a, **k):
        count["calls"] += 1
        count["images"] += objective.batch or 1
        return real(model, objective, *a, **k)

    monkeypatch.setattr(mx, "maximize", counting)
    return count


def _same(a, b):
    for f in ("images", "activation", "start", "objective"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.channels == b.channels and a.settings == b.settings


def test_a_second_call_renders_nothing_and_returns_the_same_pixels(untouched, renders, tmp_path):
    model = untouched(pixel_chain_net())
    v1 = maximize_channels(model, LAYER, [0, 3, 5], cache=tmp_path, **BASE)
    assert renders["images"] == 3
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == 3 and all(f.parent.parent.name == model_hash(model)[:16] for f in files)
    v2 = maximize_channels(model, LAYER, [0, 3, 5], cache=tmp_path, **BASE)
    assert renders["images"] == 3  # no optimisation ran
    _same(v1, v2)
    # the same pixels as without a cache (stored as float32, read back exactly)
    plain = maximize_channels(model, LAYER, [0, 3, 5], **BASE)
    assert torch.equal(plain.images, v1.images) and torch.equal(plain.activation, v1.activation)
    # a subset in another order: all hits, in the order asked
    v3 = maximize_channels(model, LAYER, [5, 0], cache=FeatureCache(tmp_path, model), **BASE)
    assert renders["images"] == 6  # only the plain call above rendered
    assert torch.equal(v3.images[0], v1.images[2]) and torch.equal(v3.images[1], v1.images[0])


def test_only_missing_channels_are_rendered_and_they_match_a_render_alone(untouched, renders, tmp_path):
    model = untouched(pixel_chain_net())
    maximize_channels(model, LAYER, [0, 2], cache=tmp_path, **BASE)
    both = maximize_channels(model, LAYER, [0, 1, 2], cache=tmp_path, **BASE)
    assert renders["images"] == 3  # 2, then only channel 1
    alone = maximize_channels(model, LAYER, [1], **BASE)
    assert torch.allclose(both.images[1], alone.images[0], atol=1e-5)
    # diversity sets too: each set starts from the noise a set rendered alone would draw
    d = maximize_channels(model, LAYER, [0, 2], diversity=2, diversity_weight=0.5, **BASE)
    d2 = maximize_channels(model, LAYER, [2], diversity=2, diversity_weight=0.5, **BASE)
    assert torch.allclose(d.images[1], d2.images[0], atol=1e-5)
    assert float((d.images[1, 0] - d.images[1, 1]).abs().max()) > 1e-2  # the set's members still differ


@pytest.mark.parametrize(
    "change",
    [
        dict(steps=7),
        dict(lr=0.2),
        dict(seed=2),
        dict(size=(12, 12)),
        dict(param="pixel"),
        dict(robust=True),
        dict(diversity=2),
        dict(redirect_relu=False),
        dict(tv=0.01),
        dict(l2_decay=0.01),
        dict(jitter=1),
    ],
)
def test_any_changed_setting_misses(untouched, renders, tmp_path, change):
    model = untouched(pixel_chain_net())
    maximize_channels(model, LAYER, [1], cache=tmp_path, **BASE)
    assert renders["calls"] == 1
    maximize_channels(model, LAYER, [1], cache=tmp_path, **{**BASE, **change})
    assert renders["calls"] == 2, change
    maximize_channels(model, LAYER, [1], cache=tmp_path, **{**BASE, **change})  # and that one is kept too
    assert renders["calls"] == 2


def test_a_changed_weight_or_diversity_weight_misses(untouched, renders, tmp_path):
    model = untouched(pixel_chain_net())
    maximize_channels(model, LAYER, [1, 2], diversity=2, diversity_weight=[0.5, 1.0], cache=tmp_path, **BASE)
    maximize_channels(model, LAYER, [1, 2], diversity=2, diversity_weight=[0.5, 2.0], cache=tmp_path, **BASE)
    assert renders["images"] == 4 + 2  # channel 1 hit, channel 2 (new weight) rendered again
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.net.fc.bias[0] += 1e-6  # one weight, past the layer even: another model
    assert model_hash(other) != model_hash(model)
    maximize_channels(other, LAYER, [1, 2], diversity=2, diversity_weight=[0.5, 1.0], cache=tmp_path, **BASE)
    assert renders["images"] == 6 + 4


def _damage(kind, f):
    if kind == "garbage":
        f.write_bytes(b"not a zip file at all")
    elif kind == "truncated":
        f.write_bytes(f.read_bytes()[:40])
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "wrong shape":
        np.savez(
            f,
            images=np.zeros((1, 1, 3, 3), np.float32),
            activation=np.zeros(1, np.float32),
            start=np.zeros(1, np.float32),
            objective=np.zeros(1, np.float32),
        )
    elif kind == "missing array":
        with np.load(f) as z:
            keep = {k: z[k] for k in ("images", "activation", "start")}
        with open(f, "wb") as fh:
            np.savez(fh, **keep)
    elif kind == "pickled object":  # would need unpickling: refused by allow_pickle=False
        with np.load(f) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["images"] = np.array([object()], dtype=object)
        with open(f, "wb") as fh:
            np.savez(fh, **arrays)
    elif kind == "nan":
        with np.load(f) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["images"][0, 0, 0, 0] = np.nan
        with open(f, "wb") as fh:
            np.savez(fh, **arrays)


@pytest.mark.parametrize(
    "kind", ["garbage", "truncated", "empty", "wrong shape", "missing array", "pickled object", "nan"]
)
def test_a_damaged_file_is_rendered_again_not_crashed_on(untouched, renders, tmp_path, kind):
    model = untouched(pixel_chain_net())
    v1 = maximize_channels(model, LAYER, [0, 4], cache=tmp_path, **BASE)
    (f,) = [p for p in tmp_path.rglob("*.npz") if p.name.startswith("4-")]
    _damage(kind, f)
    v2 = maximize_channels(model, LAYER, [0, 4], cache=tmp_path, **BASE)
    assert renders["images"] == 2 + 1  # channel 4 only
    assert torch.equal(v2.images[0], v1.images[0])  # channel 0: read back
    # channel 4: rendered again, alone this time (so up to the rounding of a batch of 1 instead of 2)
    assert torch.allclose(v2.images[1], v1.images[1], atol=1e-5) and v2.settings == v1.settings
    maximize_channels(model, LAYER, [0, 4], cache=tmp_path, **BASE)  # the file was replaced: a hit now
    assert renders["images"] == 3
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left


def test_bad_cache_argument():
    with pytest.raises(TypeError, match="cache must be a folder"):
        maximize_channels(pixel_chain_net(), LAYER, [0], steps=1, cache=3)


def test_the_microscope_site_renders_nothing_the_second_time(untouched, renders, tmp_path):
    from cnnlens.microscope_site import Settings, precompute

    model = untouched(pixel_chain_net())
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.rand(10, 1, 16, 16, generator=g), torch.randint(0, 3, (10,), generator=g)
    )
    st = Settings(k=2, max_channels=2, steps=3, diversity=2, influence_images=4, samples=0)
    a = precompute(model, data, ["features.4"], tmp_path / "w1", st, cache=tmp_path / "fv")
    assert renders["images"] == 2 + 2 + 2 * 2  # plain, robust, a diversity set of 2 per channel
    # another run (its own work folder, other images: the same model and settings) reads them all back
    data2 = torch.utils.data.TensorDataset(
        torch.rand(12, 1, 16, 16, generator=g), torch.randint(0, 3, (12,), generator=g)
    )
    b = precompute(model, data2, ["features.4"], tmp_path / "w2", st, cache=tmp_path / "fv")
    assert renders["images"] == 8
    for what in ("plain", "robust", "diverse"):
        assert torch.equal(a.views["net.features.4"][what].images, b.views["net.features.4"][what].images), what
