"""`cnnlens attack` and `cnnlens robustness`: the files they write hold the library's values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parse_eps():
    from cnnlens.cli.attack import parse_eps, parse_eps_list
    from cnnlens.cli.common import UserError

    assert parse_eps("2/255") == 2 / 255 and parse_eps("0.01") == 0.01 and parse_eps("0") == 0.0
    assert parse_eps_list("0,1/255, 2/255") == [0.0, 1 / 255, 2 / 255]
    for bad, msg in (("x", "not a number"), ("1/0", "not a number"), ("-1/255", "negative")):
        with pytest.raises(UserError, match=msg):
            parse_eps(bad)
    # under L∞ a budget above the whole [0, 1] range is grey levels meant as n/255; under L2 it is legitimate
    with pytest.raises(UserError, match=r"ε = 8 in pixel units \[0, 1\]; did you mean 8/255\?"):
        parse_eps("8")
    assert parse_eps("1") == 1.0 and parse_eps("8", norm="2") == 8.0
    with pytest.raises(UserError, match="did you mean 4/255"):
        parse_eps_list("0,2/255,4", norm="inf")


def _write_digits(root, per_class=2, flat=False):
    from cnnlens.models.digits import digits_split

    test = digits_split("test")
    paths = []
    for c in range(10):
        idx = (test.y == c).nonzero().view(-1)[:per_class]
        for k, i in enumerate(idx.tolist()):
            d = root if flat else root / str(c)
            d.mkdir(parents=True, exist_ok=True)
            p = d / f"d{c}_{k}.png"
            Image.fromarray((test.x[i, 0].numpy() * 255).round().astype(np.uint8)).save(p)
            paths.append(p)
    return paths


def test_cli_attack_writes_the_library_result(tmp_path, monkeypatch, capsys, digits_model, run_cli):
    from cnnlens.attacks import pgd
    from cnnlens.attacks.report import topk_rows
    from cnnlens.data import read_images

    paths = _write_digits(tmp_path / "img", per_class=1, flat=True)[:3]
    out = tmp_path / "out"
    code, cap = run_cli(
        "attack",
        *map(str, paths),
        "--model",
        "digits-cnn",
        "--method",
        "pgd",
        "--eps",
        "8/255",
        "--steps",
        "5",
        "--target",
        "second",
        "--out",
        str(out),
    )
    assert code == 0, cap.err
    loaded = read_images([str(p) for p in paths], digits_model)
    ref = pgd(digits_model, loaded.images, eps=8 / 255, steps=5, target="second")
    saved = torch.load(out / "x_adv.pt")
    assert torch.equal(saved["x_adv"], ref.x_adv) and torch.equal(saved["x"], loaded.images)
    summary = json.loads((out / "attack.json").read_text())["images"]
    for i, name in enumerate(loaded.names):
        s = summary[name]
        assert s["success"] == bool(ref.success[i]) and s["goal"] == int(ref.classes[i])
        assert s["linf"] == pytest.approx(float(ref.linf()[i])) and s["linf"] <= 8 / 255 + 1e-6
        top = json.loads((out / name / "top5.json").read_text())
        assert top == json.loads(json.dumps(topk_rows(ref, i, digits_model.spec.class_names)))
        adv = np.asarray(Image.open(out / name / "adversarial.png"))
        assert np.array_equal(adv, (ref.x_adv[i, 0].numpy() * 255).round().astype(np.uint8))
        assert (out / name / "original.png").is_file() and (out / name / "perturbation.png").is_file()
    html = (out / "index.html").read_text()
    assert "second most likely class" in html and "digits-cnn" in html
    # the prose says what ran: PGD with one budget, no minimal-ε search, no FGSM
    assert "Projected gradient descent" in html and "5 small steps" in html
    assert "bisection" not in html and "smallest ε" not in html and "fast gradient" not in html
    assert "reached" in cap.out or "yes" in cap.out


def test_cli_minimal_and_fgsm(tmp_path, monkeypatch, capsys, digits_model, run_cli):
    from cnnlens.attacks import fgsm, minimal_eps
    from cnnlens.data import read_images

    paths = _write_digits(tmp_path / "img", per_class=1, flat=True)[:2]
    x = read_images([str(p) for p in paths], digits_model).images
    code, cap = run_cli(
        "attack",
        *map(str, paths),
        "--model",
        "digits-cnn",
        "--method",
        "fgsm",
        "--eps",
        "0.05",
        "--target",
        "untargeted",
        "--out",
        str(tmp_path / "f"),
    )
    assert code == 0, cap.err
    ref = fgsm(digits_model, x, eps=0.05)
    assert torch.equal(torch.load(tmp_path / "f" / "x_adv.pt")["x_adv"], ref.x_adv)
    code, cap = run_cli(
        "attack", *map(str, paths), "--model", "digits-cnn", "--minimal", "--steps", "4", "--out", str(tmp_path / "m")
    )
    assert code == 0, cap.err
    ref = minimal_eps(digits_model, x, steps=4)
    eps = json.loads((tmp_path / "m" / "attack.json").read_text())
    assert [v["eps"] for v in eps["images"].values()] == pytest.approx(ref.eps.tolist())


def test_cli_robustness_matches_the_library(tmp_path, monkeypatch, capsys, digits_model, run_cli):
    from cnnlens.attacks.curves import robustness
    from cnnlens.data import as_dataset

    _write_digits(tmp_path / "folder", per_class=2)
    out = tmp_path / "rob"
    code, cap = run_cli(
        "robustness",
        "--model",
        "digits-cnn",
        "--data",
        str(tmp_path / "folder"),
        "--eps",
        "0,8/255,32/255",
        "--steps",
        "3",
        "--gallery",
        "2",
        "--out",
        str(out),
    )
    assert code == 0, cap.err
    ref = robustness(
        digits_model, as_dataset(str(tmp_path / "folder"), digits_model), eps=[0, 8 / 255, 32 / 255], steps=3, gallery=2
    )
    got = json.loads((out / "robustness.json").read_text())
    assert got["accuracy"] == json.loads(json.dumps(ref.to_dict()["accuracy"]))
    assert got["clean_accuracy"] == pytest.approx(ref.clean_accuracy) and got["n"] == 20
    assert [g["index"] for g in got["gallery"]] == [g["index"] for g in ref.gallery]
    csv = (out / "robustness.csv").read_text().splitlines()
    assert csv[0].startswith("ε in pixel units (L∞),ε in grey levels (×255)") and len(csv) == 4
    row = csv[3].split(",")
    assert (float(row[0]), float(row[1])) == (pytest.approx(32 / 255, abs=1e-6), 32.0)
    assert float(row[csv[0].split(",").index("pgd accuracy")]) == pytest.approx(float(ref.accuracy["pgd"][2]))
    assert (out / "curves.png").is_file() and (out / "index.html").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["attack", "{img}", "--model", "digits-cnn", "--method", "lbfgs"], "--method 'lbfgs' is not known"),
        (["attack", "{img}", "--model", "digits-cnn", "--eps", "two"], "--eps 'two' is not a number"),
        (["attack", "{img}", "--model", "digits-cnn", "--target", "12"], "target class 12 is out of range"),
        (["attack", "{img}", "--model", "digits-cnn", "--norm", "1"], "norm '1' is not supported"),
        (["robustness", "--model", "digits-cnn", "--data", "digits", "--attacks", "lbfgs"], "unknown attack 'lbfgs'"),
        (["robustness", "--model", "digits-cnn", "--data", "digits", "--eps", "0,-1/255"], "negative"),
        (
            ["attack", "{img}", "--model", "digits-cnn", "--eps", "8"],
            "ε = 8 in pixel units [0, 1]; did you mean 8/255?",
        ),
        (["robustness", "--model", "digits-cnn", "--data", "digits", "--eps", "0,4"], "did you mean 4/255?"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, capsys, args, message, run_cli):
    img = _write_digits(tmp_path / "img", per_class=1, flat=True)[0]
    code, cap = run_cli(*[a.format(img=img) for a in args], "--out", str(tmp_path / "out"))
    assert code == 2
    errors = [line for line in cap.err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and message in errors[0], cap.err
    assert "Traceback" not in cap.err and not (tmp_path / "out").exists()
