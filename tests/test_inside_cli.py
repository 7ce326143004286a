"""`cnnlens inside ...` end to end on digits-cnn (in-process), and the demo section on small stand-ins."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(monkeypatch, capsys, *args):
    from cnnlens.cli import main

    monkeypatch.setattr(sys, "argv", ["cnnlens", "inside", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr()


def _png_ok(path):
    with Image.open(path) as im:
        return im.size[0] > 50 and im.size[1] > 30


def test_rf_search_stats_influence(tmp_path, monkeypatch, capsys, digits_model):
    import cnnlens
    from cnnlens.inside import dataset_search, neuron_stats

    code, io = cli(
        monkeypatch,
        capsys,
        "rf",
        "--model",
        "digits-cnn",
        "--layer",
        "features.0,features.2,features.7",
        "--out",
        str(tmp_path / "rf"),
    )
    assert code == 0, io.err
    rfs = json.loads((tmp_path / "rf" / "receptive_fields.json").read_text())
    assert [r["size"] for r in rfs] == [[3, 3], [4, 4], [18, 18]] and all(r["probe"]["agrees"] for r in rfs)

    code, io = cli(
        monkeypatch,
        capsys,
        "search",
        "--model",
        "digits-cnn",
        "--layer",
        "features.4",
        "--channels",
        "0-2,5",
        "--data",
        "digits",
        "--n",
        "40",
        "--k",
        "5",
        "--out",
        str(tmp_path / "search"),
    )
    assert code == 0, io.err
    got = json.loads((tmp_path / "search" / "search.json").read_text())
    ref = dataset_search(
        digits_model,
        torch.utils.data.Subset(cnnlens.as_dataset("digits", digits_model), range(40)),
        "features.4",
        [0, 1, 2, 5],
        k=5,
    )
    assert got["channels"] == [0, 1, 2, 5] and got["indices"] == ref.indices.tolist()
    assert torch.equal(torch.load(tmp_path / "search" / "search.pt")["crops"], ref.crops)
    assert _png_ok(tmp_path / "search" / "search_0.png") and "channel 5: top activation" in io.out

    code, io = cli(
        monkeypatch,
        capsys,
        "stats",
        "--model",
        "digits-cnn",
        "--layer",
        "features.7",
        "--data",
        "digits",
        "--n",
        "50",
        "--out",
        str(tmp_path / "stats"),
    )
    assert code == 0, io.err
    st = json.loads((tmp_path / "stats" / "stats.json").read_text())
    ref = neuron_stats(
        digits_model, torch.utils.data.Subset(cnnlens.as_dataset("digits", digits_model), range(50)), "features.7"
    )
    assert st["mean"] == pytest.approx(ref.mean.tolist(), rel=1e-6) and st["count"] == 50 * 64
    assert _png_ok(tmp_path / "stats" / "stats.png") and _png_ok(tmp_path / "stats" / "class_mean.png")

    code, io = cli(
        monkeypatch,
        capsys,
        "influence",
        "--model",
        "digits-cnn",
        "--layer",
        "features.7",
        "--data",
        "digits",
        "--n",
        "20",
        "--target",
        "true",
        "--out",
        str(tmp_path / "inf"),
    )
    assert code == 0, io.err
    inf = json.loads((tmp_path / "inf" / "influence.json").read_text())
    # by default only the 16 channels highest by a·∂y/∂a are zeroed (every channel is ranked)
    zeroed = [i for i, v in enumerate(inf["ablation"]) if v is not None]
    assert len(inf["taylor"]) == 64 and inf["count"] == 20
    assert sorted(zeroed) == sorted(torch.argsort(torch.tensor(inf["taylor"]), descending=True)[:16].tolist())
    assert inf["settings"]["ablated"] == [
        inf["channels"][i] for i in torch.argsort(torch.tensor(inf["taylor"]), descending=True)[:16].tolist()
    ]
    # digits-cnn reads features.7 through global average pooling + linear: a·∂y/∂a is the exact drop
    assert [inf["taylor"][i] for i in zeroed] == pytest.approx([inf["ablation"][i] for i in zeroed], abs=1e-4)
    res = json.loads((tmp_path / "inf" / "results.json").read_text())
    assert "Channel influence" in res["sections"]


def test_filters_maximize_deconv_dream(tmp_path, monkeypatch, capsys, digits_model):
    code, io = cli(monkeypatch, capsys, "filters", "--model", "digits-cnn", "--out", str(tmp_path / "f"))
    assert code == 0, io.err
    f = json.loads((tmp_path / "f" / "filters.json").read_text())
    assert f["layer"] == "net.features.0" and f["mode"] == "grey"
    assert torch.equal(
        torch.load(tmp_path / "f" / "filters.pt")["weights"], digits_model.net.features[0].weight.detach()
    )

    code, io = cli(
        monkeypatch,
        capsys,
        "maximize",
        "--model",
        "digits-cnn",
        "--classes",
        "3,7",
        "--steps",
        "20",
        "--param",
        "pixel",
        "--tv",
        "0.5",
        "--out",
        str(tmp_path / "m"),
    )
    assert code == 0, io.err
    m = json.loads((tmp_path / "m" / "maximize.json").read_text())
    assert all(b > a + 5 for a, b in zip(m["start"], m["final"], strict=True)) and m["settings"]["tv"] == 0.5

    code, io = cli(
        monkeypatch,
        capsys,
        "deconv",
        "--model",
        "digits-cnn",
        "--layer",
        "features.7",
        "--channels",
        "1,2",
        "--data",
        "digits",
        "--n",
        "2",
        "--out",
        str(tmp_path / "d"),
    )
    assert code == 0, io.err
    d = json.loads((tmp_path / "d" / "deconv_ch2.json").read_text())
    assert d["channel"] == 2 and d["chain"][0] == "normalize" and _png_ok(tmp_path / "d" / "deconv.png")

    code, io = cli(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        "digits-cnn",
        "--data",
        "digits",
        "--layer",
        "features.4",
        "--octaves",
        "2",
        "--steps",
        "3",
        "--out",
        str(tmp_path / "dr"),
    )
    assert code == 0, io.err
    dr = json.loads((tmp_path / "dr" / "dream.json").read_text())
    assert dr["final"][0] > dr["start"][0]
    with Image.open(tmp_path / "dr" / "dream_0.png") as im:
        assert im.size == (32, 32)


@pytest.mark.parametrize(
    "args, message",
    [
        (["search", "--layer", "features.4", "--channels", "a-b", "--data", "digits"], "--channels 'a-b'"),
        (["search", "--layer", "features.44", "--data", "digits"], "not in the model"),
        (["stats", "--layer", "features.4"], "give --data"),
        (["maximize", "--layer", "features.4", "--classes", "3"], "give --layer L"),
        (["deconv", "--layer", "features.4"], "--image"),
    ],
)
def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys, args, message):
    code, io = cli(monkeypatch, capsys, args[0], "--model", "digits-cnn", *args[1:], "--out", str(tmp_path / "o"))
    errors = [line for line in io.err.splitlines() if line.startswith("error")]
    assert code == 2 and "Traceback" not in io.err
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "o").exists()


class _TinyEff(nn.Module):
    """Stand-in with EfficientNet-Lite0's layer names: conv_stem, blocks.0…4, a 1000-class head."""

    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()) for _ in range(5)])
        self.head = nn.Linear(4, 1000)

    def forward(self, x):
        return self.head(self.blocks(self.conv_stem(x)).mean((2, 3)))


def test_demo_section_quick(untouched, digits_model):
    import cnnlens
    from cnnlens.demo.inside import demo_section
    from cnnlens.models.spec import ModelSpec, PixelModel
    from cnnlens.report import Report

    torch.manual_seed(0)
    eff = untouched(
        PixelModel(_TinyEff(), ModelSpec("e", (32, 32), class_names=tuple(f"c{i}" for i in range(1000)))).eval()
    )
    calls = []
    ctx = SimpleNamespace(
        effnet=eff,
        photos=(["one"], torch.rand(1, 3, 32, 32)),
        digits_model=digits_model,
        digits_data=cnnlens.as_dataset("digits", digits_model),
        quick=True,
        device="cpu",
        progress=lambda what, done, total: calls.append((what, done, total)),
    )
    rep = Report("t")
    demo_section(rep, ctx)
    titles = [s.title for s in rep.sections]
    assert titles == [
        "Inside: filters and feature maps",
        "Inside: activation maximisation",
        "Inside: Deep Dream",
        "Inside: receptive fields",
        "Inside: dataset search (maximally activating patches)",
        "Inside: neuron statistics",
        "Inside: channel influence",
        "Inside: deconvnet and guided backprop",
    ]
    assert all(s.intro for s in rep.sections)
    rf = next(s for s in rep.sections if s.title == "Inside: receptive fields")
    assert [r["size"][0] for r in rf.results["receptive fields"]] == [3, 4, 8, 10, 18, 18]
    inf = next(s for s in rep.sections if s.title == "Inside: channel influence").results["influence net.features.7"]
    assert inf["taylor"] == pytest.approx(inf["ablation"], abs=1e-4)
    assert ("inside: efficientnet-lite0", 3, 3) in calls
    html = rep.render_html()
    assert "maximally activating" in html and "switches" in html
