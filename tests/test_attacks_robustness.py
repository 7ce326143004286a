"""Robustness curves: the scan accumulator against the attack functions, shards against one pass."""

from __future__ import annotations

import importlib
import pickle

import pytest
import torch
from conftest import TinyGapNet
from torch.utils.data import TensorDataset

from cnnlens.attacks import fgsm, pgd
from cnnlens.attacks.curves import RobustnessAccumulator, robustness
from cnnlens.figures.attacks import curves_figure
from cnnlens.scanning import Batch

scan_mod = importlib.import_module("cnnlens.scanning")  # the module (cnnlens.scan is the function)


pytestmark = pytest.mark.usefixtures("one_thread")

EPS = [0.0, 0.02, 0.05, 0.1]


def make_data(net, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::4] = (y[::4] + 1) % 3  # a quarter of the labels are wrong: clean accuracy 0.75
    return x, y


@pytest.fixture
def net(untouched):
    return untouched(TinyGapNet(seed=5))


def test_curves_equal_the_attack_functions_and_eps0_is_clean_accuracy(net):
    x, y = make_data(net)
    r = robustness(net, TensorDataset(x, y), eps=EPS, steps=5, batch_size=10, gallery=0)
    with torch.no_grad():
        clean = (net(x).argmax(1) == y).double().mean().item()
    assert r.clean_accuracy == pytest.approx(clean) and clean == 0.75
    assert r.eps == tuple(EPS) and r.n == 24
    for a in ("fgsm", "pgd"):
        assert float(r.accuracy[a][0]) == r.clean_accuracy
    for j, e in enumerate(EPS):
        f = fgsm(net, x, y, eps=e)
        p = pgd(net, x, y, eps=e, steps=5, target=None)
        assert float(r.accuracy["fgsm"][j]) == pytest.approx((f.pred_after == y).double().mean().item())
        assert float(r.accuracy["pgd"][j]) == pytest.approx((p.pred_after == y).double().mean().item())
        # per class: robust-correct counts by true class / support
        ok = p.pred_after == y
        want = torch.bincount(y[ok], minlength=3).double() / torch.bincount(y, minlength=3).double()
        assert torch.allclose(r.per_class["pgd"][:, j], want, equal_nan=True)
    assert float(r.accuracy["pgd"][-1]) < r.clean_accuracy  # the attack does something
    assert torch.equal(r.support, torch.bincount(y, minlength=3))
    assert (r.accuracy["pgd"] <= r.accuracy["fgsm"] + 1e-12).all()


def _batches(x, y, size):
    for s in range(0, len(x), size):
        yield Batch(
            x=x[s : s + size], y=y[s : s + size], logits=torch.empty(0), index=torch.arange(s, min(s + size, len(x)))
        )


def test_merge_of_two_shards_equals_one_pass(net, monkeypatch):
    x, y = make_data(net, n=20, seed=1)
    ds = TensorDataset(x, y)
    kw = dict(eps=EPS, steps=4, gallery=3)
    one = RobustnessAccumulator(**kw)
    scan_mod.scan(net, ds, [one], batch_size=1)
    shards = []
    monkeypatch.setattr(scan_mod, "_gather_merge", lambda accs, world: accs)
    for rank in (0, 1):
        monkeypatch.setattr(scan_mod, "distributed_info", lambda rank=rank: (rank, 2))
        acc = RobustnessAccumulator(**kw)
        scan_mod.scan(net, ds, [acc], batch_size=1)
        shards.append(pickle.loads(pickle.dumps(acc)))  # all_gather_object pickles them
    assert shards[0].n == 10 and shards[1].n == 10
    a, b = one.compute(), shards[0].merge(shards[1]).compute()
    assert a.n == b.n == 20 and a.clean_accuracy == b.clean_accuracy
    for k in ("fgsm", "pgd"):
        assert torch.equal(a.accuracy[k], b.accuracy[k])
        assert torch.allclose(a.per_class[k], b.per_class[k], rtol=0, atol=0, equal_nan=True)
    assert [g["index"] for g in a.gallery] == [g["index"] for g in b.gallery]
    assert len(a.gallery) == 3
    for ga, gb in zip(a.gallery, b.gallery, strict=True):
        assert torch.equal(ga["x_adv"], gb["x_adv"]) and ga["eps"] == gb["eps"]
    # merging with an empty shard changes nothing
    c = RobustnessAccumulator(**kw).merge(shards[0]).merge(RobustnessAccumulator(**kw))
    assert torch.equal(c.compute().accuracy["pgd"], shards[0].compute().accuracy["pgd"])
    with pytest.raises(ValueError, match="different"):
        one.merge(RobustnessAccumulator(eps=[0.0, 0.1]))


def test_gallery_images_flip_at_their_eps_and_not_before(net):
    from cnnlens.attribution.gradients import saliency

    x, y = make_data(net, n=24, seed=2)
    r = robustness(net, TensorDataset(x, y), eps=EPS, steps=5, gallery=4, batch_size=7)
    assert len(r.gallery) == 4
    idx = [g["index"] for g in r.gallery]
    assert idx == sorted(idx)
    for g in r.gallery:
        i = g["index"]
        assert torch.equal(g["x"], x[i]) and g["label"] == int(y[i])
        e = g["eps"]
        p = pgd(net, x[i : i + 1], y[i : i + 1], eps=e, steps=5, target=None)
        assert torch.allclose(p.x_adv[0], g["x_adv"], atol=1e-6) and int(p.pred_after) == g["pred_adv"] != g["label"]
        smaller = [v for v in EPS if 0 < v < e]
        for v in smaller:  # the smallest ε in the list that flips it
            assert int(pgd(net, x[i : i + 1], y[i : i + 1], eps=v, steps=5, target=None).pred_after) == g["label"]
        s0 = saliency(net, x[i : i + 1], target=g["label"]).maps[0]
        assert torch.allclose(g["saliency_before"], s0)
    # the lowest-index clean-correct images that PGD flips at some ε in the list
    flipped = []
    with torch.no_grad():
        ok = net(x).argmax(1) == y
    for i in range(len(x)):
        if ok[i] and any(
            int(pgd(net, x[i : i + 1], y[i : i + 1], eps=v, steps=5, target=None).pred_after) != int(y[i])
            for v in EPS[1:]
        ):
            flipped.append(i)
        if len(flipped) == 4:
            break
    assert idx == flipped
    fig = r.gallery_figure()
    assert len(fig.axes) == 5 * 4
    d = r.to_dict()
    assert d["accuracy"]["pgd"][0] == r.clean_accuracy and "x_adv" not in d["gallery"][0]


def test_targeted_curves_and_figures(net):
    x, y = make_data(net, n=12, seed=3)
    r = robustness(net, TensorDataset(x, y), eps=[0, 0.1], attacks=["pgd"], target="second", steps=5, gallery=0)
    p = pgd(net, x, y, eps=0.1, steps=5, target="second")
    assert float(r.accuracy["pgd"][1]) == pytest.approx((p.pred_after == y).double().mean().item())
    assert r.attacks == ("pgd",)
    fig = curves_figure({"a": r, "b": r})
    assert len(fig.axes[0].lines) == 2


def test_robustness_errors(net):
    x, y = make_data(net, n=4)
    ds = TensorDataset(x, y)
    with pytest.raises(ValueError, match="unknown attack"):
        robustness(net, ds, attacks=["lbfgs"])
    with pytest.raises(ValueError, match="≥ 0"):
        robustness(net, ds, eps=[0, -0.1])
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        robustness(net, TensorDataset(x * 3, y), eps=[0, 0.1])


class _LayerMean:
    """A minimal layer-reading accumulator: the mean activation of one layer."""

    def __init__(self, layer):
        self.layers = [layer]
        self.total, self.count = 0.0, 0

    def update(self, batch):
        a = batch.acts[self.layers[0]]
        self.total += float(a.sum())
        self.count += a.numel()

    def merge(self, other):
        self.total += other.total
        self.count += other.count
        return self

    def compute(self):
        return self.total / self.count


def test_robustness_shares_one_scan_with_a_layer_reading_accumulator(net):
    # the attack's own forward passes must not be recorded by the scan's tap
    x, y = make_data(net, n=10, seed=4)
    rob, mean = scan_mod.scan(
        net,
        TensorDataset(x, y),
        [RobustnessAccumulator(eps=[0, 0.05], steps=3, gallery=2), _LayerMean("features.1")],
        batch_size=4,
    )
    with torch.no_grad():
        want = net.features[1](net.features[0](x)).mean().item()
    assert mean == pytest.approx(want, rel=1e-5)
    alone = robustness(net, TensorDataset(x, y), eps=[0, 0.05], steps=3, gallery=2, batch_size=4)
    assert torch.equal(rob.accuracy["pgd"], alone.accuracy["pgd"])
