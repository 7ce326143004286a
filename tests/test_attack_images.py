"""attack_images (what `cnnlens attack` runs, as a library call) and its report presenter."""

from __future__ import annotations

import io
import json

import pytest
import torch

from cnnlens.attacks import deepfool, pgd
from cnnlens.attacks.images import attack_images, concat_results
from cnnlens.attacks.report import add_attack_run_section
from cnnlens.report import Report

pytestmark = pytest.mark.usefixtures("one_thread")


def _x(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def test_pgd_in_batches_equals_one_pgd_call(tiny_gap_net):
    x = _x()
    run = attack_images(tiny_gap_net, x, "pgd", eps=4 / 255, steps=5, batch_size=2, names=list("abcde"))
    direct = pgd(tiny_gap_net, x, eps=4 / 255, steps=5)
    r = run.result
    assert run.method == "pgd" and run.names == list("abcde") and len(run) == 5
    assert torch.allclose(r.x_adv, direct.x_adv, atol=1e-6)
    assert torch.equal(r.success, direct.success) and torch.equal(r.pred_after, direct.pred_after)
    assert torch.equal(r.classes, direct.classes) and torch.allclose(r.eps, direct.eps)
    assert torch.equal(run.images, x)


def test_deepfool_and_minimal_and_progress(tiny_gap_net):
    x = _x(3)
    done = []
    run = attack_images(tiny_gap_net, x, "deepfool", target="untargeted", batch_size=2, progress=done.append)
    direct = deepfool(tiny_gap_net, x, target=None, steps=50)
    assert done == [1, 2]  # one call per batch
    assert torch.allclose(run.result.x_adv, direct.x_adv, atol=1e-5)
    assert torch.allclose(run.result.eps, direct.eps, atol=1e-5)
    assert attack_images(tiny_gap_net, x, "pgd", minimal=True, steps=3).method == "minimal"
    with pytest.raises(ValueError, match="not known"):
        attack_images(tiny_gap_net, x, "bim")
    with pytest.raises(ValueError, match="PGD"):
        attack_images(tiny_gap_net, x, "fgsm", minimal=True)


def test_concat_results_joins_batches(tiny_gap_net):
    x = _x(4)
    a, b = pgd(tiny_gap_net, x[:2], eps=2 / 255, steps=3), pgd(tiny_gap_net, x[2:], eps=2 / 255, steps=3)
    both = concat_results([a, b])
    assert torch.equal(both.x_adv, torch.cat([a.x_adv, b.x_adv]))
    assert torch.equal(both.success, torch.cat([a.success, b.success]))
    assert both.settings == a.settings and concat_results([a]) is a


def test_presenter_writes_the_run_numbers(tiny_gap_net):
    x = _x(2)
    run = attack_images(tiny_gap_net, x, "fgsm", eps=8 / 255, names=["p", "q"])
    rep = Report("t")
    sec = add_attack_run_section(rep, tiny_gap_net, run, settings={"model": "tiny"})
    assert sec.title == "FGSM attack"
    files = rep._files
    assert {
        "p/original.png",
        "p/adversarial.png",
        "p/perturbation.png",
        "p/top5.json",
        "q/top5.json",
        "attack.json",
        "x_adv.pt",
    } <= set(files)
    summary = json.loads(files["attack.json"])["images"]
    r = run.result
    for i, nm in enumerate(["p", "q"]):
        assert summary[nm]["success"] == bool(r.success[i])
        assert summary[nm]["eps"] == pytest.approx(float(r.eps[i]))
        assert summary[nm]["linf"] == pytest.approx(float(r.linf()[i]))
    saved = torch.load(io.BytesIO(files["x_adv.pt"]))
    assert torch.equal(saved["x_adv"], r.x_adv) and saved["names"] == ["p", "q"]
