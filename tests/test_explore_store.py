"""The explorer's store: one scan into SQLite equals `cnnlens.evaluate`, is reused when nothing
changed, rescans when the weights or the files change, and resumes after an interruption."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import evalnets  # noqa: E402

import cnnlens  # noqa: E402
from cnnlens.explore import SampleAccumulator, Store, build_store  # noqa: E402
from cnnlens.explore.store import store_path  # noqa: E402
from cnnlens.scanning import Batch  # noqa: E402


class Counting(nn.Module):
    """Counts the samples its forward sees (no hooks: a plain attribute on the wrapper)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.spec = getattr(inner, "spec", None)
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.inner(x)


@pytest.fixture(scope="module")
def digits_subset():
    from cnnlens.models.digits import digits_split

    ds = digits_split("test")
    xs, ys = zip(*(ds[i] for i in range(0, len(ds), 3)), strict=True)  # 120 samples
    return torch.utils.data.TensorDataset(torch.stack(xs), torch.tensor(ys))


def test_store_equals_evaluate_and_each_row_equals_float64_softmax(tmp_path, digits_subset, _digits_model, untouched):
    model = untouched(_digits_model)
    store = build_store(model, digits_subset, tmp_path, chunk=50, batch_size=32)
    ref = cnnlens.evaluate(model, digits_subset, topk=(1, 3, 5))
    got = store.evaluation((1, 3, 5))
    assert torch.equal(got.confusion, ref.confusion)
    assert got.topk_hits == ref.topk_hits and got.topk_accuracy == ref.topk_accuracy
    assert got.per_class == ref.per_class and got.most_confused == ref.most_confused
    # every row against an independent float64 computation
    x, y = digits_subset.tensors
    with torch.no_grad():
        logits = model(x).double()
    p = logits.softmax(1)
    top2 = logits.topk(2, dim=1).indices
    for i in (0, 17, 63, 119):
        row = store.sample(i)
        assert row["true"] == int(y[i]) and row["pred"] == int(top2[i, 0]) and row["second"] == int(top2[i, 1])
        assert row["conf"] == pytest.approx(float(p[i].max()), abs=1e-5)
        assert row["margin"] == pytest.approx(float(p[i, top2[i, 0]] - p[i, top2[i, 1]]), abs=1e-5)
        assert row["loss"] == pytest.approx(float(-p[i, y[i]].log()), rel=1e-4, abs=1e-5)
        assert row["top_classes"] == logits[i].topk(5).indices.tolist()
    # a cell page is the cell's rows, in the asked order, and the pages cover the cell
    C = store.confusion()
    r, c = divmod(int(torch.argmax(C - torch.diag(C.diag())).item()), C.shape[0])  # the most confused cell
    want = sorted(
        (i for i in range(len(y)) if int(y[i]) == r and int(top2[i, 0]) == c), key=lambda i: -float(p[i].max())
    )
    got_rows = store.cell(r, c, offset=0, limit=2) + store.cell(r, c, offset=2, limit=1000)
    assert [g["idx"] for g in got_rows] == want and store.cell_count(r, c) == int(C[r, c]) == len(want)
    diag = store.cell(0, 0, sort="margin", limit=1000)
    assert [d["margin"] for d in diag] == sorted(d["margin"] for d in diag)  # diagonal: least sure first


def test_reused_when_unchanged_rescanned_when_the_weights_change(tmp_path, digits_subset, _digits_model, untouched):
    model = untouched(Counting(_digits_model))
    s1 = build_store(model, digits_subset, tmp_path)
    assert model.seen == len(digits_subset)
    s2 = build_store(model, digits_subset, tmp_path)
    assert model.seen == len(digits_subset) and s2.path == s1.path  # no forward: reused
    changed = cnnlens.load_model("digits-cnn")
    with torch.no_grad():
        changed.net.fc.bias[3] += 5.0  # class 3 favoured everywhere
    s3 = build_store(changed, digits_subset, tmp_path)
    assert s3.path != s1.path
    assert int(s3.confusion()[:, 3].sum()) > int(s1.confusion()[:, 3].sum())


def test_an_image_folder_is_rescanned_when_a_file_changes_and_rows_carry_paths(tmp_path, untouched):
    root = tmp_path / "colours"
    evalnets.write_colour_folder(root)
    model = untouched(evalnets.colour_net())
    s1 = build_store(model, str(root), tmp_path / "cache")
    assert torch.equal(s1.confusion(), torch.tensor(evalnets.EXPECTED_CONFUSION))
    paths = [s1.sample(i)["path"] for i in range(s1.n)]
    assert all((root / p).is_file() for p in paths) and len(set(paths)) == s1.n
    assert build_store(model, str(root), tmp_path / "cache").path == s1.path
    f = root / paths[0]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, newer file
    assert build_store(model, str(root), tmp_path / "cache").path != s1.path


def test_a_stopped_scan_resumes_at_the_first_unwritten_chunk(tmp_path, digits_subset, _digits_model):
    model = Counting(_digits_model)

    def stop_in_the_second_chunk(done, total):
        if done > 40:  # Ctrl-C during the second chunk's first batch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_store(model, digits_subset, tmp_path, chunk=40, batch_size=20, progress=stop_in_the_second_chunk)
    assert model.seen == 60  # the first chunk (40) and a batch of the next
    partial = list(tmp_path.glob("*.partial.sqlite"))
    assert len(partial) == 1 and not list(tmp_path.glob("scan-*[0-9a-f].sqlite"))  # no finished store yet
    before = model.seen
    store = build_store(model, digits_subset, tmp_path, chunk=40, batch_size=20)
    assert model.seen - before == len(digits_subset) - 40  # only the chunks not yet written
    assert not list(tmp_path.glob("*.partial.sqlite"))
    assert torch.equal(store.confusion(), cnnlens.evaluate(_digits_model, digits_subset).confusion)


def test_accumulators_merge_to_the_one_pass_rows():
    logits = torch.tensor([[2.0, 0.0, 2.0], [0.0, 1.0, 3.0], [5.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([2, 1, 0, 2])
    whole = SampleAccumulator(k=2)
    whole.update(Batch(x=torch.zeros(4, 1, 1, 1), y=y, logits=logits, index=torch.arange(4)))
    a, b = SampleAccumulator(k=2), SampleAccumulator(k=2)
    b.update(Batch(x=torch.zeros(2, 1, 1, 1), y=y[2:], logits=logits[2:], index=torch.arange(2, 4)))
    a.update(Batch(x=torch.zeros(2, 1, 1, 1), y=y[:2], logits=logits[:2], index=torch.arange(2)))
    assert b.merge(a).compute() == whole.compute()
    rows = whole.compute()
    assert [r[2] for r in rows] == [0, 2, 0, 0]  # ties go to the lower class index, as evaluate does
    assert [r[3] for r in rows] == [2, 1, 1, 1]
    assert [r[8] for r in rows] == [1, 1, 0, 2]  # rank of the true class
    with pytest.raises(ValueError, match="same k"):
        whole.merge(SampleAccumulator(k=3))


def test_a_missing_or_unfinished_store_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="no such store"):
        Store(tmp_path / "nope.sqlite")
    assert store_path(tmp_path, "a", "b", 5) != store_path(tmp_path, "a", "c", 5)
