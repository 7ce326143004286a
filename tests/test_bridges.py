"""The Captum and torchattacks bridges: same numbers as the libraries called directly, cnnlens targets, and the
model left exactly as it was — also when the bridged library itself misbehaves and raises."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from attribution_nets import LinearNet
from conftest import TinyGapNet
from torch import nn

from cnnlens.attacks import from_torchattacks
from cnnlens.attribution import captum, gradcam

pytestmark = pytest.mark.usefixtures("one_thread")


def test_deeplift_on_a_linear_model_is_weight_times_input_difference(untouched):
    net = untouched(LinearNet(c=3, h=4, w=4, k=3))
    x = torch.rand(2, 3, 4, 4)
    e = captum(net, x, "DeepLift", target=[2, 0], baselines="grey")
    assert e.method == "captum:DeepLift" and e.classes.tolist() == [2, 0]
    for i, c in enumerate([2, 0]):
        ref = (net.weight_map(c) * (x[i] - 0.5)).sum(0)  # linear: DeepLIFT = w ⊙ (x − x')
        assert torch.allclose(e.maps[i], ref, atol=1e-6)
    # completeness: Σ map = S(x) − S(baseline)
    y = net(x).detach()
    y0 = net(torch.full_like(x, 0.5)).detach()
    assert torch.allclose(e.maps.sum((1, 2)), y[[0, 1], [2, 0]] - y0[[0, 1], [2, 0]], atol=1e-5)
    assert e.settings["baselines"] == "grey"


def test_the_bridge_gives_what_captum_gives_directly(tiny_gap_net):
    from captum.attr import DeepLift, IntegratedGradients

    x = torch.rand(3, 3, 8, 8)
    m2 = copy.deepcopy(tiny_gap_net)
    for name, cls, kw in (("DeepLift", DeepLift, {}), ("IntegratedGradients", IntegratedGradients, {"n_steps": 8})):
        e = captum(tiny_gap_net, x, name, target="second", **kw)
        classes = tiny_gap_net(x).topk(2, dim=1).indices[:, 1]
        assert torch.equal(e.classes, classes)
        ref = cls(m2).attribute(x, target=classes, **kw).detach()
        assert torch.allclose(e.raw, ref, atol=1e-6) and torch.allclose(e.maps, ref.sum(1), atol=1e-6)
    # a layer method: Captum's LayerGradCam is cnnlens Grad-CAM before the ReLU
    lg = captum(tiny_gap_net, x, "LayerGradCam", layer="features.3")
    g = gradcam(tiny_gap_net, x, layer="features.3", relu=False)
    assert lg.layer == "features.3" and torch.allclose(lg.maps, g.maps, atol=1e-6)


def test_feature_ablation_with_the_default_blocks_by_hand(tiny_gap_net):
    x = torch.rand(2, 3, 8, 8)
    e = captum(tiny_gap_net, x, "FeatureAblation", target=[1, 2], blocks=4)
    assert "4×4 blocks" in e.settings["feature_mask"]
    y = tiny_gap_net(x).detach()
    for i, c in enumerate([1, 2]):
        for bi in range(4):
            for bj in range(4):
                xb = x[i : i + 1].clone()
                xb[..., 2 * bi : 2 * bi + 2, 2 * bj : 2 * bj + 2] = 0  # Captum's default baseline: 0
                drop = y[i, c] - tiny_gap_net(xb).detach()[0, c]
                assert torch.allclose(e.maps[i, 2 * bi : 2 * bi + 2, 2 * bj : 2 * bj + 2], drop.expand(2, 2), atol=1e-5)


def test_perturbation_methods_and_lrp_run_on_a_cnnlens_model(digits_model):
    from cnnlens.models.digits import digits_split

    x = digits_split("test").x[:2]
    lrp = captum(digits_model, x, "LRP")
    assert "normalisation" in lrp.settings["lrp_rules"] and torch.isfinite(lrp.maps).all()
    assert not any(hasattr(m, "rule") for m in digits_model.modules())
    for name in ("Lime", "KernelShap"):
        torch.manual_seed(0)
        e = captum(digits_model, x, name, n_samples=40)
        # one value per 4×4 block (8×8 blocks of a 32×32 image)
        blocks = e.maps.view(2, 8, 4, 8, 4)
        assert torch.allclose(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
    gs = captum(digits_model, x, "GradientShap", n_samples=4)
    assert gs.settings["baselines"] == "black and grey images"


def test_bridge_errors_are_one_line(tiny_gap_net, monkeypatch):
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="did you mean DeepLift"):
        captum(tiny_gap_net, x, "DeepLfit")
    with pytest.raises(ValueError, match="layer method"):
        captum(tiny_gap_net, x, "LayerGradCam")
    with pytest.raises(ValueError, match="sliding_window_shapes"):
        captum(tiny_gap_net, x, "Occlusion")
    with pytest.raises(ValueError, match="takes no argument 'n_sample'"):
        captum(tiny_gap_net, x, "GradientShap", n_sample=3)
    with pytest.raises(ValueError, match="no attack 'PDG'; did you mean PGD"):
        from_torchattacks("PDG", tiny_gap_net, x)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'cnnlens\[captum\]'"):
        captum(tiny_gap_net, x, "DeepLift")


def test_explain_cli_runs_captum_classes(tmp_path, digits_model, run_cli):
    import json

    from test_attacks_cli import _write_digits

    paths = _write_digits(tmp_path / "img", per_class=1, flat=True)[:1]
    code, cap = run_cli(
        "explain",
        str(paths[0]),
        "--model",
        "digits-cnn",
        "--methods",
        "gradcam,captum:DeepLift,captum:LRP",
        "--faithfulness-steps",
        "2",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, cap.err
    info = json.loads(next((tmp_path / "out").glob("*/explanation.json")).read_text())
    assert {"gradcam", "captum:DeepLift", "captum:LRP"} <= set(info["methods"])
    assert "DeepLift (Captum)" in (tmp_path / "out" / "index.html").read_text()
    code, cap = run_cli(
        "explain", str(paths[0]), "--model", "digits-cnn", "--methods", "captum:Nope", "--out", str(tmp_path / "bad")
    )
    assert code == 2 and "captum.attr has no attribution class 'Nope'" in cap.err


def test_from_torchattacks_is_torchattacks_with_cnnlens_bookkeeping(digits_model):
    import torchattacks

    from cnnlens.models.digits import digits_split

    d = digits_split("test")
    x, y = d.x[:6], d.y[:6]
    torch.manual_seed(3)
    r = from_torchattacks("PGD", digits_model, x, y, eps=16 / 255, alpha=4 / 255, steps=5)
    torch.manual_seed(3)
    ref = torchattacks.PGD(copy.deepcopy(digits_model), eps=16 / 255, alpha=4 / 255, steps=5)(x, y)
    assert torch.equal(r.x_adv, ref)
    assert r.settings["method"] == "torchattacks:PGD" and r.settings["norm"] == "inf"
    assert torch.allclose(r.eps, torch.full((6,), 16 / 255)) and (r.linf() <= 16 / 255 + 1e-6).all()
    with torch.no_grad():
        assert torch.equal(r.pred_after, digits_model(ref).argmax(1))
    assert torch.equal(r.success, r.pred_after != y)
    # targeted mode with a cnnlens target
    t = from_torchattacks(torchattacks.PGD, digits_model, x, target="second", eps=32 / 255, alpha=4 / 255, steps=10)
    assert t.targeted and torch.equal(t.success, t.pred_after == t.classes) and t.success.any()
    # a minimum-norm attack: eps is the L2 norm found
    df = from_torchattacks("DeepFool", digits_model, x, y, steps=20)
    assert df.settings["norm"] == "2"
    assert torch.allclose(df.eps[df.success], df.l2()[df.success])


class _Vandal:
    """What a careless library might do to a model before it raises."""

    @staticmethod
    def wreck(model: nn.Module):
        model.train()
        first = next(model.parameters())
        first.requires_grad_(True)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        next(model.modules()).register_forward_hook(lambda m, i, o: o)
        list(model.modules())[-1].register_forward_pre_hook(lambda m, i: None)
        list(model.modules())[-1].rule = "epsilon"
        nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
        raise RuntimeError("the bridged library failed")


class VandalAttribution:
    def __init__(self, forward_func):
        self.model = forward_func

    def attribute(self, inputs, target=None):
        _Vandal.wreck(self.model)


class VandalAttack:
    def __init__(self, model):
        self.model = model

    def forward(self, images, labels):
        _Vandal.wreck(self.model)

    __call__ = forward


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: captum(m, x, VandalAttribution),
        lambda m, x: from_torchattacks(VandalAttack, m, x),
    ],
    ids=["captum", "torchattacks"],
)
def test_the_model_is_restored_when_the_bridged_library_raises(untouched, call):
    m = TinyGapNet()
    m.train()
    next(m.parameters()).requires_grad_(False)
    m.fc.weight.grad = torch.full_like(m.fc.weight, 0.25)
    untouched(m)
    globals_before = len(nn.modules.module._global_forward_hooks)
    with pytest.raises(RuntimeError, match="the bridged library failed"):
        call(m, torch.rand(2, 3, 6, 6))
    assert len(nn.modules.module._global_forward_hooks) == globals_before
    assert not hasattr(m.fc, "rule") and m.training and m.fc.weight.grad is not None
