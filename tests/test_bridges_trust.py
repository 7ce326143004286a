"""Bridged methods you can trust (issue 25): completeness checked, reused and functional modules handled on a
traced copy, the rules Captum lacks, one-line failures — on torchvision's ResNet-18, MobileNetV2, DenseNet-121 and
VGG-11 (random weights, batch-norm statistics measured on random images so the logits move with the input)."""

from __future__ import annotations

import copy
import logging
import types

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cnnlens.attacks import from_torchattacks
from cnnlens.attribution import captum
from cnnlens.attribution.completeness import INCOMPLETE
from cnnlens.attribution.report import method_note
from cnnlens.figures.attribution import INCOMPLETE_MARK
from cnnlens.results import Explanation
from cnnlens.tap import guarded
from cnnlens.traced import CallSites, shallow_module

pytestmark = pytest.mark.usefixtures("one_thread")
S = 32  # image side: small, and every one of the four models still runs on it


def _calibrated(make) -> nn.Module:
    """Random weights; each batch norm's statistics measured on 16 random images (cumulative average)."""
    torch.manual_seed(0)
    m = make(weights=None)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None
    m.train()
    with torch.no_grad():
        m(torch.rand(16, 3, S, S))
    return m.eval()


@pytest.fixture(scope="module")
def resnet18():
    return _calibrated(torchvision.models.resnet18)


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(1))


def _twin(resnet: nn.Module) -> nn.Module:
    """ResNet-18 de-duplicated by hand, as Captum's docs ask: two out-of-place ReLUs per block."""
    twin = copy.deepcopy(resnet)
    twin.relu = nn.ReLU()

    def forward(b, x):
        identity = x if b.downsample is None else b.downsample(x)
        out = b.relu_a(b.bn1(b.conv1(x)))
        return b.relu_b(b.bn2(b.conv2(out)) + identity)

    for b in twin.modules():
        if isinstance(b, torchvision.models.resnet.BasicBlock):
            b.relu_a, b.relu_b = nn.ReLU(), nn.ReLU()
            b.forward = types.MethodType(forward, b)
    return twin


def test_deeplift_runs_on_resnet18_and_equals_captum_on_the_hand_deduplicated_twin(resnet18, x, untouched):
    from captum.attr import DeepLift

    untouched(resnet18)
    with guarded(resnet18), pytest.raises(RuntimeError, match="does not contain some of the input/output"):
        DeepLift(resnet18).attribute(x.clone(), target=3)  # what Captum alone does
    e = captum(resnet18, x, "DeepLift", target=3)
    twin = _twin(resnet18)
    want = DeepLift(twin).attribute(x.clone().requires_grad_(), target=3).detach()
    assert e.raw.abs().max() > 1e-4  # a map, not zeros
    assert (e.raw - want).abs().max() <= 1e-6
    assert e.extras["complete"] is True and float(e.extras["completeness_gap"].max()) < 1e-3
    assert "8 module(s) called more than once split per call" in e.settings["traced"]


def test_lrp_on_resnet18_is_flagged_and_on_vgg11_adds_up(resnet18, x, untouched, caplog):
    untouched(resnet18)
    with caplog.at_level(logging.WARNING, logger="cnnlens"):
        e = captum(resnet18, x, "LRP", target=3)
    assert e.extras["complete"] is False and e.extras["completeness_note"] == INCOMPLETE
    assert float(e.extras["completeness_gap"].min()) > 10  # the skip connections double relevance per block
    assert any(INCOMPLETE in r.getMessage() for r in caplog.records)
    assert INCOMPLETE in method_note("captum:LRP", e)

    vgg = untouched(_calibrated(torchvision.models.vgg11))  # torchvision's init gives VGG zero biases
    v = captum(vgg, x, "LRP", target=3)
    with torch.no_grad():
        score = vgg(x)[:, 3]
    assert torch.allclose(v.raw.sum((1, 2, 3)), score, rtol=1e-4, atol=1e-7)  # Σ relevance = f(x), independently
    assert v.extras["complete"] is True and float(v.extras["completeness_gap"].max()) < 1e-3
    assert "completeness_note" not in v.extras and method_note("captum:LRP", v) == ""


def test_mobilenet_v2_lrp_runs_with_the_pass_rule_and_deeplift_adds_up(x, untouched):
    m = untouched(_calibrated(torchvision.models.mobilenet_v2))
    lrp = captum(m, x, "LRP", target=3)  # Captum alone: TypeError, ReLU6 has no rule
    assert torch.isfinite(lrp.raw).all() and torch.isfinite(lrp.extras["completeness_gap"]).all()
    assert lrp.extras["complete"] is False  # the batch-norm shifts absorb the relevance: said, not hidden
    d = captum(m, x, "DeepLift", target=3)  # ReLU6 gets the rescale rule
    assert d.extras["complete"] is True and float(d.extras["completeness_gap"].max()) < 1e-3


def test_densenet121_final_functional_relu_gets_the_rescale_rule(untouched):
    m = untouched(_calibrated(torchvision.models.densenet121))
    x1 = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(2))
    e = captum(m, x1, "DeepLift", target=3)
    assert "F.relu" in e.settings["traced"]
    assert e.extras["complete"] is True and float(e.extras["completeness_gap"].max()) < 1e-3


class _FunctionalRelu6(nn.Module):
    """x → linear → relu6 (functional) → linear, no biases: DeepLift and LRP by hand."""

    def __init__(self, fn=F.relu6):
        super().__init__()
        self.fn = fn
        self.a = nn.Linear(4, 3, bias=False)
        self.b = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[4.0, 3, -1, 2], [-2, 1, 3, 1], [1, -3, 2, 5]]))
            self.b.weight.copy_(torch.tensor([[1.0, -2, 3], [2, 1, -1]]))

    def forward(self, x):
        return self.b(self.fn(self.a(x.flatten(1))))


def test_rescale_rule_for_a_functional_relu6_by_hand(untouched):
    net = untouched(_FunctionalRelu6())
    x = torch.tensor([[[[0.9, 0.8], [0.3, 0.7]]]])  # 1×1×2×2; hidden z = (7.1, 0.6, 2.6): the first saturates
    e = captum(net, x, "DeepLift", target=0, reduce="none")
    z = net.a.weight @ x.flatten()  # baseline 0: z' = 0, y' = 0
    m = F.relu6(z) / z  # Δy/Δz per hidden unit (the rescale rule)
    want = (x.flatten() * ((net.b.weight[0] * m) @ net.a.weight)).view(1, 1, 2, 2)
    assert torch.allclose(e.raw, want, atol=1e-6)
    assert float(e.extras["completeness_gap"][0]) < 1e-6
    r = captum(net, x, "LRP", target=0)  # LRP-ε with relevance passed through the ReLU6 unchanged
    a = F.relu6(z)
    rel_hidden = a * net.b.weight[0]  # R_j = a_j w_j (Σ = f, no bias)
    want_lrp = (x.flatten() * ((rel_hidden / z) @ net.a.weight)).view(1, 1, 2, 2)
    assert torch.allclose(r.raw, want_lrp, atol=1e-5)


def test_call_site_copy_shares_every_tensor_and_leaves_the_model_alone(resnet18, x, untouched):
    untouched(resnet18)
    cs = CallSites(resnet18)
    copies = dict(cs.module.named_parameters(remove_duplicate=False))
    ours = {id(p) for p in resnet18.parameters()}
    assert copies and all(id(p) in ours for p in copies.values())  # the same Parameter objects: nothing copied
    assert len(cs.sites["layer1.0.relu"]) == 2 and cs.module.get_submodule(
        cs.sites["layer1.0.relu"][0]
    ) is not cs.module.get_submodule(cs.sites["layer1.0.relu"][1])
    with torch.no_grad():
        assert torch.equal(cs.module(x), resnet18(x))
    relu = nn.ReLU(inplace=True)
    c = shallow_module(relu)
    c.inplace = False
    c.register_forward_hook(lambda *a: None)
    assert relu.inplace is True and not relu._forward_hooks


def test_layer_deeplift_and_guided_backprop_on_resnet18_equal_the_twin(resnet18, x, untouched):
    from captum.attr import GuidedBackprop, LayerDeepLift

    untouched(resnet18)
    twin = _twin(resnet18)
    e = captum(resnet18, x, "LayerDeepLift", target=3, layer="layer4")  # a container: read after its output
    want = LayerDeepLift(twin, twin.layer4).attribute(x.clone().requires_grad_(), target=3).detach()
    assert e.layer == "layer4" and (e.raw - want).abs().max() <= 1e-6 and want.abs().max() > 1e-4
    assert e.extras["complete"] is True and float(e.extras["completeness_gap"].max()) < 1e-3
    g = captum(resnet18, x, "GuidedBackprop", target=3)
    want = GuidedBackprop(twin).attribute(x.clone().requires_grad_(), target=3).detach()
    assert (g.raw - want).abs().max() <= 1e-6 and "completeness_gap" not in g.extras


def test_the_model_is_untouched_when_captum_raises_on_the_copy(resnet18, x, untouched, monkeypatch):
    from captum.attr import DeepLift

    untouched(resnet18)

    def vandal(self, inputs, **kw):
        self.model.apply(lambda mod: mod.register_forward_hook(lambda *a: None))
        for p in self.model.parameters():  # shared with the user's model
            p.requires_grad_(True)
            p.grad = torch.ones_like(p)
        raise RuntimeError("Captum broke\nover several lines")

    monkeypatch.setattr(DeepLift, "attribute", vandal)
    with pytest.raises(RuntimeError) as info:
        captum(resnet18, x, "DeepLift", target=3)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("Captum's DeepLift failed on this model (RuntimeError: Captum broke")
    assert "help(captum.attr.DeepLift)" in msg and str(info.value.__cause__) == "Captum broke\nover several lines"


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        h = self.c(x)
        if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            h = h.relu()
        return self.fc(h.mean((2, 3)))


def test_bridged_failures_are_one_line_with_the_cause_kept(untouched):
    x = torch.rand(2, 3, 8, 8)
    net = untouched(_Branchy())
    with pytest.raises(ValueError, match=r"^Captum's DeepLift needs one module per call") as info:
        captum(net, x, "DeepLift")
    assert "\n" not in str(info.value) and "does not trace" in str(info.value) and info.value.__cause__ is not None
    norm = untouched(nn.Sequential(nn.Conv2d(3, 2, 3), nn.InstanceNorm2d(2), nn.Flatten(), nn.Linear(72, 3)))
    with pytest.raises(TypeError, match=r"^Captum's LRP has no rule for InstanceNorm2d layers; set one") as info:
        captum(norm, x, "LRP")
    assert "\n" not in str(info.value) and isinstance(info.value.__cause__, TypeError)
    with pytest.raises(ValueError, match=r"^torchattacks' PGD failed on this model") as info:
        from_torchattacks("PGD", net, x, eps="wide")
    assert "\n" not in str(info.value) and info.value.__cause__ is not None


def test_integrated_gradients_gap_is_checked_against_an_independent_difference(untouched):
    net = untouched(_FunctionalRelu6(torch.tanh))
    x = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    e = captum(net, x, "IntegratedGradients", target=1, n_steps=2)
    with torch.no_grad():
        diff = net(x)[:, 1] - net(torch.zeros_like(x))[:, 1]
    assert torch.allclose(e.extras["completeness_expected"], diff, atol=1e-6)
    gap = (e.raw.sum((1, 2, 3)) - diff).abs() / diff.abs()
    assert torch.allclose(e.extras["completeness_gap"], gap, rtol=1e-4, atol=1e-7)
    fine = captum(net, x, "IntegratedGradients", target=1, n_steps=200)
    assert fine.extras["complete"] is True and float(fine.extras["completeness_gap"].max()) < 1e-3


def test_the_figure_title_carries_the_mark():
    x = torch.rand(1, 3, 6, 6)
    base = dict(maps=torch.rand(1, 6, 6), method="captum:LRP", classes=torch.tensor([0]))
    bad = Explanation(
        **base,
        extras={
            "complete": False,
            "completeness_note": INCOMPLETE,
            "completeness_gap": torch.tensor([3.0]),
            "completeness_tolerance": 0.05,
        },
    )
    titles = [ax.get_title() for ax in bad.figure(x).axes]
    assert any(INCOMPLETE_MARK in t for t in titles) and repr(bad).splitlines()[0].endswith(INCOMPLETE)
    good = Explanation(**base, extras={"complete": True, "completeness_gap": torch.tensor([0.0])})
    assert not any(INCOMPLETE_MARK in ax.get_title() for ax in good.figure(x).axes) and "⚠" not in repr(good)


def test_explain_cli_warns_and_its_page_says_lrp_does_not_add_up(tmp_path, run_cli, caplog):
    from PIL import Image

    img = tmp_path / "noise.png"
    g = torch.Generator().manual_seed(4)
    Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).byte().numpy()).save(img)
    code, cap = run_cli(
        "explain",
        str(img),
        "--model",
        "torchvision:resnet18",
        "--input-size",
        "32",
        "--methods",
        "captum:LRP",
        "--faithfulness-steps",
        "2",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, cap.err
    # the warning the CLI's logging prints on the terminal (in-process, pytest captures the log record)
    assert any(r.levelno == logging.WARNING and r.getMessage().startswith("LRP " + INCOMPLETE) for r in caplog.records)
    assert INCOMPLETE in (tmp_path / "out" / "index.html").read_text()


def test_explain_keeps_captums_own_error_for_debug(caplog, untouched):
    from cnnlens.attribution.explain import run_methods

    norm = untouched(nn.Sequential(nn.Conv2d(3, 2, 3), nn.InstanceNorm2d(2), nn.Flatten(), nn.Linear(72, 3)))
    with caplog.at_level(logging.INFO, logger="cnnlens"):
        out = run_methods(norm, torch.rand(1, 3, 8, 8), ["captum:LRP"])
    assert isinstance(out["captum:LRP"], ValueError) and "\n" not in str(out["captum:LRP"])
    own = [r for r in caplog.records if r.levelno == logging.INFO and r.exc_info]
    assert own and "has no rule defined" in str(own[0].exc_info[1])  # Captum's message, shown under --debug / -v
