"""What the fast dataset scan relies on, pinned down by values: the tap without copies, the scan's re-run of a
batch whose record an in-place op changed, the vectorised histograms against numpy, and the search's two ways of
keeping patches, merged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from inside_nets import pixel_chain_net
from torch import nn

from cnnlens import Batch, LayerTap, scan
from cnnlens.inside import SearchAccumulator, StatsAccumulator, microscope_scan

pytestmark = pytest.mark.usefixtures("one_thread")


class _ConvInplaceReLU(nn.Module):
    def __init__(self, inplace: bool):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def test_a_tap_without_copies_names_the_layer_an_inplace_op_changed(untouched):
    x = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    plain = untouched(_ConvInplaceReLU(False).eval())
    twin = untouched(_ConvInplaceReLU(True).eval())
    with LayerTap(plain, ["conv"], detach=True) as tap, torch.no_grad():
        tap.run(x)
        want = tap["conv"].clone()
    assert bool((want < 0).any())  # the ReLU would change it
    with LayerTap(twin, ["conv"], detach=True, copy=False) as tap, torch.no_grad():
        tap.run(x)
        assert tap.changed() == ["conv"] and tap.passed_on == {}
        with pytest.raises(ValueError, match="changed in place after the layer ran"):
            tap["conv"]
        tap.copy = {"conv"}  # what the scan does: copy the layers it saw change, and run again
        tap.run(x)
        assert tap.changed() == [] and torch.equal(tap["conv"], want)
    with LayerTap(plain, ["conv"], detach=True, copy=False) as tap, torch.no_grad():
        tap.run(x)
        assert tap.changed() == [] and torch.equal(tap["conv"], want) and tap.passed_on == {}


def test_the_scan_reruns_only_the_first_batch_of_an_inplace_twin_with_the_plain_twins_values(untouched):
    plain = untouched(pixel_chain_net())
    twin = copy.deepcopy(plain)
    for m in twin.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    untouched(twin)
    g = torch.Generator().manual_seed(3)
    ds = torch.utils.data.TensorDataset(torch.rand(11, 1, 16, 16, generator=g), torch.randint(0, 3, (11,), generator=g))
    layers = ["features.0", "features.3"]  # convs whose outputs the in-place ReLUs overwrite
    calls = []
    h = twin.register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
    try:
        b = microscope_scan(twin, ds, layers, k=3, batch_size=4, patches=True)
    finally:
        h.remove()
    a = microscope_scan(plain, ds, layers, k=3, batch_size=4, patches=True)
    # the edges' look at the first samples, the probe and field tracing aside: 4, 4 again with a copy, 4, 3
    assert [c for c in calls if c > 1][-4:] == [4, 4, 4, 3]
    for n in a.layers:
        ta, tb = a[n].top, b[n].top
        assert torch.equal(ta.activations, tb.activations) and torch.equal(ta.indices, tb.indices)
        assert torch.equal(ta.crops, tb.crops)
        assert bool((a[n].stats.min < 0).any())  # conv outputs, signed: the record is not the ReLU's
        for f in ("mean", "var", "min", "max", "sparsity", "class_mean"):
            assert torch.allclose(getattr(a[n].stats, f), getattr(b[n].stats, f)), f
        assert torch.equal(a[n].stats.histogram, b[n].stats.histogram)


def _feed_stats(acc, batches):
    for i, a in enumerate(batches):
        n = a.shape[0]
        acc.update(
            Batch(
                x=torch.zeros(n, 1, 1, 1),
                y=torch.arange(n) % 3,
                logits=torch.zeros(n, 3),
                index=torch.arange(n) + 100 * i,
                acts={"l": a},
            )
        )
    return acc.compute()


@pytest.mark.parametrize(
    "edges",
    [
        torch.linspace(-1.5, 2.5, 17, dtype=torch.float64),  # uniform: one fused binning pass, int16 slots
        torch.linspace(-1.5, 2.5, 4097, dtype=torch.float64),  # so many bins that the slots need int32
        torch.tensor([-1.0, -0.2, 0.0, 0.05, 0.5, 2.0], dtype=torch.float64),  # not uniform: bucketize
        torch.linspace(0.0, 2.5, 26, dtype=torch.float64),  # from 0 on ReLU outputs: the slot's +1 as an integer
    ],
    ids=["uniform", "int32-slots", "uneven", "from-zero"],
)
@pytest.mark.parametrize("chunk", [None, 100], ids=["whole-batches", "chunks-of-2-images"])
def test_vectorised_histograms_equal_numpy_per_channel(monkeypatch, edges, chunk):
    import cnnlens.inside.stats as stats

    if chunk is not None:
        monkeypatch.setattr(stats, "_CHUNK_VALUES", chunk * 9 * 30 // 100 * 2)  # 2 images of 9×30 per chunk
    g = torch.Generator().manual_seed(5)
    # signed values beyond both ends, a ReLU-like channel of exact zeros, two batches of different sizes
    batches = [torch.randn(7, 9, 5, 6, generator=g) * 1.3, torch.randn(3, 9, 5, 6, generator=g) * 1.3]
    w = float(edges[1] - edges[0])
    for a in batches:
        if len(edges) > 100:  # float32 binning: keep values 1e-3 bin widths clear of the edges (numpy bins in float64)
            f = torch.frac((a.double() - float(edges[0])) / w)
            a += ((f < 1e-3) | (f > 1 - 1e-3)).float() * 2e-3 * w
        a[:, 4] = a[:, 4].clamp_min(0)
        if float(edges[0]) == 0.0:  # every channel after a ReLU: exact zeros, and values beyond the last edge
            a.clamp_(min=0)
    st = _feed_stats(StatsAccumulator("l", edges, num_classes=3), batches)
    v = torch.cat(batches).transpose(0, 1).reshape(9, -1).double()
    e = edges.numpy()
    for c in range(9):
        h, _ = np.histogram(v[c].numpy(), bins=e)
        assert st.histogram[c].tolist() == h.tolist(), c
        assert int(st.below[c]) == int((v[c] < e[0]).sum()) and int(st.above[c]) == int((v[c] > e[-1]).sum())
    assert torch.allclose(st.sparsity.double(), (v <= 0).double().mean(1))
    assert torch.allclose(st.mean.double(), v.mean(1), atol=1e-6)
    assert torch.allclose(st.var.double(), v.var(1, unbiased=False), rtol=1e-5)
    assert torch.equal(st.min.double(), v.min(1).values) and torch.equal(st.max.double(), v.max(1).values)


def test_non_negative_channels_count_exact_zeros_and_tiny_values_apart():
    a = torch.zeros(2, 2, 3, 3)
    a[0, 0, 0, 0] = 1e-30  # positive, however small: not sparse
    a[1, 1] = 2.0
    st = _feed_stats(StatsAccumulator("l", torch.linspace(0, 3, 4)), [a])
    assert st.sparsity.tolist() == [pytest.approx(17 / 18), pytest.approx(9 / 18)]


def _feed(acc, model, x, y, idx):
    with LayerTap(model, acc.layers, detach=True) as tap, torch.no_grad():
        for i in idx:  # one image per forward, so activations are bit-identical between runs
            j = torch.tensor([i])
            logits = tap.run(x[j])
            acc.update(Batch(x=x[j], y=y[j], logits=logits, index=j, acts=dict(tap.outputs), model=model))
    return acc


@pytest.mark.parametrize(
    "layer, store, mode",
    [
        ("features.4", 0, "crop"),  # patches cut when they arrive, kept in slots
        ("features.7", 0, "image"),  # features.7's field (18 px) covers the 16-px image: images kept, cut at the end
        ("features.4", None, "image"),  # small images: always kept whole, cut at the end
    ],
)
def test_merged_halves_equal_the_whole_in_both_ways_of_keeping_patches(untouched, monkeypatch, layer, store, mode):
    import cnnlens.inside.search as search

    if store is not None:
        monkeypatch.setattr(search, "_IMAGE_STORE_VALUES", store)
    model = untouched(pixel_chain_net())
    g = torch.Generator().manual_seed(7)
    x, y = torch.rand(19, 1, 16, 16, generator=g), torch.randint(0, 3, (19,), generator=g)
    whole = _feed(SearchAccumulator(model, layer, k=4), model, x, y, range(19))
    assert whole._mode == mode
    halves = [_feed(SearchAccumulator(model, layer, k=4), model, x, y, range(r, 19, 2)) for r in (0, 1)]
    one = whole.compute()
    for merged in (
        copy.deepcopy(halves[0]).merge(copy.deepcopy(halves[1])).compute(),
        halves[1].merge(halves[0]).compute(),
    ):
        for f in ("activations", "indices", "positions", "labels", "crops", "boxes", "clipped", "class_histogram"):
            assert torch.equal(getattr(merged, f), getattr(one, f)), f
    # the whole equals one batch of everything, and patches are the same whichever way they were kept
    allx = scan(model, torch.utils.data.TensorDataset(x, y), [SearchAccumulator(model, layer, k=4)], batch_size=19)[0]
    assert torch.equal(allx.indices, one.indices) and torch.equal(allx.crops, one.crops)
    monkeypatch.setattr(search, "_IMAGE_STORE_VALUES", 0 if store is None else 2**40)
    other = scan(model, torch.utils.data.TensorDataset(x, y), [SearchAccumulator(model, layer, k=4)], batch_size=5)[0]
    assert torch.equal(other.indices, one.indices) and torch.equal(other.crops, one.crops)


def test_a_microscope_scan_in_small_chunks_equals_one_in_whole_batches(untouched, monkeypatch):
    """The statistics' chunked pass leaves each image's maxima for the search; both equal the whole-batch scan."""
    import cnnlens.inside.stats as stats

    model = untouched(pixel_chain_net())
    g = torch.Generator().manual_seed(11)
    ds = torch.utils.data.TensorDataset(torch.rand(13, 1, 16, 16, generator=g), torch.randint(0, 3, (13,), generator=g))
    layers = ["features.1", "features.4", "features.7"]
    whole = microscope_scan(model, ds, layers, k=3, batch_size=6, patches=True)
    monkeypatch.setattr(stats, "_CHUNK_VALUES", 150)  # one or two images per chunk
    small = microscope_scan(model, ds, layers, k=3, batch_size=6, patches=True)
    for n in whole.layers:
        a, b = whole[n], small[n]
        for f in ("activations", "indices", "positions", "crops"):
            assert torch.equal(getattr(a.top, f), getattr(b.top, f)), f
        for f in ("histogram", "below", "above", "min", "max", "class_count"):
            assert torch.equal(getattr(a.stats, f), getattr(b.stats, f)), f
        for f in ("mean", "var", "sparsity", "class_mean", "selectivity"):
            assert torch.allclose(getattr(a.stats, f), getattr(b.stats, f), rtol=1e-6, atol=1e-7), f
