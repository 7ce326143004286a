"""Reports say exactly what ran: each command's prose mentions only the methods and settings that ran; figures
draw what the text promises; the page works in a browser (clickable images, a wrapping nav bar)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyGapNet
from PIL import Image


def dead_channel_net(num_classes: int = 3) -> TinyGapNet:
    """TinyGapNet whose first conv's channel 1 has a bias of −1000: after the ReLU it never fires."""
    net = TinyGapNet(k=num_classes, seed=1)
    with torch.no_grad():
        net.features[0].bias[1] = -1000.0
    return net


def _digit_files(root: Path, n: int = 3) -> list[Path]:
    from cnnlens.models.digits import digits_split

    test = digits_split("test")
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"d{i}.png"
        Image.fromarray((test.x[i * 7, 0].numpy() * 255).round().astype(np.uint8)).save(p)
        out.append(p)
    return out


def _digit_folder(root: Path, per_class: int = 2) -> Path:
    from cnnlens.models.digits import digits_split

    test = digits_split("test")
    for c in range(10):
        idx = (test.y == c).nonzero().flatten()[:per_class]
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(idx.tolist()):
            Image.fromarray((test.x[i, 0].numpy() * 255).round().astype(np.uint8)).save(root / str(c) / f"{k}.png")
    return root


def _text(out: Path) -> str:
    """The page's words (tags stripped), as a reader sees them."""
    return " ".join(re.sub(r"<[^>]+>", " ", (out / "index.html").read_text()).split())


def test_no_report_text_speaks_of_a_course():
    src = Path(__import__("cnnlens").__file__).parent
    hits = [
        f"{p.relative_to(src)}:{i + 1}"
        for p in src.rglob("*.py")
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines())
        if "lecture" in line.lower()
    ]
    assert hits == []


def test_explain_mentions_only_the_methods_that_ran_and_names_the_layer(run_cli, tmp_path):
    paths = _digit_files(tmp_path / "img")
    out = tmp_path / "ex"
    code, cap = run_cli(
        "explain",
        *paths,
        "--model",
        "digits-cnn",
        "--methods",
        "saliency,gradcam",
        "--faithfulness-steps",
        "0",
        "--out",
        out,
    )
    assert code == 0, cap.err
    text = _text(out)
    assert "Saliency (Simonyan et al. 2014)" in text and "Grad-CAM (Selvaraju et al. 2017)" in text
    for absent in (
        "Occlusion",
        "probability map",
        "Integrated Gradients",
        "SmoothGrad",
        "Deletion",
        "insertion AUC",
        "lecture",
    ):
        assert absent not in text, absent
    res = json.loads((out / "results.json").read_text())
    (sec,) = res["sections"].values()  # one section for all images: each method described once
    assert sec["settings"]["layer"] == "net.features (chosen automatically: the last spatial layer)"
    assert sec["settings"]["faithfulness"] == "not computed"
    assert text.count("back-propagate the class score") == 1
    html = (out / "index.html").read_text()
    assert len(re.findall(r'<img src="images/explain-grid', html)) == 1  # one grid: 3 images × 2 methods


def test_explain_with_occlusion_draws_its_probability_map_and_a_summary_row(run_cli, tmp_path):
    paths = _digit_files(tmp_path / "img", n=2)
    out = tmp_path / "ex"
    code, cap = run_cli(
        "explain",
        *paths,
        "--model",
        "digits-cnn",
        "--methods",
        "occlusion,cam",
        "--layer",
        "features",
        "--faithfulness-steps",
        "4",
        "--baseline",
        "black",
        "--out",
        out,
    )
    assert code == 0, cap.err
    text = _text(out)
    assert "probability map" in text and "The last column is occlusion's probability map" in text
    # how it was computed, as it ran: digits-cnn traces, so only what the square changes was recomputed
    assert "computed by recomputing only each layer's region the square reaches" in text
    assert "only what changes is recomputed" in text
    assert "replace the pixels by black" in text and "blurred" not in text
    assert "mean over 2 image(s)" in text
    res = json.loads((out / "results.json").read_text())
    (sec,) = res["sections"].values()
    assert sec["settings"]["layer"].endswith("(given with --layer)")
    # the figure the text promises: the last column of the grid is occlusion's probability map
    import cnnlens
    from cnnlens.attribution import occlusion
    from cnnlens.figures.attribution import images_by_methods_figure

    m = cnnlens.load_model("digits-cnn")
    x = cnnlens.load_images([str(p) for p in paths], m)
    e = occlusion(m, x, window=8, stride=4)
    fig = images_by_methods_figure(x, ["a", "b"], {"occlusion": e})
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert sum("P(class)" in t for t in titles) == 2
    drawn = [ax.images[0].get_array() for ax in fig.axes if "P(class)" in ax.get_title()]
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(drawn[1]), dtype=torch.float32), e.extras["probability"][1].float()
    )


def test_robustness_on_one_model_speaks_of_what_ran(run_cli, tmp_path):
    data = _digit_folder(tmp_path / "folder", per_class=1)
    out = tmp_path / "rob"
    code, cap = run_cli(
        "robustness",
        "--model",
        "digits-cnn",
        "--data",
        data,
        "--eps",
        "0,8/255",
        "--attacks",
        "fgsm",
        "--gallery",
        "0",
        "--out",
        out,
    )
    assert code == 0, cap.err
    text = _text(out)
    assert "here FGSM, one step of size ε" in text and "solid: PGD" not in text and "dashed: FGSM" in text
    for absent in ("both", "Robustifying", "adversarial training", "side by side", "PGD with"):
        assert absent not in text, absent
    assert "0.0314 (8/255)" in text  # ε in pixel units beside grey levels
    # L2: ε above 1 is legitimate, and the norm is printed beside it
    code, cap = run_cli(
        "robustness",
        "--model",
        "digits-cnn",
        "--data",
        data,
        "--eps",
        "0,1.5",
        "--norm",
        "2",
        "--attacks",
        "fgsm",
        "--gallery",
        "0",
        "--out",
        tmp_path / "l2",
    )
    assert code == 0, cap.err
    assert "1.5 (382/255, L2)" in _text(tmp_path / "l2") and "ε in pixel units (L2)" in cap.out


def test_attack_with_the_minimal_search_says_so(run_cli, tmp_path):
    paths = _digit_files(tmp_path / "img", n=1)
    out = tmp_path / "att"
    code, cap = run_cli(
        "attack", *paths, "--model", "digits-cnn", "--method", "pgd", "--minimal", "--steps", "3", "--out", out
    )
    assert code == 0, cap.err
    text = _text(out)
    assert "the smallest ε that reaches the goal" in text and "bisection" in text
    assert "Every image gets the same budget" not in text and "fast gradient" not in text
    assert "norm L∞" in " ".join(cap.out.split())


def test_inside_commands_describe_only_what_ran(run_cli, tmp_path):
    base = ("--model", "digits-cnn")
    code, cap = run_cli("inside", "filters", *base, "--out", tmp_path / "f")
    assert code == 0 and "Feature maps" not in _text(tmp_path / "f")
    code, cap = run_cli(
        "inside",
        "influence",
        *base,
        "--layer",
        "features.7",
        "--data",
        "digits",
        "--n",
        "4",
        "--no-ablation",
        "--out",
        tmp_path / "i",
    )
    assert code == 0, cap.err
    text = _text(tmp_path / "i")
    assert "no channel was zeroed here" in text and "the ablation measures" not in text
    code, cap = run_cli(
        "inside",
        "influence",
        *base,
        "--layer",
        "features.7",
        "--data",
        "digits",
        "--n",
        "4",
        "--ablate-top",
        "5",
        "--out",
        tmp_path / "i5",
    )
    assert code == 0, cap.err
    assert "here for the 5 channels with the largest" in _text(tmp_path / "i5")
    code, cap = run_cli(
        "inside",
        "deconv",
        *base,
        "--layer",
        "features.3",
        "--channels",
        "0",
        "--data",
        "digits",
        "--n",
        "1",
        "--no-guided",
        "--out",
        tmp_path / "d",
    )
    assert code == 0, cap.err
    assert "Guided backprop" not in _text(tmp_path / "d")
    code, cap = run_cli(
        "inside", "maximize", *base, "--classes", "3", "--steps", "2", "--param", "pixel", "--out", tmp_path / "m"
    )
    assert code == 0, cap.err
    text = _text(tmp_path / "m")
    assert "a class's pre-softmax score" in text and "Here none was used." in text
    assert "Fourier" not in text and "target response" not in text


def test_search_names_channels_that_never_fire(run_cli, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(flat / f"{i}.png")
    out = tmp_path / "s"
    code, cap = run_cli(
        "inside",
        "search",
        "--model",
        "test_report_prose:dead_channel_net",
        "--layer",
        "features.1",
        "--channels",
        "0-2",
        "--k",
        "2",
        "--data",
        flat,
        "--input-size",
        "16",
        "--out",
        out,
    )
    assert code == 0, cap.err
    text = _text(out)
    assert "channel 1 never fired (activation ≤ 0 at every position of every image scanned)" in text
    assert "channel 1: never fired" in cap.out
    assert "no class histogram" in text and "— (no labels)" in text  # a flat folder: no labels
    res = json.loads((out / "results.json").read_text())
    assert res["sections"]["Dataset search"]["search net.features.1"]["never_fired"] == [1]
    assert "3×3 px, upsampled nearest-neighbour" in text


def test_patches_are_upsampled_nearest_neighbour():
    from cnnlens.figures.inside import mosaic

    tile = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3) / 8
    img = mosaic(tile, 1, tile=63, pad=0)
    assert img.shape == (1, 63, 63)
    for r in range(3):
        for c in range(3):
            block = img[0, 21 * r : 21 * r + 21, 21 * c : 21 * c + 21]
            assert torch.all(block == tile[0, 0, r, c])  # each field pixel is one constant 21×21 block


@pytest.mark.browser
def test_explain_grid_and_wrapping_nav_in_a_browser(run_cli, tmp_path):
    from browser import check_page

    from cnnlens.report import Report

    paths = _digit_files(tmp_path / "img", n=2)
    out = tmp_path / "ex"
    code, cap = run_cli(
        "explain",
        *paths,
        "--model",
        "digits-cnn",
        "--methods",
        "saliency,occlusion",
        "--faithfulness-steps",
        "2",
        "--out",
        out,
    )
    assert code == 0, cap.err
    info = check_page(out / "index.html")
    assert info["broken"] == [] and info["console_errors"] == [] and info["external"] == []
    assert info["linked"] == info["images"] > 0  # every image opens at full size
    assert min(info["widths"]) >= 224  # thumbnails and grid cells at least 224 px
    assert info["page_scroll"] <= 0
    # a report with many sections: the nav bar wraps onto several lines instead of scrolling sideways
    rep = Report("many sections")
    for i in range(24):
        rep.section(f"A rather long section title number {i}", intro="x")
    index = rep.write(tmp_path / "nav")
    nav = check_page(index)["nav"]
    assert nav["links"] == 24 and nav["scroll"] <= nav["client"] and nav["height"] > 2 * nav["line"]


def test_explain_takes_images_from_a_flat_folder_with_data(run_cli, tmp_path):
    _digit_files(tmp_path / "flat", n=3)
    out = tmp_path / "ex"
    code, cap = run_cli(
        "explain",
        "--data",
        tmp_path / "flat",
        "--n",
        "2",
        "--model",
        "digits-cnn",
        "--methods",
        "saliency",
        "--faithfulness-steps",
        "0",
        "--out",
        out,
    )
    assert code == 0, cap.err
    res = json.loads((out / "results.json").read_text())
    (sec,) = res["sections"].values()
    assert sec["settings"]["images"] == 2 and set(sec) >= {"0", "1"} and sec["0"]["source"].endswith("flat[0]")
    code, cap = run_cli("explain", "--model", "digits-cnn", "--out", tmp_path / "none")
    assert code == 2 and "give image files or folders, or --data D" in " ".join(cap.err.split())
