"""Your own model and your own data: weights provenance, spec options, class names, WNID folders, flat folders,
a subset of a model's classes."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import TinyGapNet
from PIL import Image
from safetensors.torch import save_file

import cnnlens
from cnnlens.cli.common import UserError, read_class_names
from cnnlens.data import as_dataset
from cnnlens.evaluation import evaluate, per_class_shown
from cnnlens.figures.evaluation import confusion_figure

RANDOM = "random initial weights: explanations of an untrained model"


def gap1000(num_classes: int = 1000) -> TinyGapNet:
    """A tiny GAP net with ImageNet's 1000 outputs (so cnnlens gives it ImageNet's class names)."""
    return TinyGapNet(k=num_classes)


def _images(folder, n: int, seed: int, size: int = 16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")).save(folder / f"im{i}.png")


def _classes(root, names, n: int = 2):
    for k, c in enumerate(names):
        _images(root / c, n, seed=k)
    return root


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_random_weights_warned_and_class_names_from_the_folders(run_cli, tmp_path):
    data = _classes(tmp_path / "data", ["ant", "bee", "cat"])
    out = tmp_path / "ev"
    code, cap = run_cli(
        "evaluate",
        "--model",
        "conftest:TinyGapNet",
        "--data",
        data,
        "--input-size",
        "16",
        "--mean",
        "0.5",
        "--std",
        "0.25",
        "--topk",
        "1",
        "--out",
        out,
    )
    assert code == 0, cap.err
    assert RANDOM in " ".join(cap.err.split())  # on the terminal
    html = (out / "index.html").read_text()
    assert RANDOM in html and 'class="warning"' in html
    res = _results(out)
    assert any(RANDOM in w for w in res["meta"]["warnings"])
    model = res["meta"]["model"]
    assert (model["input"], model["mean"], model["std"]) == ("3×16×16 pixels in [0, 1]", [0.5] * 3, [0.25] * 3)
    assert model["classes"] == "3: ant, bee, cat (the data's folder names)"
    settings = res["sections"]["Evaluation"]["settings"]
    assert RANDOM in settings["weights"] and settings["labels"].startswith("sorted folder order")
    # the folder names, not 0/1/2, in the terminal table and the CSV
    rows = list(csv.reader((out / "per_class.csv").read_text().splitlines()))
    assert [r[1] for r in rows[1:]] == ["ant", "bee", "cat"]
    assert all(f"│ {c} " in cap.out for c in ("ant", "bee", "cat"))


def test_weights_file_and_sha256_in_the_report_and_results(run_cli, tmp_path):
    net = TinyGapNet(seed=3)
    w = tmp_path / "mine.safetensors"
    save_file(net.state_dict(), str(w))
    sha = hashlib.sha256(w.read_bytes()).hexdigest()
    _images(tmp_path / "flat", 3, seed=1)
    out = tmp_path / "st"
    code, cap = run_cli(
        "inside",
        "stats",
        "--model",
        "conftest:TinyGapNet",
        "--weights",
        w,
        "--data",
        tmp_path / "flat",
        "--layer",
        "features",
        "--input-size",
        "16",
        "--out",
        out,
    )
    assert code == 0, cap.err
    assert RANDOM not in cap.err
    res = _results(out)
    assert res["meta"]["model"]["weights sha256"] == sha and res["meta"]["model"]["weights file"] == str(w)
    assert "warnings" not in res["meta"]
    sec = res["sections"]["Neuron statistics"]["settings"]
    assert sec["weights"] == "file mine.safetensors" and sec["weights sha256"] == sha
    html = (out / "index.html").read_text()
    assert sha in html and RANDOM not in html
    # a flat folder has no labels: no per-class figure, said so
    assert not (out / "class_mean.png").exists() and "no labels" in html
    # the library records the same
    m = cnnlens.load_model("conftest:TinyGapNet", weights=w, input_size=16)
    assert m.spec.extra["weights_sha256"] == sha and not m.spec.random_weights


def test_spec_options_on_the_command_line_equal_load_model_keywords(run_cli, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"0": "x", "1": "y", "2": "z"}))
    out = tmp_path / "f"
    code, cap = run_cli(
        "inside",
        "filters",
        "--model",
        "test_ownmodel:gap1000",
        "--input-size",
        "20,24",
        "--mean",
        "0.1,0.2,0.3",
        "--std",
        "0.5",
        "--class-names",
        names,
        "--num-classes",
        "3",
        "--out",
        out,
    )
    assert code == 0, cap.err
    lib = cnnlens.load_model(
        "test_ownmodel:gap1000",
        input_size=(20, 24),
        mean=(0.1, 0.2, 0.3),
        std=(0.5,),
        class_names=["x", "y", "z"],
        num_classes=3,
    )
    assert lib.spec.std == (0.5, 0.5, 0.5)  # one value: every channel
    assert _results(out)["meta"]["model"] == json.loads(json.dumps(lib.spec.settings()))
    assert _results(out)["meta"]["model"]["classes"] == "3: x, y, z (given)"
    # without --mean/--std/--input-size the report says they are cnnlens's defaults
    code, cap = run_cli("inside", "filters", "--model", "conftest:TinyGapNet", "--out", tmp_path / "g")
    assert code == 0
    assert "input_size, mean, std" in _results(tmp_path / "g")["meta"]["model"]["defaults used"]
    assert "declares no input_size/mean/std" in " ".join(cap.err.split())
    # a factory without num_classes=, and a wrong number of names: one clear error each
    code, cap = run_cli(
        "inside", "filters", "--model", "conftest:TinyGapNet", "--num-classes", "4", "--out", tmp_path / "h"
    )
    assert code == 2 and "conftest:TinyGapNet does not take num_classes=" in " ".join(cap.err.split())
    two = tmp_path / "two.txt"
    two.write_text("a\nb\n")
    code, cap = run_cli(
        "inside", "filters", "--model", "conftest:TinyGapNet", "--class-names", two, "--out", tmp_path / "h"
    )
    assert code == 2 and "2 class names given but conftest:TinyGapNet has 3 outputs" in " ".join(cap.err.split())


def test_class_names_file_formats(tmp_path):
    f = tmp_path / "n.txt"
    f.write_text("cat\n\n dog \nbird\n")
    assert read_class_names(f) == ["cat", "dog", "bird"]
    f.write_text('["cat", "dog"]')
    assert read_class_names(f) == ["cat", "dog"]
    f.write_text('{"1": "dog", "0": "cat"}')
    assert read_class_names(f) == ["cat", "dog"]
    for bad, msg in (
        ('{"0": "a", "2": "b"}', "without gaps"),
        ("[1, [2]]", "list of names"),
        ("", "is empty"),
        ('{"a": "b"}', "map class indices"),
    ):
        f.write_text(bad)
        with pytest.raises(UserError, match=msg):
            read_class_names(f)


def test_wordnet_id_folders_map_through_imagenet_classes(tmp_path, untouched):
    root = _classes(tmp_path / "wn", ["n02124075", "n01440764"])  # Egyptian cat (285), tench (0)
    m = untouched(cnnlens.load_model("test_ownmodel:gap1000", input_size=16))
    ds = as_dataset(root, m)
    assert [int(y) for _, y in ds] == [0, 0, 285, 285]  # sorted folders: n01440764 first
    assert "WordNet IDs" in ds.cnnlens_labels
    assert cnnlens.data.imagenet_wnids()[285] == "n02124075"
    # a 2-class model with WNID folders: sorted order, said so
    m2 = cnnlens.load_model("test_ownmodel:gap1000", num_classes=2, input_size=16)
    ds2 = as_dataset(root, m2)
    assert [int(y) for _, y in ds2] == [0, 0, 1, 1] and ds2.cnnlens_labels.startswith("sorted folder order")
    with pytest.raises(ValueError, match="not one of ImageNet-1k's 1000 classes"):
        as_dataset(_classes(tmp_path / "bad", ["n00000001"]), m)


def test_a_subset_of_1000_classes_shows_the_present_ones(run_cli, tmp_path, untouched):
    root = _classes(tmp_path / "wn", ["n02124075", "n01440764", "n01443537"], n=3)
    m = untouched(cnnlens.load_model("test_ownmodel:gap1000", input_size=16))
    r = evaluate(m, root, topk=(1,))
    rows, what = per_class_shown(r)
    assert [x["class"] for x in rows] == ["tench", "goldfish", "Egyptian cat"]
    assert what == "the 3 classes present in the data (of 1000)"
    fig = confusion_figure(r)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["tench", "goldfish", "Egyptian cat"]
    xs = [t.get_text() for t in ax.get_xticklabels()]
    assert xs[:3] == ["tench", "goldfish", "Egyptian cat"]
    # predictions outside the three classes land in one "other classes" column
    off = int(r.confusion[[0, 1, 285]].sum()) - int(r.confusion[[0, 1, 285]][:, [0, 1, 285]].sum())
    assert (xs[3:] == ["other classes"]) == (off > 0)
    # on the command line: the terminal table and the report table list only those; the CSV all 1000
    out = tmp_path / "ev"
    code, cap = run_cli(
        "evaluate", "--model", "test_ownmodel:gap1000", "--data", root, "--input-size", "16", "--out", out
    )
    assert code == 0, cap.err
    assert "the 3 classes present in the data (of 1000)" in " ".join(cap.out.split())
    assert "│ tench " in cap.out and "│ goldfish " in cap.out and "│ goldfinch " not in cap.out
    assert len((out / "per_class.csv").read_text().strip().splitlines()) == 1001
    html = (out / "index.html").read_text()
    table = html.split("precision</th>")[1].split("</table>")[0]
    assert table.count("<tr>") == 3


def test_neuron_stats_class_means_show_only_present_classes(tmp_path, untouched):
    from cnnlens.figures.inside import class_mean_figure
    from cnnlens.inside import neuron_stats

    root = _classes(tmp_path / "wn", ["n02124075", "n01440764"])
    m = untouched(cnnlens.load_model("test_ownmodel:gap1000", input_size=16))
    st = neuron_stats(m, root, "features")
    fig = class_mean_figure(st, list(m.spec.class_names))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["tench", "Egyptian cat"]
    drawn = torch.from_numpy(np.asarray(fig.axes[0].images[0].get_array(), dtype=np.float32))
    torch.testing.assert_close(drawn, st.class_mean[[0, 285]])
    assert int(st.class_count.sum()) == 4 and int((st.class_count > 0).sum()) == 2


def test_flat_folder_works_where_labels_are_not_needed(run_cli, tmp_path):
    flat = tmp_path / "flat"
    _images(flat, 4, seed=2)
    code, cap = run_cli(
        "inside",
        "search",
        "--model",
        "conftest:TinyGapNet",
        "--data",
        flat,
        "--layer",
        "features",
        "--channels",
        "0,1",
        "--k",
        "2",
        "--input-size",
        "16",
        "--out",
        tmp_path / "s",
    )
    assert code == 0, cap.err
    code, cap = run_cli("evaluate", "--model", "conftest:TinyGapNet", "--data", flat, "--out", tmp_path / "e")
    err = " ".join(cap.err.split())
    assert code == 2 and "cnnlens evaluate needs labelled data" in err
    assert (
        "labels are needed by evaluate, explore, robustness" in err and "a flat folder works for inside search" in err
    )
    ds = as_dataset(flat)
    assert len(ds) == 4 and [int(y) for _, y in ds] == [-1] * 4
