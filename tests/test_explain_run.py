"""explain_images: cnnlens explain's work as a library call; add_explain_section presents it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TinyGapNet

from cnnlens import attribution
from cnnlens.attribution.explain import ExplainRun, explain_images
from cnnlens.attribution.report import add_explain_section
from cnnlens.report import Report


def test_explain_images_equals_each_method_and_keeps_failures(untouched, one_thread):
    model = untouched(TinyGapNet().eval())
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    seen = []
    run = explain_images(
        model,
        x,
        ["saliency", "gradcam", "ablation_cam"],
        names=["a", "b", "c"],
        settings={"ablation_cam": {"layer": "fc"}},
        faithfulness_steps=4,
        baseline="black",
        progress=lambda stage, d, t: seen.append((stage, d, t)),
    )
    assert isinstance(run, ExplainRun) and len(run) == 3 and run.names == ["a", "b", "c"]
    assert set(run.explanations) == {"saliency", "gradcam"}
    assert "ablation_cam" in run.failures and "fc" in run.failures["ablation_cam"]  # the reason is kept
    assert torch.equal(run.explanations["saliency"].maps, attribution.saliency(model, x).maps)
    assert torch.allclose(run.explanations["gradcam"].maps, attribution.gradcam(model, x).maps)
    f = attribution.faithfulness(model, x, run.explanations["gradcam"], steps=4, baseline="black")
    assert torch.allclose(run.faithfulness["gradcam"].deletion_auc, f.deletion_auc)
    assert set(run.seconds) == {"saliency", "gradcam"} and all(s >= 0 for s in run.seconds.values())
    assert run.top.classes[:, 0].tolist() == model(x).argmax(1).tolist()
    assert seen[-1] == ("faithfulness", 3 * 3 * 2, 3 * 3 * 2)  # images × methods × (map, faithfulness)
    assert repr(run).splitlines()[0] == "ExplainRun: 2 method(s) on 3 image(s), 1 did not apply"
    with pytest.raises(ValueError, match="no method applies"):
        explain_images(model, x, ["ablation_cam"], settings={"ablation_cam": {"layer": "fc"}})
    with pytest.raises(ValueError, match="unknown attribution method 'nope'"):
        explain_images(model, x, ["nope"])


def test_add_explain_section_writes_the_page_and_the_files(untouched, one_thread, tmp_path):
    model = untouched(TinyGapNet().eval())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    run = explain_images(model, x, ["saliency", "gradcam"], names=["p", "q"], faithfulness_steps=3)
    rep = Report("explain")
    add_explain_section(rep, run, model="tiny", sources=["p.png", "q.png"])
    index = rep.write(tmp_path / "out")
    out = index.parent
    for name in ("p", "q"):
        for f in ("grid.png", "original.png", "saliency.png", "gradcam.png", "top5.png", "maps.pt"):
            assert (out / name / f).stat().st_size > 0, f
        info = json.loads((out / name / "explanation.json").read_text())
        i = ["p", "q"].index(name)
        assert info["source"] == f"{name}.png"
        assert info["methods"]["gradcam"]["deletion_auc"] == pytest.approx(
            float(run.faithfulness["gradcam"].deletion_auc[i])
        )
        maps = torch.load(out / name / "maps.pt")
        assert torch.equal(maps["saliency"], run.explanations["saliency"].maps[i])
    assert "Grad-CAM" in index.read_text()
