"""Network dissection (Bau et al. 2017): labels by hand, agreement with a direct computation at the sketch's
threshold, merging shards, and the cluttered-digits model's units."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.inside.dissect import GAMMA, DissectionAccumulator
from cnnlens.scanning import scan


def _square_data(n=6, size=20):
    x = torch.zeros(n, 1, size, size)
    seg = torch.full((n, size, size), -1, dtype=torch.long)
    for i in range(n):
        r, c = 2 + i, 3 + 2 * i
        x[i, 0, r : r + 4, c : c + 4] = 1.0  # 16 of 400 pixels: 4 %
        seg[i, r : r + 4, c : c + 4] = 0  # concept 0: the square
        seg[i, 15:19, 0:10] = 1  # concept 1: a band elsewhere
    return x, seg


def test_a_unit_that_is_the_concept_gets_iou_one_and_a_diffuse_unit_no_label(untouched):
    x, seg = _square_data()
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU()).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        net[0].bias.copy_(torch.tensor([0.0, 1.0]))  # channel 1 = 1 − x: bright on 96 % of the pixels
    untouched(net)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    acc = DissectionAccumulator(["1"], seg, ["square", "band"], quantile=0.04)
    (d,) = scan(net, ds, [acc], batch_size=4)
    L = d["1"]
    assert L.iou[0].tolist() == [1.0, 0.0] and L.labels() == ["square", None]
    assert L.iou[1].tolist() == [0.0, 0.0] and L.units_per_concept() == {"square": 1}
    u = L.unit(0)
    assert (u["label"], u["iou"], u["best"]) == ("square", 1.0, "square")
    assert 0 <= u["threshold"] < 1.0  # any T in [0, 1) lets exactly the square's 4 % through
    assert "1/2 units labelled" in repr(L)


def _random_setup(seed=0, n=40):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1)).eval()
    with torch.no_grad():
        net[0].weight.mul_(4)
        net[2].bias.add_(0.3)  # most units' top 2 % positive (the sketch's range), a few below 0 left alone
    x = F.avg_pool2d(torch.rand(n, 1, 24, 24, generator=g), 3, 1, 1)
    seg = torch.randint(-1, 3, (n, 6, 6), generator=g)
    seg = F.interpolate(seg[:, None].float(), size=(24, 24), mode="nearest")[:, 0].long()  # blocky regions
    return net, x, seg


def test_equals_a_direct_computation_at_the_sketchs_threshold():
    """IoU over the dataset of (upsampled map > T_k) with each concept, T_k the threshold the sketch found; T_k is
    within one bin (2 %) of the exact quantile and never lets more than the quantile's share through."""
    net, x, seg = _random_setup()
    q = 0.02
    ds = torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    (d,) = scan(net, ds, [DissectionAccumulator(["0", "2"], seg, ["a", "b", "c"], quantile=q)], batch_size=16)
    with torch.no_grad():
        acts = {"0": net[0](x), "2": net(x)}
    for name, a in acts.items():
        L = d[name]
        assert (torch.quantile(a.transpose(0, 1).reshape(a.shape[1], -1), 1 - q, dim=1) > 1e-6).sum() >= 3
        C = a.shape[1]
        raw = a.transpose(0, 1).reshape(C, -1)
        exact = torch.quantile(raw.double(), 1 - q, dim=1)
        up = F.interpolate(a, size=(24, 24), mode="bilinear", align_corners=False)
        for k in range(C):
            t = float(L.thresholds[k])
            share = float((raw[k] > t).double().mean())
            assert share <= q + 1e-9
            if float(exact[k]) > 1e-6:  # (a unit whose top 2 % are not positive is never active: bin 0)
                assert share > q / 3 and t == pytest.approx(float(exact[k]), rel=2 * (GAMMA - 1))
            m = up[:, k] > t
            for c in range(3):
                lc = seg == c
                iou = float((m & lc).sum()) / float((m | lc).sum())
                assert float(L.iou[k, c]) == pytest.approx(iou, abs=2e-3)
        best = L.iou.max(1).values
        assert torch.equal(L.label >= 0, best > 0.04)


def test_shards_merge_to_the_whole():
    net, x, seg = _random_setup(seed=1)
    y = torch.zeros(len(x), dtype=torch.long)
    whole = DissectionAccumulator(["0"], seg, ["a", "b", "c"])
    scan(net, torch.utils.data.TensorDataset(x, y), [whole], batch_size=8)
    parts = []
    for lo, hi in ((0, 15), (15, 40)):
        acc = DissectionAccumulator(["0"], seg[lo:hi], ["a", "b", "c"])
        scan(net, torch.utils.data.TensorDataset(x[lo:hi], y[lo:hi]), [acc], batch_size=8)
        parts.append(acc)
    merged = parts[0].merge(parts[1])
    assert torch.equal(merged.raw["0"], whole.raw["0"]) and torch.equal(merged.joint["0"], whole.joint["0"])
    a, b = merged.compute()["0"], whole.compute()["0"]
    assert torch.equal(a.iou, b.iou) and torch.equal(a.label, b.label) and merged.count == 40
    # what a torchrun gather sends: the counts, not the dataset's label maps
    import pickle

    assert pickle.loads(pickle.dumps(whole)).segments.numel() == 0


def test_bad_segments_are_one_line():
    with pytest.raises(ValueError, match="integer label maps"):
        DissectionAccumulator(["x"], torch.rand(2, 4, 4), ["a"])
    with pytest.raises(ValueError, match="2 concept names"):
        DissectionAccumulator(["x"], torch.full((2, 4, 4), 3), ["a", "b"])
    with pytest.raises(ValueError, match="quantile must be"):
        DissectionAccumulator(["x"], torch.zeros(2, 4, 4, dtype=torch.long), ["a"], quantile=5)


def test_cluttered_digits_units_stand_for_the_digits_their_weights_vote_for(untouched):
    """On the bundled cluttered-digits CNN, most last-layer units get a digit's label, and a labelled unit's
    label agrees with the class its classifier weight favours far more often than chance (1 in 10)."""
    import cnnlens
    from cnnlens.data import cluttered_digits
    from cnnlens.inside.dissect import cluttered_segments

    model = untouched(cnnlens.load_model("cluttered-digits-cnn"))
    ds = cluttered_digits("test")
    seg, names = cluttered_segments(ds)
    assert names[:2] == ["digit 0", "digit 1"] and names[-1] == "clutter"
    assert int((seg == 10).sum()) == int(ds.clutter.sum()) and int((seg == ds.y.view(-1, 1, 1)).sum()) > 0
    n = 160
    acc = DissectionAccumulator(["net.features.10"], seg[:n], names)
    (d,) = scan(model, torch.utils.data.Subset(ds, range(n)), [acc])
    L = d["net.features.10"]
    assert L.labelled >= 40 and "clutter" not in L.units_per_concept()
    ok = L.label >= 0
    agree = float((model.net.fc.weight.argmax(0)[ok] == L.label[ok]).double().mean())
    assert agree > 0.3, (agree, L)


def test_microscope_scan_labels_units_in_the_same_scan_and_the_pages_show_them(untouched):
    """microscope_scan on cluttered digits dissects in its one scan (equal to the dissection alone); the layer
    list, the layer grid and the unit page of the static site and of the explorer show label and IoU."""
    import cnnlens
    from cnnlens.data import cluttered_digits
    from cnnlens.inside.dissect import cluttered_segments
    from cnnlens.inside.microscope import microscope_scan
    from cnnlens.microscope_site import _env, layer_row, unit_card

    model = untouched(cnnlens.load_model("cluttered-digits-cnn"))
    ds = cluttered_digits("test")
    n = 48
    seg, names = cluttered_segments(ds)
    sub = torch.utils.data.Subset(ds, range(n))
    layers = ["net.features.7", "net.features.10"]
    micro = microscope_scan(model, sub, layers, k=3, concepts=(seg[:n], names))
    acc = DissectionAccumulator(layers, seg[:n], names)
    (alone,) = scan(model, sub, [acc])
    for name in layers:
        got, want = micro[name].concepts, alone[name]
        assert torch.equal(got.iou, want.iou) and torch.equal(got.label, want.label)
    assert microscope_scan(model, sub, layers[:1], k=3, concepts=False)[layers[0]].concepts is None
    ls = micro["net.features.10"]
    row = layer_row(ls)
    assert row["labelled"] == ls.concepts.labelled > 0
    top, count = next(iter(ls.concepts.units_per_concept().items()))
    assert row["concepts"].startswith(f"{top} {count}")
    c = int(ls.concepts.best_iou.argmax())
    card = unit_card(ls, c, str)
    assert card["concept"] == ls.concepts.labels()[c] and card["concept_iou"] == float(ls.concepts.best_iou[c])
    html = (
        _env()
        .get_template("layer.html.j2")
        .render(layer=row, cards=[card], model_name="m", data_name="d", count=n, generated="now")
    )
    assert f"{card['concept']} (IoU {card['concept_iou']:.2f})" in html
    html = (
        _env()
        .get_template("index.html.j2")
        .render(layers=[{**row, "shown": 64}], samples=[], model_name="m", data_name="d", count=n, generated="now")
    )
    assert "units per concept" in html and row["concepts"] in html
    from cnnlens.explore.app import Urls, templates

    env = templates()
    html = env.get_template("layers.html.j2").render(
        o={"model": "m", "data": "d", "images": n, "layers": [row]}, urls=Urls()
    )
    assert "units per concept" in html and row["concepts"] in html
    html = env.get_template("layer.html.j2").render(layer={**row, "k": 3, "cards": [card]}, urls=Urls())
    assert f"{card['concept']} (IoU {card['concept_iou']:.3f})" in html
    for e in (env, _env()):  # the unit pages' templates compile (their rendering is in the site/explorer tests)
        assert "Network dissection" in e.loader.get_source(e, "unit.html.j2")[0] and e.get_template("unit.html.j2")


@pytest.mark.distributed
def test_two_processes_under_torchrun_equal_one(tmp_path):
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    sys.path.insert(0, str(here))
    from torchrun_two import run_two

    out = tmp_path / "dist.pt"
    run_two(str(here / "dissect_dist_worker.py"), str(out))
    two = torch.load(out, weights_only=False)
    from dissect_dist_worker import run_scan

    one = run_scan()
    assert two["world"] == 2 and two["dissection"].count == one.count == 23
    for name in ("1", "2"):
        a, b = two["dissection"][name], one[name]
        assert torch.equal(a.thresholds, b.thresholds) and torch.equal(a.label, b.label)
        assert torch.allclose(a.iou, b.iou, rtol=0, atol=1e-12)
