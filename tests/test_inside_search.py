"""Dataset search: top-k equals brute force, crops are the receptive field, shards merge to one pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from inside_nets import pixel_chain_net

from cnnlens import Batch, scan
from cnnlens.inside import SearchAccumulator, dataset_search, receptive_field

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g)
    if n > 7:
        x[7] = x[3]  # an exact duplicate: equal scores, ties broken by dataset index
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def _brute(model, x, y, layer, k):
    """Every image's activation map at once; per channel the top-k by (value desc, index asc)."""
    from cnnlens import LayerTap

    with LayerTap(model, [layer], detach=True) as tap, torch.no_grad():
        tap.run(x)
        a = tap[layer]
    n, C, H, W = a.shape
    out = []
    for c in range(C):
        rows = []
        for i in range(n):
            m = a[i, c]
            v = float(m.max())
            flat = int((m.flatten() == m.max()).nonzero()[0])  # first maximum, row-major
            rows.append((-v, i, flat // W, flat % W))
        rows.sort()
        out.append([(-v, i, r, col, int(y[i])) for v, i, r, col in rows[:k]])
    return out


@pytest.mark.parametrize("layer", ["features.1", "features.4", "features.7"])
def test_topk_equals_brute_force_and_crops_are_the_receptive_field(untouched, layer):
    model = untouched(pixel_chain_net())
    ds = _data()
    x, y = ds.tensors
    k = 4
    r = dataset_search(model, ds, layer, k=k, batch_size=5)
    truth = _brute(model, x, y, layer, k)
    rf = receptive_field(model, layer, probe=False)
    assert r.rf.size == rf.size and r.rf.offset == rf.offset
    assert r.channels == tuple(range(len(truth)))
    for c, rows in enumerate(truth):
        assert r.indices[c].tolist() == [i for _, i, _, _, _ in rows]
        assert r.positions[c].tolist() == [[i, j] for _, _, i, j, _ in rows]
        assert r.labels[c].tolist() == [lab for *_, lab in rows]
        assert torch.allclose(r.activations[c], torch.tensor([v for v, *_ in rows]))
        assert bool((r.activations[c][:-1] >= r.activations[c][1:]).all())
        hist = torch.bincount(torch.tensor([lab for *_, lab in rows]), minlength=3)
        assert r.class_histogram[c].tolist() == hist.tolist()
        for s, (_, i, pi, pj, _) in enumerate(rows):
            t, l, b, rr = rf.box(pi, pj)
            assert r.boxes[c, s].tolist() == [t, l, b, rr]
            assert bool(r.clipped[c, s]) == (t < 0 or l < 0 or b > 16 or rr > 16)
            # the crop is the field cut from a zero-padded canvas of the image; a field larger
            # than the image (features.7: 18 px on 16) gives the whole image along that axis
            canvas = F.pad(x[i], (32, 32, 32, 32))
            if rf.size[0] > 16:
                t, b, l, rr = 0, 16, 0, 16
            want = canvas[:, t + 32 : b + 32, l + 32 : rr + 32]
            assert torch.equal(r.crops[c, s], want)


def test_the_unit_sees_only_its_crop(untouched):
    """Changing every pixel outside the crop's box leaves the unit's activation unchanged."""
    from cnnlens import LayerTap

    model = untouched(pixel_chain_net())
    ds = _data()
    r = dataset_search(model, ds, "features.4", k=2)
    c, s = 3, 0
    i = int(r.indices[c, s])
    pi, pj = r.positions[c, s].tolist()
    t, l, b, rr = r.boxes[c, s].tolist()
    x = ds.tensors[0][i : i + 1].clone()
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[..., max(t, 0) : b, max(l, 0) : rr] = False
    x2 = torch.where(outside, torch.rand_like(x), x)
    with LayerTap(model, ["features.4"], detach=True) as tap, torch.no_grad():
        tap.run(x2)
        a = tap["features.4"][0, c, pi, pj]
    assert torch.allclose(a, r.activations[c, s])
    assert int(outside.sum()) > 0


def _feed(acc, model, ds, idx, bs=4):
    from cnnlens import LayerTap

    x, y = ds.tensors
    with LayerTap(model, acc.layers, detach=True) as tap, torch.no_grad():
        for start in range(0, len(idx), bs):
            j = torch.tensor(idx[start : start + bs])
            logits = tap.run(x[j])
            acc.update(Batch(x=x[j], y=y[j], logits=logits, index=j, acts=dict(tap.outputs), model=model))


def test_two_merged_shards_equal_one_pass(untouched):
    model = untouched(pixel_chain_net())
    ds = _data(31)
    n = len(ds)
    one = SearchAccumulator(model, "features.4", channels=[5, 0, 2], k=5)
    # one image per forward everywhere, so every activation is bit-identical between the runs
    # (a conv's last bits can depend on the batch it runs in)
    _feed(one, model, ds, list(range(n)), bs=1)
    shards = []
    for rank in range(2):  # the shards scan uses: rank::world
        acc = SearchAccumulator(model, "features.4", channels=[5, 0, 2], k=5)
        _feed(acc, model, ds, list(range(rank, n, 2)), bs=1)
        shards.append(acc)
    r1 = one.compute()
    import copy

    ab = copy.deepcopy(shards[0]).merge(copy.deepcopy(shards[1])).compute()
    ba = shards[1].merge(shards[0]).compute()
    for merged in (ab, ba):
        for f in ("activations", "indices", "positions", "labels", "crops", "boxes", "clipped", "class_histogram"):
            assert torch.equal(getattr(merged, f), getattr(r1, f)), f
    assert r1.channels == (5, 0, 2)
    # the merge really interleaves: every channel's top-5 takes images from both shards
    for row in r1.indices.tolist():
        assert {i % 2 for i in row} == {0, 1}


def test_shares_one_scan_with_evaluation(untouched):
    from cnnlens.evaluation import EvaluationAccumulator

    model = untouched(pixel_chain_net())
    ds = _data()
    search = SearchAccumulator(model, "features.7", k=3)
    ev = EvaluationAccumulator(num_classes=3, topk=(1,))
    r, e = scan(model, ds, [search, ev], batch_size=6)
    alone = dataset_search(model, ds, "features.7", k=3)
    assert torch.equal(r.indices, alone.indices) and torch.equal(r.crops, alone.crops)
    assert e.n == len(ds)


def test_fewer_images_than_k_and_errors(untouched):
    model = untouched(pixel_chain_net())
    ds = _data(3)
    r = dataset_search(model, ds, "features.1", k=9)
    assert r.activations.shape[1] == 3 and sorted(r.indices[0].tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="out of range"):
        dataset_search(model, ds, "features.1", channels=[99])
    with pytest.raises(ValueError, match="k must be"):
        dataset_search(model, ds, "features.1", k=0)


def test_digits_search_figure_and_save(digits_model, tmp_path):
    import cnnlens

    ds = torch.utils.data.Subset(cnnlens.as_dataset("digits", digits_model), range(64))
    r = dataset_search(digits_model, ds, "features.4", channels=[0, 1], k=4)
    assert r.crops.shape[-2:] == (8, 8)  # digits-cnn's second conv sees 8×8 pixels
    fig = r.figure(tile=8)
    img = fig.axes[0].images[0].get_array()  # 2 channels × 4 patches of 8 px, 10-px label rows
    assert img.shape == (2 * 20 + 2, 4 * 10 + 2)
    assert torch.allclose(torch.as_tensor(img[2 + 20 + 10 : 2 + 20 + 18, 2 + 10 : 2 + 18]).float(), r.crops[1, 1, 0])
    assert (
        fig.axes[0].texts[5].get_text().endswith("·" + str(int(r.labels[1, 1])))
        or "✂" in fig.axes[0].texts[5].get_text()
    )
    r.save(tmp_path)
    assert (tmp_path / "searchresult.json").exists() and (tmp_path / "searchresult.pt").exists()


def test_the_kept_images_store_holds_no_more_rows_than_the_scan_has_images(untouched):
    """Room for channels × k images at most, and no more than the scan's samples (allocated once, on the first
    batch); with an iterable dataset (its size unknown) channels × k; the same top-k either way."""
    model = untouched(pixel_chain_net())
    ds = _data(n=10)
    acc = SearchAccumulator(model, "features.7", k=4)
    (res,) = scan(model, ds, [acc], batch_size=3)
    C = len(acc.channels)
    assert acc._mode == "image" and C * 4 > 10
    assert acc._images.limit == 10 and acc._images.data.shape[0] == 10

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(*ds.tensors, strict=True))

    acc2 = SearchAccumulator(model, "features.7", k=4)
    (res2,) = scan(model, torch.utils.data.DataLoader(Stream(), batch_size=3), [acc2])
    assert acc2._images.limit == C * 4
    assert torch.equal(res2.indices, res.indices) and torch.equal(res2.crops, res.crops)
