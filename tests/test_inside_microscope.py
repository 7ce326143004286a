"""The microscope's compute: one scan for every channel of several layers, batched feature
visualisation, building blocks and the pieces of a unit page — checked against independent computations."""

from __future__ import annotations

import copy

import pytest
import torch
from inside_nets import pixel_chain_net
from torch import nn

from cnnlens import scan
from cnnlens.inside import (
    MicroscopeAccumulator,
    building_blocks,
    class_influence,
    layer_edges,
    maximize,
    maximize_channels,
    microscope_scan,
    objectives,
    top_maps,
    unit_projections,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ["features.1", "features.4", "features.7"]


def _data(n=26, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g)
    x[9] = x[4]  # an exact duplicate: equal scores, ties broken by dataset index
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def _brute(model, x, layer, k):
    """With a plain forward hook (no cnnlens code): every image's map; per channel the top-k by
    (max value desc, dataset index asc), the first arg-max in row-major order, and the map."""
    got = {}
    mod = dict(model.named_modules())["net." + layer]
    h = mod.register_forward_hook(lambda m, i, o: got.__setitem__("a", o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    a = got["a"]
    n, C, H, W = a.shape
    out = []
    for c in range(C):
        rows = sorted((-float(a[i, c].max()), i) for i in range(n))[:k]
        ent = []
        for v, i in rows:
            flat = int((a[i, c].flatten() == a[i, c].max()).nonzero()[0])
            ent.append((-v, i, flat // W, flat % W))
        out.append(ent)
    return out, a


def _crop(img, box):
    """The field (top, left, bottom, right) cut from one C×H×W image, zero outside — by hand; a field
    larger than the image along an axis shows the whole image along it."""
    C, H, W = img.shape
    t, l, b, r = box
    if b - t > H:
        t, b = 0, H
    if r - l > W:
        l, r = 0, W
    out = torch.zeros(C, b - t, r - l)
    for u in range(t, b):
        for v in range(l, r):
            if 0 <= u < H and 0 <= v < W:
                out[:, u - t, v - l] = img[:, u, v]
    return out


def test_one_scan_gives_the_brute_force_top_k_patches_of_every_layer(untouched):
    model = untouched(pixel_chain_net())
    ds = _data()
    x, y = ds.tensors
    calls = []
    h = model.register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
    try:
        micro = microscope_scan(model, ds, LAYERS, k=4, batch_size=7, patches=True)
    finally:
        h.remove()
    # over the data: one look at the first samples for the histogram edges, then one forward per batch
    # (4 batches of ≤ 7) for all three layers; besides, one traced random image per layer for its field and
    # one single-image probe per layer that checks the layer runs once per forward (LayerTap, cached per model)
    assert [c for c in calls if c > 1] == [26, 7, 7, 7, 5] and calls.count(1) == 6
    assert list(micro.layers) == ["net." + l for l in LAYERS] and micro.count == 26
    for layer in LAYERS:
        ls = micro[layer]
        truth, a = _brute(model, x, layer, 4)
        assert ls.shape == tuple(a.shape[1:])
        for c, rows in enumerate(truth):
            assert ls.top.indices[c].tolist() == [i for _, i, _, _ in rows]
            assert ls.top.positions[c].tolist() == [[r, q] for _, _, r, q in rows]
            assert torch.allclose(ls.top.activations[c], torch.tensor([v for v, *_ in rows]))
            for s, (_, i, r, q) in enumerate(rows):
                assert torch.equal(ls.top.crops[c, s], _crop(x[i], ls.rf.box(r, q))), (layer, c, s)
        # the same patches cut again from the dataset, as a scan that keeps no patches draws them
        assert torch.equal(_uncut(ls.top).patches(ds), ls.top.crops)
        # the statistics of the same scan equal a computation over all activations at once
        v = a.transpose(0, 1).reshape(a.shape[1], -1).double()
        assert torch.allclose(ls.stats.mean.double(), v.mean(1), atol=1e-6)
        assert torch.allclose(ls.stats.max.double(), v.max(1).values)
        assert int(ls.stats.histogram.sum() + ls.stats.below.sum() + ls.stats.above.sum()) == v.numel()


def _uncut(top):
    """The same search result without its kept patches (as a microscope scan stores it)."""
    import dataclasses

    return dataclasses.replace(top, crops=None)


def test_patches_cut_when_drawn_equal_the_patches_a_scan_kept_on_digits_cnn(untouched):
    """The microscope scan keeps (image index, position, activation) per channel's top-k, no pixels; the patches
    cut from the dataset when drawn equal the float32 crops the scan used to keep, bit for bit (digits-cnn, every
    default layer: fields inside the image, clipped at the border, and larger than the image)."""
    import io

    from cnnlens import load_model
    from cnnlens.data import as_dataset
    from cnnlens.inside.microscope import default_layers, top_maps

    model = untouched(load_model("digits-cnn"))
    data = torch.utils.data.Subset(as_dataset("digits", model), range(300))
    layers = default_layers(model)
    old = microscope_scan(model, data, layers, k=9, batch_size=64, patches=True)
    new = microscope_scan(model, data, layers, k=9, batch_size=64)
    for n in layers:
        a, b = old[n].top, new[n].top
        assert b.crops is None and a.crops is not None
        assert torch.equal(a.indices, b.indices) and torch.equal(a.positions, b.positions)
        assert torch.equal(b.patches(data), a.crops), n  # from the dataset, by index
        chans = [0, 3, a.activations.shape[0] - 1]
        imgs, _ = top_maps(model, data, new[n], chans)
        assert torch.equal(b.patches(channels=chans, images=imgs), a.crops[chans]), n  # from the top images
        assert bool(a.clipped.any()) or a.rf.is_global or n == layers[0]
    # what is written to disk: no pixels, a small fraction of the old scan
    size = lambda m: len((lambda buf: (torch.save(m, buf), buf.getvalue())[1])(io.BytesIO()))  # noqa: E731
    assert size(new) < size(old) / 3


def _constant_images(values, labels):
    x = torch.stack([torch.full((1, 4, 4), float(v)) for v in values])
    return torch.utils.data.TensorDataset(x, torch.tensor(labels))


class _Selective(nn.Module):
    """1×1 conv + ReLU: channel 0 = v, channel 1 = relu(−v) = 0, channel 2 = relu(v − 2); GAP + identity head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.0, -2.0]))

    def forward(self, x):
        return self.relu(self.conv(x)).mean((2, 3))


def test_class_selectivity_equals_the_hand_computation(untouched):
    model = untouched(_Selective().eval())
    # class 0: images of value 1; class 1: value 2; class 2: values 3 and 5 (class mean 4)
    ds = _constant_images([1, 2, 3, 5, 1], [0, 1, 2, 2, 0])
    st = microscope_scan(model, ds, ["relu"], k=2)["relu"].stats
    # channel 0: μ = (1, 2, 4): μ_max = 4, μ_rest = 1.5 → (4 − 1.5)/(4 + 1.5) = 5/11
    # channel 1: all zero → 0 (defined as 0); channel 2: μ = (0, 0, 2) → (2 − 0)/(2 + 0) = 1
    assert torch.allclose(st.class_mean, torch.tensor([[1.0, 0, 0], [2, 0, 0], [4, 0, 2]]))
    assert torch.allclose(st.selectivity, torch.tensor([5 / 11, 0.0, 1.0]))
    assert st.preferred_class[[0, 2]].tolist() == [2, 2]


@pytest.mark.parametrize("patches", [False, True])
def test_sharded_scans_merge_to_one_pass(untouched, patches):
    model = untouched(pixel_chain_net())
    ds = _data(21)
    edges = layer_edges(model, ds, LAYERS)

    def run(indices):
        acc = MicroscopeAccumulator(model, LAYERS, 3, edges=edges, input_size=(16, 16), patches=patches)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=indices)
        scan(model, loader, [acc])
        return acc

    one = run(list(range(21))).compute()
    a, b = run(list(range(0, 21, 2))), run(list(range(1, 21, 2)))
    for merged in (copy.deepcopy(a).merge(copy.deepcopy(b)).compute(), b.merge(a).compute()):
        assert merged.count == one.count == 21
        for layer in LAYERS:
            m, o = merged[layer], one[layer]
            for f in ("indices", "positions", "labels", "boxes", "clipped"):
                assert torch.equal(getattr(m.top, f), getattr(o.top, f)), (layer, f)
            assert (m.top.crops is None) == (o.top.crops is None) == (not patches)
            assert torch.equal(m.top.patches(ds), o.top.patches(ds))
            assert torch.allclose(m.top.activations, o.top.activations)
            for f in ("histogram", "below", "above", "class_count"):
                assert torch.equal(getattr(m.stats, f), getattr(o.stats, f)), (layer, f)
            for f in ("mean", "var", "class_mean", "selectivity"):
                assert torch.allclose(getattr(m.stats, f), getattr(o.stats, f), rtol=1e-5, atol=1e-6), (layer, f)


def _channel_mean(model, layer, img, c):
    """A channel's mean activation on one image, read with a plain forward hook."""
    got = {}
    h = dict(model.named_modules())["net." + layer].register_forward_hook(lambda m, i, o: got.__setitem__("a", o))
    try:
        with torch.no_grad():
            model(img[None])
    finally:
        h.remove()
    return float(got["a"][0, c].mean())


def test_batched_channel_visualisations_go_up_and_equal_separate_runs(untouched):
    model = untouched(pixel_chain_net())
    chans = [0, 2, 3, 5]
    v = maximize_channels(model, "features.3", chans, steps=24, lr=0.1, tv=0.01, seed=3)
    assert v.images.shape[:2] == (4, 1)
    assert bool((v.objective > v.start + 0.1).all()), (v.start, v.objective)  # each channel's objective goes up
    for r, c in enumerate(chans):
        assert float(v.activation[r, 0]) == pytest.approx(
            _channel_mean(model, "features.3", v.images[r, 0], c), rel=1e-5
        )
        one = maximize(
            model,
            objectives.channel("features.3", c),
            steps=24,
            lr=0.1,
            tv=0.01,
            seed=3,
            noise="shared",
            size=(16, 16),
            redirect_relu=True,
        )
        alone = _channel_mean(model, "features.3", one.images[0], c)
        assert abs(float(v.activation[r, 0]) - alone) <= 0.1 * abs(alone), (c, float(v.activation[r, 0]), alone)
        assert float(v.objective[r, 0]) == pytest.approx(float(one.final[0]), rel=0.1)
    # several optimisations of 2 channels each: the same images as one of 4
    v2 = maximize_channels(model, "features.3", chans, steps=24, lr=0.1, tv=0.01, seed=3, batch_size=2)
    assert torch.allclose(v2.images, v.images, atol=1e-4)


def test_optimisations_side_by_side_on_copies_equal_one_after_another(untouched, monkeypatch):
    """With two torch threads and several optimisations, maximize_channels runs them side by side on private
    copies of the model (one torch thread each): the same images as one after another, progress adds up, the
    thread count is restored, and the user's model is never used from another thread; a model that cannot be
    copied runs alone."""
    import threading

    import cnnlens.inside.microscope as mm

    model = untouched(pixel_chain_net())
    chans = [0, 2, 3, 5, 1]
    seq = maximize_channels(model, "features.3", chans, steps=12, lr=0.1, seed=3, batch_size=2)  # one thread
    made, used = [], set()
    real_models = mm._fv_models
    monkeypatch.setattr(mm, "_fv_models", lambda m, parts: made.extend(real_models(m, parts)) or list(made))
    import importlib

    mx = importlib.import_module("cnnlens.inside.maximize")  # the module (the package exports the function)
    real = mx.maximize
    monkeypatch.setattr(
        mx, "maximize", lambda m, *a, **k: (used.add((id(m), threading.current_thread().name)), real(m, *a, **k))[1]
    )
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        par = maximize_channels(
            model,
            "features.3",
            chans,
            steps=12,
            lr=0.1,
            seed=3,
            batch_size=2,
            progress=lambda d, t: seen.append((d, t)),
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(made) == 2 and all(m is not model for m in made)
    assert {i for i, _ in used} <= {id(m) for m in made} and all(n.startswith("cnnlens-fv-") for _, n in used)
    assert torch.allclose(par.images, seq.images, atol=1e-5) and torch.allclose(
        par.activation, seq.activation, rtol=1e-5
    )
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (60, 60)

    class Locked(nn.Module):  # deepcopy refuses a lock: runs alone, same result
        def __init__(self, net):
            super().__init__()
            self.net, self.lock = net, threading.Lock()

        def forward(self, x):
            return self.net(x)

    made.clear()
    torch.set_num_threads(2)
    try:
        alone = maximize_channels(
            Locked(model), "net.features.3", chans, steps=12, lr=0.1, seed=3, batch_size=2, size=16
        )
    finally:
        torch.set_num_threads(before)
    assert made == [] or made[0].__class__ is Locked and len(made) == 1
    assert torch.allclose(alone.images, seq.images, atol=1e-5)


def test_robust_and_diverse_sets(untouched):
    model = untouched(pixel_chain_net())
    r = maximize_channels(model, "features.3", [0, 2, 4], steps=16, lr=0.1, robust=True)
    assert r.settings["jitter"] == 1 and r.settings["rotate"] == 10
    assert bool((r.objective > r.start).all())
    d = maximize_channels(model, "features.3", [0, 2], steps=16, lr=0.1, diversity=3, diversity_weight=2.0)
    assert d.images.shape[:2] == (2, 3)
    # the members of a set differ from one another
    for c in range(2):
        assert float((d.images[c, 0] - d.images[c, 1]).abs().max()) > 1e-2
    with pytest.raises(ValueError, match="out of range"):
        maximize_channels(model, "features.4", [99], steps=1)


class _GapNet(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = nn.Conv2d(2, 5, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def test_building_block_contributions_sum_to_gradcam_before_its_relu(untouched):
    from cnnlens.attribution import gradcam

    model = untouched(_GapNet().eval())
    x = torch.rand(3, 2, 6, 7, generator=torch.Generator().manual_seed(0))
    bb = building_blocks(model, x, "relu", target="second")
    gc = gradcam(model, x, target="second", layer="relu")
    assert torch.equal(bb.classes, gc.classes)
    assert torch.allclose(bb.contributions.sum(1), gc.extras["pre_relu"], atol=1e-5)
    # by hand: ∂y_c/∂A_k(i,j) = w_ck / (h·w) on a GAP + linear head
    w = model.fc.weight.detach()[bb.classes]  # N×C
    assert torch.allclose(bb.contributions, bb.activations * (w / 42)[:, :, None, None], atol=1e-6)
    top = bb.at(1, 2, 3, k=2)
    a = bb.activations[1, :, 2, 3]
    assert [t["channel"] for t in top] == torch.sort(a, descending=True, stable=True).indices[:2].tolist()


def test_unit_page_pieces(untouched):
    model = untouched(pixel_chain_net())
    ds = _data(12)
    micro = microscope_scan(model, ds, ["features.4"], k=3)
    ls = micro["features.4"]
    imgs, maps = top_maps(model, ds, ls, channels=[1, 2])
    x = ds.tensors[0]
    assert torch.equal(imgs[1, 0], x[int(ls.top.indices[2, 0])])
    # each map's maximum is the scan's top activation, at the scan's position
    for r, c in enumerate([1, 2]):
        for s in range(3):
            i, j = ls.top.positions[c, s].tolist()
            assert float(maps[r, s].max()) == pytest.approx(float(ls.top.activations[c, s]), rel=1e-6)
            assert float(maps[r, s, i, j]) == pytest.approx(float(ls.top.activations[c, s]), rel=1e-6)
    p = unit_projections(model, imgs[0], "features.4", 1, ls.top.positions[1], ls.rf)
    assert p.deconv is not None and p.guided is not None
    assert p.deconv.shape == p.guided.shape == ls.top.patches(ds, [1])[0].shape
    # on a conv/ReLU/max-pool chain, deconvnet and guided backprop of the same unit agree in sign pattern mostly
    assert float(torch.corrcoef(torch.stack([p.deconv.flatten(), p.guided.flatten()]))[0, 1]) > 0
    inf = class_influence(model, x[:6], "features.4")
    assert inf.taylor.shape == (3, 6) and inf.ablation.shape == (3, 6)
    assert inf.top(1, 1)[0][0] == int(torch.argmax(inf.ablation[:, 1]))


def test_redirected_relu_wakes_a_channel_that_starts_inactive(untouched):
    model = untouched(pixel_chain_net())
    # channel 3 of features.4 is 0 on the starting noise: a plain ReLU gradient is 0 there, so it stays grey
    off = maximize_channels(model, "features.4", [3], steps=24, lr=0.1, redirect_relu=False)
    on = maximize_channels(model, "features.4", [3], steps=24, lr=0.1)
    assert float(off.start[0, 0]) == pytest.approx(0.0, abs=1e-6) and float(off.activation[0, 0]) == 0.0
    assert float(on.activation[0, 0]) > 0.1


def test_class_influence_of_every_class_equals_influence_class_by_class(untouched):
    from cnnlens.inside import influence

    model = untouched(pixel_chain_net())
    x = _data(12).tensors[0][:7]
    ci = class_influence(model, x, "features.4", channels=[0, 2, 5], batch_size=4)
    for r, c in enumerate(ci.classes):
        one = influence(model, x, "features.4", target=c, batch_size=3)
        assert torch.allclose(ci.taylor[r].double(), one.taylor[[0, 2, 5]].double(), atol=1e-5)
        assert torch.allclose(ci.ablation[r].double(), one.ablation[[0, 2, 5]].double(), atol=1e-5)
    assert ci.top(2, 1)[0][0] == ci.classes[int(torch.argmax(ci.ablation[:, 1]))]


def test_class_influence_with_known_logits_skips_the_plain_forward_and_agrees(untouched):
    """Given the logits of x, one channel's ablation runs only the ablated forwards, with the same values."""
    model = untouched(pixel_chain_net())
    x = _data(10).tensors[0]
    ref = class_influence(model, x, "features.4", [0, 2], channels=[1, 3], taylor=False, batch_size=4)
    with torch.no_grad():
        logits = torch.cat([model(x[s : s + 4]) for s in range(0, 10, 4)])
    calls = []
    h = model.register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
    try:
        got = class_influence(
            model, x, "features.4", [0, 2], channels=[1, 3], taylor=False, batch_size=4, logits=logits
        )
    finally:
        h.remove()
    assert calls == [8, 8, 4]  # two channels × each batch of 4, 4, 2: ablated forwards only
    assert torch.allclose(got.ablation, ref.ablation, atol=1e-6) and got.taylor is None
    with pytest.raises(ValueError, match="rows"):
        class_influence(model, x, "features.4", [0], channels=[1], taylor=False, logits=logits[:3])
