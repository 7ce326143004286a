"""Evaluation: confusion matrix vs scikit-learn, top-k with ties, zero-support rows, shard merging,
files and figures, the CLI end to end and its errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.evaluation import (
    EvaluationAccumulator,
    EvaluationResult,
    evaluate,
    predict_topk,
    true_class_rank,
)
from cnnlens.figures.evaluation import confusion_figure, most_confused_classes
from cnnlens.scanning import Batch

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import evalnets  # noqa: E402


def logits_data(logits: torch.Tensor, labels: torch.Tensor):
    """A dataset whose images are the logits themselves (K×1×1), for an identity 'model'."""
    return torch.utils.data.TensorDataset(logits.view(*logits.shape, 1, 1), labels)


def identity_model():
    """nn.Flatten: N×K×1×1 → N×K, so the logits are exactly the data."""
    return nn.Sequential(nn.Flatten())


def batch(logits, y):
    logits = torch.as_tensor(logits, dtype=torch.float32)
    return Batch(
        x=torch.zeros(len(logits), 1, 1, 1), y=torch.as_tensor(y), logits=logits, index=torch.arange(len(logits))
    )


# -- agreement with scikit-learn ------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_and_per_class_match_sklearn(seed, untouched):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

    g = torch.Generator().manual_seed(seed)
    K, N = 7, 300
    logits = torch.randn(N, K, generator=g)
    y = torch.randint(0, K - 1, (N,), generator=g)  # class 6 never occurs: zero support
    model = untouched(identity_model())
    r = evaluate(model, logits_data(logits, y), topk=(1, 3, 5), batch_size=32)
    pred = logits.argmax(1).numpy()
    assert np.array_equal(r.confusion.numpy(), confusion_matrix(y.numpy(), pred, labels=range(K)))
    p, rec, f1, s = precision_recall_fscore_support(y.numpy(), pred, labels=range(K), zero_division=0)
    assert np.allclose([c["precision"] for c in r.per_class], p)
    assert np.allclose([c["recall"] for c in r.per_class], rec)
    assert np.allclose([c["f1"] for c in r.per_class], f1)
    assert [c["support"] for c in r.per_class] == s.tolist()
    for k in (1, 3, 5):  # no ties in random floats: sklearn's definition applies unchanged
        assert r.topk_accuracy[k] == pytest.approx(
            top_k_accuracy_score(y.numpy(), logits.numpy(), k=k, labels=range(K)), abs=1e-12
        )
    norm = confusion_matrix(y.numpy(), pred, labels=range(K), normalize="true")
    assert np.allclose(r.confusion_normalized[:6].numpy(), norm[:6], atol=1e-6)
    assert r.n == N and r.accuracy == pytest.approx(r.topk_accuracy[1])


def test_zero_support_class_gives_a_zero_row_not_nan():
    acc = EvaluationAccumulator(3, topk=(1,))
    acc.update(batch([[3, 1, 0], [0, 2, 1], [0, 2, 5]], [0, 0, 2]))
    r = acc.compute()
    assert r.confusion.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert torch.isfinite(r.confusion_normalized).all()
    assert r.confusion_normalized.tolist() == [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert r.per_class[1] == {"class": "1", "index": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r.most_confused == [
        {"true": "0", "predicted": "1", "true_index": 0, "predicted_index": 1, "count": 1, "rate": 0.5}
    ]


# -- top-k with ties ---------------------------------------------------------------

TIE_LOGITS = [
    [1, 3, 3, 0],  # y=2 ties class 1 at the top; class 1 has the lower index → rank 1
    [1, 3, 3, 0],  # y=1 → rank 0
    [2, 2, 2, 2],  # y=3, all tied → rank 3
    [0, 5, 1, 1],  # y=3: 5 is above, class 2 ties with the lower index → rank 2
    [4, 0, 0, 0],  # y=0 → rank 0
]
TIE_LABELS = [2, 1, 3, 3, 0]


def brute_force_rank(row, c):
    order = sorted(range(len(row)), key=lambda j: (-row[j], j))  # logit desc, then class index asc
    return order.index(c)


def test_topk_with_ties_hand_computed(untouched):
    ranks = true_class_rank(torch.tensor(TIE_LOGITS, dtype=torch.float32), torch.tensor(TIE_LABELS))
    assert ranks.tolist() == [1, 0, 3, 2, 0]
    assert ranks.tolist() == [brute_force_rank(r, c) for r, c in zip(TIE_LOGITS, TIE_LABELS, strict=True)]
    model = untouched(identity_model())
    r = evaluate(
        model,
        logits_data(torch.tensor(TIE_LOGITS, dtype=torch.float32), torch.tensor(TIE_LABELS)),
        topk=(1, 2, 3, 4),
        batch_size=2,
    )
    assert r.topk_accuracy == {1: 2 / 5, 2: 3 / 5, 3: 4 / 5, 4: 1.0}
    assert r.topk_hits == {1: 2, 2: 3, 3: 4, 4: 5}
    # predictions follow argmax's first maximum, so top-1 = trace / n even with ties
    assert r.confusion.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]]
    assert float(r.confusion.trace()) / r.n == r.topk_accuracy[1]


def test_topk_larger_than_classes_is_a_clear_error(untouched):
    model = untouched(identity_model())
    data = logits_data(torch.rand(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"^top-5 is more than the model's 3 classes; choose k ≤ 3$"):
        evaluate(model, data, topk=(1, 5))
    with pytest.raises(ValueError, match="top-4 is more than the model's 3 classes"):
        EvaluationAccumulator(3, topk=(4,))
    with pytest.raises(ValueError, match="every k must be ≥ 1"):
        EvaluationAccumulator(3, topk=(0,))
    r = evaluate(model, data)  # the default (1, 5) drops the k above the number of classes
    assert list(r.topk_accuracy) == [1]


def test_bad_labels_and_nan_logits(untouched):
    model = untouched(identity_model())
    with pytest.raises(ValueError, match="label 3 is outside the model's classes 0–2"):
        evaluate(model, logits_data(torch.rand(2, 3), torch.tensor([0, 3])), topk=1)
    with pytest.raises(ValueError, match="NaN logits"):
        evaluate(model, logits_data(torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([0])), topk=1)
    with pytest.raises(ValueError, match="dataset is empty"):
        evaluate(model, logits_data(torch.rand(0, 3), torch.zeros(0).long()), topk=1)


# -- shards --------------------------------------------------------------------------


def test_merge_of_shards_equals_one_pass(monkeypatch, untouched):
    g = torch.Generator().manual_seed(3)
    logits = torch.randint(0, 3, (23, 5), generator=g).float()  # many ties
    y = torch.randint(0, 5, (23,), generator=g)
    one = EvaluationAccumulator(5, topk=(1, 2, 4))
    one.update(batch(logits, y))
    a, b = EvaluationAccumulator(5, topk=(1, 2, 4)), EvaluationAccumulator(None, topk=(1, 2, 4))
    a.update(batch(logits[:10], y[:10]))
    b.update(batch(logits[10:], y[10:]))
    for merged in (a.merge(b), b.merge(a)):
        assert torch.equal(merged.confusion, one.confusion) and torch.equal(merged.hits, one.hits)
    empty = EvaluationAccumulator(None, topk=(1, 2, 4))  # a rank that saw no sample
    assert torch.equal(empty.merge(one).confusion, one.confusion)
    with pytest.raises(ValueError, match="same top-k"):
        one.merge(EvaluationAccumulator(5, topk=(1,)))
    # the scan's rank::world shards, merged, equal the single pass (no sample dropped or repeated)
    scan_mod = sys.modules["cnnlens.scanning"]
    model = untouched(identity_model())
    data = logits_data(logits, y)
    full = evaluate(model, data, topk=(1, 2, 4), batch_size=4)
    parts = []
    monkeypatch.setattr(scan_mod, "_gather_merge", lambda accs, world: accs)
    for rank in range(3):
        monkeypatch.setattr(scan_mod, "distributed_info", lambda r=rank: (r, 3))
        acc = EvaluationAccumulator(5, topk=(1, 2, 4))
        scan_mod.scan(model, data, [acc], batch_size=4)
        parts.append(acc)
    assert [int(p.confusion.sum()) for p in parts] == [8, 8, 7]
    merged = parts[0].merge(parts[1]).merge(parts[2]).compute()
    assert torch.equal(merged.confusion, full.confusion) and merged.topk_accuracy == full.topk_accuracy


def test_dataloader_samplers_are_followed_without_padding(untouched):
    g = torch.Generator().manual_seed(4)
    logits, y = torch.randn(9, 4, generator=g), torch.randint(0, 4, (9,), generator=g)
    data = logits_data(logits, y)
    model = untouched(identity_model())
    full = evaluate(model, data, topk=(1, 2))
    shuffled = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)
    assert torch.equal(evaluate(model, shuffled, topk=(1, 2)).confusion, full.confusion)
    # a DistributedSampler pads 9 samples to 10 by repeating one; the scan shards the dataset itself instead
    ds = torch.utils.data.distributed.DistributedSampler(data, num_replicas=2, rank=0, shuffle=False)
    r = evaluate(model, torch.utils.data.DataLoader(data, batch_size=4, sampler=ds), topk=(1, 2))
    assert r.n == 9 and torch.equal(r.confusion, full.confusion)
    # a subset sampler is honoured
    sub = torch.utils.data.DataLoader(data, batch_size=2, sampler=torch.utils.data.SubsetRandomSampler([1, 4, 5]))
    ref = evaluate(model, torch.utils.data.Subset(data, [1, 4, 5]), topk=(1, 2))
    rs = evaluate(model, sub, topk=(1, 2))
    assert rs.n == 3 and torch.equal(rs.confusion, ref.confusion)


# -- files, figures, report ------------------------------------------------------------


def test_image_folder_evaluation_and_saved_files(tmp_path, untouched):
    evalnets.write_colour_folder(tmp_path / "colours")
    model = untouched(evalnets.colour_net())
    r = cnnlens.evaluate(model, str(tmp_path / "colours"), topk=(1, 2), batch_size=5)
    assert r.confusion.tolist() == evalnets.EXPECTED_CONFUSION
    assert r.topk_accuracy == pytest.approx(evalnets.EXPECTED_TOPK)
    assert r.class_names == evalnets.CLASSES
    r.save(tmp_path / "out")
    rows = list(csv.reader(open(tmp_path / "out" / "confusion.csv")))
    assert rows[0] == ["true \\ predicted", "red", "green", "blue"]
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == evalnets.EXPECTED_CONFUSION
    js = json.loads((tmp_path / "out" / "confusion.json").read_text())
    assert js["confusion"] == evalnets.EXPECTED_CONFUSION
    assert js["confusion_normalized"][1] == [0.25, 0.75, 0.0]
    norm = list(csv.reader(open(tmp_path / "out" / "confusion_normalized.csv")))
    assert [float(v) for v in norm[3][1:]] == pytest.approx([0.0, 0.2, 0.8])
    from PIL import Image

    for png in ("confusion.png", "confusion_normalized.png"):
        with Image.open(tmp_path / "out" / png) as im:
            assert im.size[0] > 300 and im.size[1] > 300
    summary = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert summary["topk_accuracy"] == {"1": pytest.approx(11 / 13), "2": pytest.approx(12 / 13)}
    assert summary["most_confused"][0]["true"] == "green" and summary["most_confused"][0]["predicted"] == "red"


def test_large_confusion_figure_shows_the_most_confused_classes():
    K = 100
    C = torch.zeros(K, K, dtype=torch.long)
    C.fill_diagonal_(10)
    planted = [(3, 50, 9), (50, 3, 7), (77, 12, 5), (99, 0, 1)]
    for t, p, n in planted:
        C[t, p] = n
    r = EvaluationResult.from_counts(C, {1: int(C.trace())})
    chosen = most_confused_classes(r.confusion, 20)
    assert {0, 3, 12, 50, 77, 99} <= set(chosen) and len(chosen) == 20 and chosen == sorted(chosen)
    fig = confusion_figure(r, normalized=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in chosen]
    assert "20 of 100 classes" in ax.get_title()
    assert [(p["true_index"], p["predicted_index"], p["count"]) for p in r.most_confused] == planted
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_predict_topk_orders_by_probability(untouched):
    model = untouched(identity_model())
    x = torch.tensor([[0.0, 2.0, 2.0, 1.0], [3.0, 0.0, 1.0, 2.0]]).view(2, 4, 1, 1)
    r = predict_topk(model, x, k=3)
    assert r.classes.tolist() == [[1, 2, 3], [0, 3, 2]]
    p = torch.softmax(x.view(2, 4), 1)
    assert torch.allclose(r.probs, p.gather(1, r.classes))


# -- CLI --------------------------------------------------------------------------------


def needs_load_model():
    import importlib

    if not hasattr(importlib.import_module("cnnlens.models"), "load_model"):
        pytest.skip("cnnlens.models.load_model is not there yet")


def run_cli(*args, timeout=240):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "cnnlens", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_cli_evaluate_end_to_end(tmp_path):
    needs_load_model()
    evalnets.write_colour_folder(tmp_path / "colours")
    out = tmp_path / "report"
    p = run_cli(
        "evaluate",
        "--model",
        "evalnets:colour_net",
        "--data",
        str(tmp_path / "colours"),
        "--topk",
        "1",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(out),
    )
    assert p.returncode == 0, p.stderr
    assert "top-1: 84.62%" in p.stdout and "top-2: 92.31%" in p.stdout
    assert "green" in p.stdout and "0.750" in p.stdout  # green's recall in the per-class table
    for f in (
        "index.html",
        "results.json",
        "confusion.png",
        "confusion_normalized.png",
        "confusion.csv",
        "confusion_normalized.csv",
        "confusion.json",
        "per_class.csv",
        "evaluation.json",
    ):
        assert (out / f).is_file(), f
    assert json.loads((out / "confusion.json").read_text())["confusion"] == evalnets.EXPECTED_CONFUSION
    html = (out / "index.html").read_text()
    assert "Confusion matrix normalised by class support" in html and "evalnets:colour_net" in html
    res = json.loads((out / "results.json").read_text())
    assert res["sections"]["Evaluation"]["evaluation"]["topk_hits"] == {"1": 11, "2": 12}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{tmp}/nowhere"], "not a dataset name and no such directory"),
        (["--data", "{tmp}/colours", "--topk", "1", "7"], "top-7 is more than the model's 3 classes"),
        (["--data", "{tmp}/colours", "--topk", "x"], "--topk 'x' is not an integer"),
        (["--data", "{tmp}/colours", "--topk", "1", "--batch-size", "4", "stray"], "unexpected argument 'stray'"),
    ],
)
def test_cli_bad_input_is_one_line_without_traceback(tmp_path, args, message, monkeypatch, capsys):
    """In-process (the subprocess path is covered above): exit code 2, one error line, no traceback."""
    needs_load_model()
    from cnnlens.cli import main

    evalnets.write_colour_folder(tmp_path / "colours")
    argv = [
        "cnnlens",
        "evaluate",
        "--model",
        "evalnets:colour_net",
        *[a.format(tmp=tmp_path) for a in args],
        "--out",
        str(tmp_path / "out"),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error:") and message in errors[0]
    assert not (tmp_path / "out").exists()


# -- demo section ------------------------------------------------------------------------


def test_demo_section_with_small_stand_ins(untouched):
    from types import SimpleNamespace

    from cnnlens.data import as_dataset
    from cnnlens.demo.evaluation import demo_section
    from cnnlens.models.digits import DigitsCNN, digits_spec
    from cnnlens.models.spec import ModelSpec, PixelModel
    from cnnlens.report import Report

    torch.manual_seed(0)
    digits = untouched(PixelModel(DigitsCNN(widths=(2, 2, 2)), digits_spec()).eval())
    photo_net = untouched(
        PixelModel(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 6)),
            ModelSpec("p", (16, 16), class_names=tuple("abcdef")),
        ).eval()
    )
    x = torch.rand(2, 3, 16, 16)
    calls = []
    ctx = SimpleNamespace(
        digits_model=digits,
        digits_data=as_dataset("digits", digits),
        effnet=photo_net,
        photos=(["one", "two"], x),
        device="cpu",
        progress=lambda what, done, total: calls.append((what, done, total)),
    )
    rep = Report("t")
    demo_section(rep, ctx)
    ev, top = rep.sections
    assert "class support" in ev.intro and "Top-k" in ev.intro
    figures = [b for b in ev.blocks if b.kind == "figure"]
    assert len(figures) == 2
    per_class = next(b for b in ev.blocks if b.kind == "table")
    labels = as_dataset("digits").y if hasattr(as_dataset("digits"), "y") else None
    supports = [int(r[4]) for r in per_class.payload["rows"]]
    assert len(supports) == 10 and sum(supports) == 359
    if labels is not None:
        assert supports == torch.bincount(labels, minlength=10).tolist()
    assert ev.results["evaluation"]["n"] == 359
    assert ("evaluation: digits-cnn", 6, 6) in calls  # 359 images in batches of 64
    gallery = next(b for b in top.blocks if b.kind == "gallery")
    assert [label for _, label in gallery.payload["items"]] == ["one", "two"]
    ref = predict_topk(photo_net, x, k=5)
    got = top.results["topk"]["two"]
    assert [g["index"] for g in got] == ref.classes[1].tolist()
    assert [g["probability"] for g in got] == pytest.approx(ref.probs[1].tolist())


def test_cli_layers_lists_names_and_shapes(monkeypatch, capsys):
    needs_load_model()
    from cnnlens.cli import main
    from cnnlens.cli.layers import layer_table

    monkeypatch.setattr(sys, "argv", ["cnnlens", "layers", "--model", "evalnets:colour_net"])
    main()
    out = capsys.readouterr().out
    for name, shape in (("net.0", "1×3×8×8"), ("net.1", "1×3×1×1"), ("net.2", "1×3")):
        line = next(l for l in out.splitlines() if f" {name} " in l)
        assert shape in line
    # a module run twice is reported (it cannot be tapped); layer_table leaves the model as it was
    relu = nn.ReLU()
    net = nn.Sequential(nn.Conv2d(1, 2, 1), relu, nn.Conv2d(2, 2, 1), relu)
    rows = {r["name"]: r for r in layer_table(net, torch.zeros(1, 1, 3, 3))}
    assert rows["1"]["calls"] == 2 and rows["0"]["params"] == 4 and rows["2"]["shape"] == "1×2×3×3"


def test_evaluation_result_figure_is_the_confusion_matrix():
    from cnnlens.evaluation import EvaluationResult

    C = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 4]])
    r = EvaluationResult.from_counts(C, {1: 12}, ["a", "b", "c"])
    for normalized, M in ((False, C.double()), (True, C.double() / C.sum(1, keepdim=True))):
        fig = r.figure(normalized=normalized)
        ax = fig.axes[0]
        assert torch.allclose(torch.from_numpy(ax.get_images()[0].get_array().data), M)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
        shown = {t.get_text() for t in ax.texts}
        assert shown == ({"0.83", "0.17", "0.40", "0.60", "1.00"} if normalized else {"5", "1", "2", "3", "4"})
