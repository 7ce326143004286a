"""`cnnlens benchmark` on cluttered digits and on an ImageFolder with a boxes CSV; boxes through the resize."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import cnnlens
from cnnlens import attribution, metrics
from cnnlens.data import Preprocess, box_to_input, boxed_image_folder, read_boxes_csv


def test_cli_benchmark_on_cluttered_digits_writes_the_leaderboard(tmp_path, run_cli):
    out = tmp_path / "b"
    code, cap = run_cli(
        "benchmark",
        "--n",
        "3",
        "--methods",
        "gradcam,saliency",
        "--metrics",
        "pointing-game,relevance-mass-accuracy,road-morf",
        "--out",
        out,
    )
    text = cap.out + cap.err
    assert code == 0, text
    assert "How far to trust each map" in text and "gradcam" in text
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert {(r["method"], r["metric"]) for r in rows} == {
        (m, k) for m in ("gradcam", "saliency") for k in ("pointing_game", "relevance_mass_accuracy", "road_morf")
    }
    # the numbers are the metrics of the maps of the first 3 held-out images, explained for their label
    model = cnnlens.load_model("cluttered-digits-cnn")
    ds = cnnlens.data.cluttered_digits("test")
    e = attribution.gradcam(model, ds.x[:3], target="true", y=ds.y[:3])
    want = metrics.relevance_mass_accuracy(e, ds.boxes[:3]).mean
    got = next(float(r["mean"]) for r in rows if r["method"] == "gradcam" and r["metric"] == "relevance_mass_accuracy")
    assert got == pytest.approx(want, rel=1e-5)
    html = (out / "index.html").read_text()
    assert "How far to trust each map" in html and "pointing game" in html
    lb = json.loads((out / "leaderboard.json").read_text())
    assert lb["n"] == 3 and lb["methods"] == ["gradcam", "saliency"]


def test_cli_benchmark_errors_are_one_line(tmp_path, run_cli):
    code, cap = run_cli("benchmark", "--metrics", "accuracy", "--out", tmp_path / "x")
    assert code == 2 and "unknown accuracy" in cap.err
    code, cap = run_cli("benchmark", "--model", "digits-cnn", "--out", tmp_path / "x")
    assert code == 2 and "--data" in cap.err


@pytest.mark.parametrize("resize", ["crop", "stretch"])
def test_box_follows_the_image_through_the_resize(resize):
    """A white rectangle in a black image: after preprocessing, its bright pixels lie in the mapped box,
    and the box is at most one pixel larger on each side."""
    from PIL import Image

    w, h, box = 400, 300, (100, 50, 200, 150)
    a = np.zeros((h, w, 3), np.uint8)
    a[box[1] : box[3], box[0] : box[2]] = 255
    pre = Preprocess(size=(224, 224), channels=3, resize=resize)
    t = pre(Image.fromarray(a))[0]
    ys, xs = torch.nonzero(t > 0.5, as_tuple=True)
    x0, y0, x1, y1 = box_to_input(box, (w, h), pre)
    assert x0 <= int(xs.min()) and int(xs.max()) < x1 and y0 <= int(ys.min()) and int(ys.max()) < y1
    assert int(xs.min()) - x0 <= 1 and x1 - 1 - int(xs.max()) <= 1
    assert int(ys.min()) - y0 <= 1 and y1 - 1 - int(ys.max()) <= 1


def test_image_folder_with_boxes_csv(tmp_path, run_cli):
    from PIL import Image

    rng = np.random.RandomState(0)
    root = tmp_path / "imgs"
    lines = ["path,x0,y0,x1,y1"]
    for c in ("0", "1"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            a = (rng.rand(40, 48) * 60).astype(np.uint8)
            x0, y0 = 6 + 10 * i, 4 + 8 * i
            a[y0 : y0 + 16, x0 : x0 + 12] = 255
            Image.fromarray(a).save(root / c / f"{i}.png")
            lines.append(f"{c}/{i}.png,{x0},{y0},{x0 + 12},{y0 + 16}")
    (tmp_path / "boxes.csv").write_text("\n".join(lines) + "\n")
    model = cnnlens.load_model("digits-cnn")
    ds = boxed_image_folder(root, tmp_path / "boxes.csv", model)
    assert ds.x.shape == (4, 1, 32, 32) and ds.y.tolist() == [0, 0, 1, 1]
    inside = (ds.x[:, 0] * ds.masks).sum((1, 2)) / ds.masks.sum((1, 2))
    outside = (ds.x[:, 0] * ~ds.masks).sum((1, 2)) / (~ds.masks).sum((1, 2))
    assert (inside > 0.8).all() and (outside < 0.3).all()
    out = tmp_path / "b"
    code, cap = run_cli(
        "benchmark",
        "--model",
        "digits-cnn",
        "--data",
        root,
        "--boxes",
        tmp_path / "boxes.csv",
        "--methods",
        "cam",
        "--metrics",
        "pointing-game,deletion-auc",
        "--out",
        out,
    )
    assert code == 0, cap
    assert len(list(csv.DictReader(open(out / "leaderboard.csv")))) == 2
    # a bad CSV is named with its line
    (tmp_path / "bad.csv").write_text("path,x0,y0,x1,y1\n0/0.png,5,5,2,9\n")
    with pytest.raises(ValueError, match="line 2: the box .* is empty"):
        read_boxes_csv(tmp_path / "bad.csv")
    (tmp_path / "other.csv").write_text("path,x0,y0,x1,y1\n7/9.png,1,1,5,5\n")
    with pytest.raises(ValueError, match="not in"):
        boxed_image_folder(root, tmp_path / "other.csv", model)
