"""Explain a dataset's mistakes or one confused pair straight from the CLI (select_samples + explain --data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def _predictions(model):
    from cnnlens.models.digits import digits_split

    test = digits_split("test")
    with torch.no_grad():
        pred = model(test.x).argmax(1)
    return test.y, pred


def test_select_samples_equals_a_plain_forward(digits_model):
    from cnnlens.evaluation import select_samples

    y, pred = _predictions(digits_model)
    wrong = torch.nonzero(y != pred).flatten().tolist()
    assert select_samples(digits_model, "digits", misclassified=True, batch_size=50) == wrong and len(wrong) == 7
    for r, c in {(int(y[i]), int(pred[i])) for i in wrong}:
        cell = torch.nonzero((y == r) & (pred == c)).flatten().tolist()
        assert select_samples(digits_model, "digits", true=r, predicted=c) == cell
    eights = torch.nonzero(y == 8).flatten().tolist()
    assert select_samples(digits_model, "digits", true=8, limit=5) == eights[:5]


def test_cli_explains_one_confused_cell_with_class_means(digits_model, run_cli, tmp_path):
    y, pred = _predictions(digits_model)
    cell = torch.nonzero((y == 8) & (pred == 5)).flatten().tolist()
    assert cell  # the shipped model confuses an 8 for a 5
    out = tmp_path / "rep"
    code, cap = run_cli(
        "explain",
        "--data",
        "digits",
        "--confused",
        "8,5",
        "--model",
        "digits-cnn",
        "--methods",
        "gradcam",
        "--faithfulness-steps",
        "0",
        "--out",
        out,
    )
    assert code == 0, cap.err
    res = json.loads((out / "results.json").read_text())["sections"]["Explanations"]
    shown = [k for k in res if k.endswith("-label-8")]
    assert sorted(int(k.split("-")[0]) for k in shown) == cell
    for k in shown:
        assert res[k]["top5"][0]["class"] in ("5", 5)  # explained images are predicted 5
    assert res["class_means"] == {"5": len(cell)}
    assert (out / "images" / "explain-class-means.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "digits", "--class", "10"], "out of range: the model has 10 classes"),
        (["--data", "digits", "--confused", "8"], "give the true and the predicted class as R,C"),
        (["--data", "digits", "--confused", "0,0", "--misclassified"], "no image of --data matches the selection"),
    ],
)
def test_bad_selections_are_one_line_errors(run_cli, tmp_path, args, message):
    code, cap = run_cli("explain", *args, "--model", "digits-cnn", "--methods", "gradcam", "--out", tmp_path / "r")
    assert code == 2 and message in cap.err
    assert not (tmp_path / "r").exists()


def test_selection_options_need_data(run_cli, tmp_path):
    img = Path(tmp_path / "a.png")
    from PIL import Image

    Image.new("L", (8, 8), 128).save(img)
    code, cap = run_cli("explain", img, "--misclassified", "--model", "digits-cnn", "--out", tmp_path / "r")
    assert code == 2 and "select from --data" in cap.err
