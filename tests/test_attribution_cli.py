"""`cnnlens explain` writes the library's values; the attribution demo section holds them too."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")


def _digit_pngs(root, n=3):
    from cnnlens.models.digits import digits_split

    test = digits_split("test")
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"d{i}.png"
        Image.fromarray((test.x[7 * i, 0].numpy() * 255).round().astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def test_parse_methods():
    from cnnlens.cli.common import UserError
    from cnnlens.cli.explain import parse_methods

    assert parse_methods("saliency, Grad-CAM,augmented-gradcam,gradcam") == ["saliency", "gradcam", "augmented_gradcam"]
    assert parse_methods("gradcam++,ig,guided-backprop") == ["gradcam_pp", "integrated_gradients", "guided_backprop"]
    from cnnlens.attribution import METHODS

    assert parse_methods(" ALL ") == list(METHODS)
    assert {
        "saliency",
        "smoothgrad",
        "gradient_x_input",
        "integrated_gradients",
        "occlusion",
        "cam",
        "gradcam",
        "gradcam_pp",
        "guided_backprop",
        "guided_gradcam",
        "augmented_gradcam",
        "xgradcam",
        "hirescam",
        "layercam",
        "eigencam",
        "ablation_cam",
        "score_cam",
    } <= set(METHODS)
    with pytest.raises(UserError, match="unknown method 'lime'"):
        parse_methods("saliency,lime")


def test_cli_explain_writes_the_library_result(tmp_path, monkeypatch, capsys, digits_model, run_cli):
    from cnnlens.attribution import augmented_gradcam, faithfulness, gradcam, occlusion, saliency
    from cnnlens.data import read_images
    from cnnlens.evaluation import predict_topk

    paths = _digit_pngs(tmp_path / "img")
    out = tmp_path / "out"
    code, cap = run_cli(
        "explain",
        *map(str, paths),
        "--model",
        "digits-cnn",
        "--methods",
        "saliency,occlusion,gradcam,augmented-gradcam",
        "--target",
        "second",
        "--window",
        "8",
        "--stride",
        "4",
        "--augmentations",
        "4",
        "--faithfulness-steps",
        "4",
        "--baseline",
        "black",
        "--out",
        str(out),
    )
    assert code == 0, cap.err
    loaded = read_images([str(p) for p in paths], digits_model)
    x = loaded.images
    ref = {
        "saliency": saliency(digits_model, x, target="second"),
        "occlusion": occlusion(digits_model, x, target="second", window=8, stride=4),
        "gradcam": gradcam(digits_model, x, target="second"),
        "augmented_gradcam": augmented_gradcam(digits_model, x, target="second", augmentations=4),
    }
    second = digits_model(x).topk(2).indices[:, 1]
    top = predict_topk(digits_model, x, k=5)
    for i, name in enumerate(loaded.names):
        d = out / name
        for f in (
            "original.png",
            "saliency.png",
            "occlusion.png",
            "gradcam.png",
            "augmented-gradcam.png",
            "top5.png",
            "grid.png",
        ):
            assert (d / f).is_file(), f
        maps = torch.load(d / "maps.pt")
        info = json.loads((d / "explanation.json").read_text())
        assert [t["class"] for t in info["top5"]] == [c for c, _ in top.labels(i)]
        for m, e in ref.items():
            assert torch.allclose(maps[m], e.maps[i], atol=1e-6), m
            assert info["methods"][m]["class"] == int(second[i])
        f = faithfulness(digits_model, x, ref["gradcam"], steps=4, baseline="black")
        assert info["methods"]["gradcam"]["deletion_auc"] == pytest.approx(float(f.deletion_auc[i]), abs=1e-6)
        assert info["methods"]["gradcam"]["insertion_auc"] == pytest.approx(float(f.insertion_auc[i]), abs=1e-6)
    html = (out / "index.html").read_text()
    assert "pre-softmax" in html and "argmin" in html and "digits-cnn" in html
    assert "del " in cap.out and "Grad-CAM" in cap.out
    assert f.insertion_auc.max() > 0.01  # black → the digit's strokes: the second class shows up somewhere


def test_cli_explain_bad_input_is_one_line(tmp_path, monkeypatch, capsys, run_cli):
    paths = _digit_pngs(tmp_path / "img", n=1)
    code, cap = run_cli(
        "explain", str(paths[0]), "--model", "digits-cnn", "--methods", "lime", "--out", str(tmp_path / "o")
    )
    assert code == 2 and "unknown method 'lime'" in cap.err and "Traceback" not in cap.err
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    code, cap = run_cli("explain", str(bad), "--model", "digits-cnn", "--out", str(tmp_path / "o"))
    assert code == 2 and "not-an-image.png" in cap.err and "Traceback" not in cap.err
    code, cap = run_cli(
        "explain",
        str(paths[0]),
        "--model",
        "digits-cnn",
        "--target",
        "11",
        "--methods",
        "saliency",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "out of range" in cap.err
    code, cap = run_cli(
        "explain", str(paths[0]), "--model", "digits-cnn", "--layer", "features.33", "--out", str(tmp_path / "o")
    )
    assert code == 2 and "layer 'features.33' is not in the model" in cap.err and "did you mean" in cap.err
    assert not (tmp_path / "o").exists()  # nothing written for a failed run


def test_demo_section_quick(untouched, digits_model):
    from cnnlens.attribution import cam, faithfulness, gradcam
    from cnnlens.data import as_dataset
    from cnnlens.demo.attribution import demo_section
    from cnnlens.models.spec import ModelSpec, PixelModel
    from cnnlens.report import Report

    photo_net = PixelModel(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)),
        ModelSpec("p", (32, 32), class_names=tuple("abcde")),
    ).eval()
    untouched(photo_net)
    x = torch.rand(2, 3, 32, 32)
    calls = []
    ctx = SimpleNamespace(
        digits_model=digits_model,
        digits_data=as_dataset("digits", digits_model),
        effnet=photo_net,
        photos=(["one", "two"], x),
        device="cpu",
        quick=True,
        progress=lambda what, done, total: calls.append((what, done, total)),
    )
    rep = Report("t")
    demo_section(rep, ctx)
    photos, digits = rep.sections
    text = " ".join(b.payload.get("html", "") for b in photos.blocks)
    assert "pre-softmax" in text and "Σ<sub>x,y</sub> M<sub>c</sub>" in text and "argmin" in text
    assert "probability map" in text and "Adebayo" in text
    # the numbers next to each map are the library's
    g = gradcam(photo_net, x)
    f = faithfulness(photo_net, x, g, steps=4)
    for i, n in enumerate(["one", "two"]):
        got = photos.results["gradcam"][n]
        assert got["class"] == int(g.classes[i])
        assert got["deletion_auc"] == pytest.approx(float(f.deletion_auc[i]), abs=1e-6)
        assert got["insertion_auc"] == pytest.approx(float(f.insertion_auc[i]), abs=1e-6)
    assert photos.results["cam"]["one"]["class"] == int(cam(photo_net, x).classes[0])
    assert "How far to trust each map" in text  # the randomisation check lives in that section now
    # every guided map carries the sanity-check note: in the text and under the map itself
    dtext = " ".join(b.payload.get("html", "") for b in digits.blocks)
    assert dtext.count("⚠ Sanity check") == 1 and "guided_backprop" in digits.results
    from cnnlens.attribution import guided_backprop
    from cnnlens.figures.attribution import GUIDED_MARK, method_figure

    fig = method_figure(x[:1], ["one"], guided_backprop(photo_net, x[:1]))
    assert any(t.get_text() == GUIDED_MARK for ax in fig.axes for t in ax.texts)
    fig = method_figure(x[:1], ["one"], gradcam(photo_net, x[:1]))
    assert not any(t.get_text() == GUIDED_MARK for ax in fig.axes for t in ax.texts)
    assert set(digits.results) >= {"saliency", "occlusion", "cam", "gradcam", "guided_backprop"}
    for m, per in digits.results.items():
        if m == "settings":
            continue
        for v in per.values():
            assert 0 <= v["deletion_auc"] <= 1 and 0 <= v["insertion_auc"] <= 1
    assert any(w.startswith("attribution") for w, _, _ in calls)
    rep.write(rep_dir := __import__("tempfile").mkdtemp())
    assert json.loads((__import__("pathlib").Path(rep_dir) / "results.json").read_text())["sections"]


def test_explanation_figure_draws_each_map_over_its_image(digits_model):
    """The figure shows the map's own values (Grad-CAM is not clipped) over the image, named by class."""
    from cnnlens.attribution import gradcam, occlusion
    from cnnlens.models.digits import digits_split

    x = digits_split("test").x[:3]
    e = gradcam(digits_model, x)
    fig = e.figure(x, names=["a", "b", "c"], class_names=digits_model.spec.class_names)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == [
        f"{n}: {digits_model.spec.class_names[int(c)]}" for n, c in zip("abc", e.classes, strict=True)
    ]
    for i, ax in enumerate(axes):
        image, heat = ax.get_images()
        np.testing.assert_allclose(image.get_array(), x[i, 0].numpy(), atol=1e-6)
        np.testing.assert_allclose(heat.get_array(), e.maps[i].numpy(), atol=1e-6)
    assert len(fig.axes) == 6  # three maps, three colour bars
    occ = occlusion(digits_model, x[:2], window=4, stride=2)
    assert sum("P(class)" in ax.get_title() for ax in occ.figure(x[:2]).axes) == 2  # the probability row
    with pytest.raises(ValueError, match="pass the x you explained"):
        e.figure(x[:2])
