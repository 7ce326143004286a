"""The attacks demo section (quick mode, a tiny stand-in for EfficientNet) and its report blocks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_section_quick_with_a_stand_in_photo_model(untouched, digits_model):
    from cnnlens.attacks import minimal_eps
    from cnnlens.data import as_dataset
    from cnnlens.demo.attacks import demo_section
    from cnnlens.models.spec import ModelSpec, PixelModel
    from cnnlens.report import Report

    torch.manual_seed(0)
    photo_net = untouched(
        PixelModel(
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6)),
            ModelSpec("p", (16, 16), class_names=tuple("abcdef")),
        ).eval()
    )
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    calls = []
    ctx = SimpleNamespace(
        digits_model=digits_model,
        digits_data=as_dataset("digits", digits_model),
        effnet=photo_net,
        photos=(["one", "two", "three"], x),
        device="cpu",
        quick=True,
        progress=lambda what, done, total: calls.append((what, done, total)),
    )
    rep = Report("t")
    demo_section(rep, ctx)
    attack, robust, conc = rep.sections
    # the prose says what ran: the minimal-ε search over PGD toward the runner-up; three models, two robustified
    assert "second most likely class" in attack.intro and "bisection" in attack.intro
    assert "fast gradient" not in attack.intro and "<p><p>" not in attack.intro
    assert (
        "adversarial training" in robust.intro
        and "‖∂L/∂x‖²" in robust.intro
        and "3 models side by side" in robust.intro
    )
    assert "lecture" not in attack.intro + robust.intro + conc.intro
    assert "1 − (1 − ε)^d" in conc.intro
    # the photo table holds the minimal ε that minimal_eps gives with the quick settings (2 photos in quick mode)
    ref = minimal_eps(photo_net, x[:2], target="second", steps=2, rtol=0.5, max_iter=1)
    got = attack.results["attack"]
    assert list(got) == ["one", "two"]
    for i, name in enumerate(got):
        assert got[name]["eps"] == pytest.approx(float(ref.eps[i]))
        assert got[name]["after"] == int(ref.pred_after[i]) and got[name]["success"] == bool(ref.success[i])
        assert got[name]["goal"] == int(ref.logits_before[i].topk(2).indices[1])
    # robustness: ε = 0 is the clean accuracy of each model on the (quick) subset
    from cnnlens.models.digits import digits_split

    test = digits_split("test")
    sub = list(range(0, len(test), 12))
    with torch.no_grad():
        clean = (digits_model(test.x[sub]).argmax(1) == test.y[sub]).double().mean().item()
    plain = robust.results["plain"]
    assert plain["n"] == len(sub) and plain["clean_accuracy"] == pytest.approx(clean)
    assert plain["accuracy"]["pgd"][0] == pytest.approx(clean) and plain["eps"] == [0.0, pytest.approx(16 / 255)]
    assert set(robust.results) >= {"plain", "adversarial training", "gradient penalty", "saliency_stroke_share"}
    shares = robust.results["saliency_stroke_share"]
    assert all(0 < v < 1 for v in shares.values())
    # concentration data: the formula, and the measured dimensions
    table = conc.results["concentration"]["0.01"]
    assert table["formula"] == pytest.approx([1 - 0.99**d for d in table["d"]])
    assert conc.results["minimal_eps"]["digits-cnn"]["d"] == 1024
    assert conc.results["minimal_eps"]["efficientnet-lite0"]["d"] == 3 * 16 * 16
    assert any(w.startswith("attacks: efficientnet-lite0") for w, _, _ in calls)
    assert sum(b.kind == "figure" for b in robust.blocks) == 3  # curves, gallery, saliency


def test_robustness_run_writes_the_section_and_curves_json_csv():
    """``cnnlens robustness``'s presenter: one section and the three files, the CSV being the result's table."""
    import csv
    import io
    import json

    from inside_nets import pixel_chain_net

    from cnnlens.attacks.curves import robustness
    from cnnlens.attacks.report import add_robustness_run
    from cnnlens.report import Report

    m = pixel_chain_net()
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(1, 16, 16, generator=g), i % 3) for i in range(6)]
    r = robustness(m, data, eps=[0.0, 4 / 255], attacks=["fgsm"], gallery=0, batch_size=4)
    rep = Report("robustness")
    sec = add_robustness_run(rep, "chain", r, settings={"model": "chain"}, figure_title="chain on noise")
    assert [s.title for s in rep.sections] == ["Robustness"] and sec is rep.sections[0]
    assert set(rep._files) == {"curves.png", "robustness.json", "robustness.csv"}
    assert json.loads(rep._files["robustness.json"]) == json.loads(json.dumps(r.to_dict()))
    header, rows = r.table()
    got = list(csv.reader(io.StringIO(rep._files["robustness.csv"].decode())))
    assert got[0] == header and len(got) == len(rows) + 1
