"""Neuron statistics: streaming, mergeable values equal a computation over all activations at once."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from inside_nets import pixel_chain_net

from cnnlens import Batch, LayerTap, scan
from cnnlens.inside import StatsAccumulator, neuron_stats

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=37, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.rand(n, 1, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g))


def _model_with_a_dead_channel():
    m = pixel_chain_net()
    with torch.no_grad():
        m.net.features[3].bias[2] = -1e3  # conv 2, channel 2: never positive after the ReLU
    return m


def _all(model, x, layer):
    with LayerTap(model, [layer], detach=True) as tap, torch.no_grad():
        tap.run(x)
        return tap[layer].double()


@pytest.mark.parametrize("layer", ["features.4", "features.3"])  # after a ReLU, and before it (signed)
def test_stats_equal_a_non_streaming_computation(untouched, layer):
    model = untouched(_model_with_a_dead_channel())
    ds = _data()
    x, y = ds.tensors
    edges = torch.linspace(-2, 6, 17, dtype=torch.float64)
    acc = StatsAccumulator(f"net.{layer}", edges, num_classes=3)
    (st,) = scan(model, ds, [acc], batch_size=5)
    a = _all(model, x, layer)  # N×C×H×W, every activation at once
    v = a.transpose(0, 1).reshape(a.shape[1], -1)  # C × (N·H·W)
    assert st.count == v.shape[1]
    assert torch.allclose(st.mean.double(), v.mean(1), atol=1e-6)
    assert torch.allclose(st.var.double(), v.var(1, unbiased=False), rtol=1e-5, atol=1e-6)
    assert torch.allclose(st.min.double(), v.min(1).values) and torch.allclose(st.max.double(), v.max(1).values)
    assert torch.allclose(st.sparsity.double(), (v <= 0).double().mean(1))
    for c in range(v.shape[0]):
        h, _ = np.histogram(v[c].numpy(), bins=edges.numpy())  # numpy: last bin closed, like ours
        assert st.histogram[c].tolist() == h.tolist()
        assert int(st.below[c]) == int((v[c] < -2).sum()) and int(st.above[c]) == int((v[c] > 6).sum())
    img = a.mean((2, 3))  # N×C image-level activations
    cm = torch.stack([img[y == k].mean(0) for k in range(3)])
    assert torch.allclose(st.class_mean.double(), cm, atol=1e-6)
    assert st.class_count.tolist() == torch.bincount(y, minlength=3).tolist()
    mx, arg = cm.max(0)
    rest = (cm.sum(0) - mx) / 2
    want = torch.nan_to_num((mx - rest) / (mx + rest), nan=0.0)  # a dead channel (0 / 0) gets 0
    assert torch.allclose(st.selectivity.double(), want, atol=1e-5)
    assert st.preferred_class.tolist() == arg.tolist()
    if layer == "features.4":
        assert st.dead_channels == [2] and float(st.sparsity[2]) == 1.0
        assert bool((st.selectivity[[0, 1, 3, 4, 5]] >= 0).all() and (st.selectivity <= 1).all())


def test_merged_shards_equal_one_pass(untouched):
    model = untouched(pixel_chain_net())
    ds = _data(29)
    x, y = ds.tensors
    edges = torch.linspace(0, 5, 11)

    def feed(acc, idx):
        with LayerTap(model, acc.layers, detach=True) as tap, torch.no_grad():
            for s in range(0, len(idx), 4):
                j = torch.tensor(idx[s : s + 4])
                logits = tap.run(x[j])
                acc.update(Batch(x=x[j], y=y[j], logits=logits, index=j, acts=dict(tap.outputs)))
        return acc

    one = feed(StatsAccumulator("net.features.7", edges), list(range(29))).compute()
    a = feed(StatsAccumulator("net.features.7", edges), list(range(0, 29, 2)))
    b = feed(StatsAccumulator("net.features.7", edges), list(range(1, 29, 2)))
    for m in (copy.deepcopy(a).merge(copy.deepcopy(b)).compute(), b.merge(a).compute()):
        for f in ("histogram", "below", "above", "class_count", "dead", "preferred_class"):
            assert torch.equal(getattr(m, f), getattr(one, f)), f
        for f in ("mean", "var", "sparsity", "min", "max", "class_mean", "selectivity"):
            assert torch.allclose(getattr(m, f), getattr(one, f), rtol=1e-5, atol=1e-6), f
        assert m.count == one.count


def test_neuron_stats_on_digits(digits_model):
    import cnnlens

    ds = torch.utils.data.Subset(cnnlens.as_dataset("digits", digits_model), range(100))
    st = neuron_stats(digits_model, ds, "features.7", bins=20)
    assert st.count == 100 * 8 * 8
    assert st.edges[0] == 0 and len(st.edges) == 21  # ReLU outputs: range from 0
    assert int(st.histogram.sum() + st.below.sum() + st.above.sum()) == 64 * st.count
    # a trained digits net: every class has a channel that prefers it
    assert set(st.preferred_class.tolist()) >= set(range(10)) - {c for c in range(10) if st.class_count[c] == 0}
    assert len(st.figure(channels=range(8)).axes) == 8


def test_bad_edges_and_layers(untouched):
    model = untouched(pixel_chain_net())
    with pytest.raises(ValueError, match="increasing"):
        StatsAccumulator("net.features.1", torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="not in the model"):
        neuron_stats(model, _data(), "features.99")
