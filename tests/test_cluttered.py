"""The cluttered-digits test bed and its shipped CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnlens
from cnnlens.data import as_dataset, cluttered_digits
from cnnlens.models import cluttered as C
from cnnlens.models.digits import split_indices


def test_splits_are_fixed_disjoint_and_boxes_hold_the_digit():
    tr, te = cluttered_digits("train"), cluttered_digits("test")
    assert (len(tr), len(te)) == (4314, 718)
    again = C._make("test")  # regenerated from scratch, not the cache
    assert torch.equal(again[0], te.x) and torch.equal(again[1], te.y) and torch.equal(again[2], te.boxes)
    assert te.x.shape[1:] == (1, 64, 64) and 0 <= float(te.x.min()) and float(te.x.max()) <= 1
    # every class, about evenly; labels are those of the held-out digits (each used twice)
    from sklearn.datasets import load_digits

    y_all = load_digits().target
    held = np.sort(np.concatenate([y_all[split_indices(y_all, "test")]] * 2))
    assert np.array_equal(np.sort(te.y.numpy()), held)
    b = te.boxes
    assert ((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= 64) & (b[:, 3] <= 64)).all()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert ((w >= 4) & (w <= 24) & (h >= 12) & (h <= 24)).all()
    # the box's border rows/columns hold ink (the box is tight) and the box is brighter than the clutter
    m = te.masks
    assert torch.equal(m.sum((1, 2)), w * h)
    inside = (te.x[:, 0] * m).sum((1, 2)) / m.sum((1, 2))
    outside = (te.x[:, 0] * ~m).sum((1, 2)) / (~m).sum((1, 2))
    assert (inside > 2 * outside).all()
    for i in range(0, len(te), 97):
        x0, y0, x1, y1 = b[i].tolist()
        patch = te.x[i, 0, y0:y1, x0:x1]
        assert float(patch[0].max()) > C.INK and float(patch[:, 0].max()) > C.INK


def test_as_dataset_gives_the_held_out_split_with_boxes():
    ds = as_dataset("cluttered-digits")
    assert len(ds) == 718 and ds.boxes.shape == (718, 4)
    with pytest.raises(ValueError, match="1×64×64"):
        as_dataset("cluttered-digits", cnnlens.load_model("digits-cnn"))


def test_shipped_cluttered_cnn_reaches_95_percent(untouched):
    from safetensors import safe_open

    from cnnlens.models.loading import _weights_path
    from cnnlens.train import accuracy

    model = untouched(cnnlens.load_model("cluttered-digits-cnn"))
    assert model.spec.input_size == (64, 64) and model.spec.channels == 1
    te = cluttered_digits("test")
    acc = accuracy(model, te)
    assert acc >= 0.95
    path = _weights_path("cluttered_digits_cnn.safetensors")
    assert path.stat().st_size < 1_000_000
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert abs(acc - float(meta["test_accuracy"])) < 1e-4
    assert "cnnlens train cluttered-digits --seed 0" in meta["command"]
    # GAP + linear head: CAM applies (logits = fc(mean of the pooled layer))
    from cnnlens.tap import LayerTap

    with LayerTap(model, [model.spec.pooled_layer]) as tap, torch.no_grad():
        logits = tap.run(te.x[:4])
        a = tap[model.spec.pooled_layer]
    torch.testing.assert_close(model.net.fc(a.mean((2, 3))), logits)
