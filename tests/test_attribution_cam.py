"""CAM, Grad-CAM, Grad-CAM++, guided backprop and Guided Grad-CAM against hand computations."""

from __future__ import annotations

import pytest
import torch
from attribution_nets import InplaceReluNet, OneConvNet
from conftest import TinyGapNet
from torch import nn

from cnnlens import Target
from cnnlens.attribution import cam, gradcam, gradcam_pp, guided_backprop, guided_gradcam, saliency
from cnnlens.models.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cam_mean_is_the_logit_minus_bias(tiny_gap_net):
    x = torch.rand(3, 3, 6, 7)
    y = tiny_gap_net(x).detach()
    for target in ("predicted", "second", 0, [2, 1, 0]):
        e = cam(tiny_gap_net, x, target=target)
        c = e.classes
        assert e.settings["classifier"] == "fc" and e.layer == "features"
        assert e.raw.shape == (3, 6, 7)
        expected = y[torch.arange(3), c] - tiny_gap_net.fc.bias[c].detach()
        assert torch.allclose(e.raw.mean((1, 2)), expected, atol=1e-6)
        # M_c = Σ_k w_k^c f_k, computed here from the features directly
        f = tiny_gap_net.features(x).detach()
        m = torch.einsum("nk,nkhw->nhw", tiny_gap_net.fc.weight[c].detach(), f)
        assert torch.allclose(e.raw, m, atol=1e-6)
        assert torch.allclose(e.maps, e.raw)  # already at the input size


def test_gradcam_on_a_gap_head_is_cam_over_hw_before_relu(tiny_gap_net):
    x = torch.rand(2, 3, 5, 6)
    for target in ("predicted", "second", 1):
        c = cam(tiny_gap_net, x, target=target)
        g = gradcam(tiny_gap_net, x, target=target, layer="features")
        assert torch.equal(g.classes, c.classes)
        assert torch.allclose(g.extras["pre_relu"], c.raw / 30, atol=1e-7)
        assert torch.allclose(g.raw, (c.raw / 30).clamp_min(0), atol=1e-7)
        assert torch.allclose(g.extras["weights"], tiny_gap_net.fc.weight[c.classes].detach() / 30)


def test_gradcam_by_hand_on_a_one_conv_net(untouched):
    net = untouched(OneConvNet())
    x = torch.tensor([[0.0, 1.0, 0.5, 0.0], [1.0, 0.5, 0.0, 0.5], [0.5, 0.0, 1.0, 1.0], [0.0, 0.5, 1.0, 0.0]]).view(
        1, 1, 4, 4
    )
    w, b = net.conv.weight.detach(), net.conv.bias.detach()
    fw, fb = net.fc.weight.detach(), net.fc.bias.detach()
    # convolution by loops (zero padding 1), then ReLU
    A = torch.zeros(2, 4, 4)
    for k in range(2):
        for i in range(4):
            for j in range(4):
                s = float(b[k])
                for di in range(3):
                    for dj in range(3):
                        ii, jj = i + di - 1, j + dj - 1
                        if 0 <= ii < 4 and 0 <= jj < 4:
                            s += float(w[k, 0, di, dj]) * float(x[0, 0, ii, jj])
                A[k, i, j] = max(s, 0.0)
    y = [
        float(fb[c])
        + sum(
            float(fw[c, k * 16 + i * 4 + j]) * float(A[k, i, j]) for k in range(2) for i in range(4) for j in range(4)
        )
        for c in range(2)
    ]
    for c in range(2):
        # ∂y_c/∂A^k_ij = fw[c, k·16 + i·4 + j], so α_k = the mean of that block
        alpha = [sum(float(fw[c, k * 16 + t]) for t in range(16)) / 16 for k in range(2)]
        expected = torch.zeros(4, 4)
        for i in range(4):
            for j in range(4):
                expected[i, j] = max(0.0, alpha[0] * float(A[0, i, j]) + alpha[1] * float(A[1, i, j]))
        e = gradcam(net, x, target=c, layer="relu")
        assert torch.allclose(e.raw[0], expected, atol=1e-6)
        assert torch.allclose(e.extras["weights"][0], torch.tensor(alpha), atol=1e-7)
        assert abs(float(e.extras["score"][0]) - y[c]) < 1e-5
    assert gradcam(net, x, target=0, layer="relu").layer == "relu"


def test_gradcam_pp_by_formula(tiny_gap_net):
    x = torch.rand(2, 3, 5, 5)
    e = gradcam_pp(tiny_gap_net, x, target=[0, 2], layer="features")
    A = tiny_gap_net.features(x).detach()
    for i, c in enumerate([0, 2]):
        g = tiny_gap_net.fc.weight[c].detach() / 25  # the gradient, constant over positions
        weights = []
        for k in range(A.shape[1]):
            if g[k] == 0:
                weights.append(0.0)
                continue
            a = g[k] ** 2 / (2 * g[k] ** 2 + A[i, k].sum() * g[k] ** 3)
            weights.append(float(25 * a * g[k].clamp_min(0)))
        wt = torch.tensor(weights)
        assert torch.allclose(e.extras["weights"][i], wt, atol=1e-6)
        assert torch.allclose(e.raw[i], torch.einsum("k,khw->hw", wt, A[i]).clamp_min(0), atol=1e-6)


def test_cam_finds_the_head_and_refuses_other_heads(untouched):
    with pytest.raises(ValueError, match="gradcam"):
        cam(untouched(OneConvNet()), torch.rand(1, 1, 4, 4), layer="relu")

    class Scaled(TinyGapNet):  # a head that is not GAP + linear: logits are scaled after the linear
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(ValueError, match="gradcam"):
        cam(untouched(Scaled()), torch.rand(1, 3, 5, 5))
    with pytest.raises(ValueError, match="CAM explains a class"):
        cam(untouched(TinyGapNet()), torch.rand(1, 3, 5, 5), target=Target.channel("features.1", 0))


def test_cam_uses_the_spec(untouched):
    class WithSpec(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = TinyGapNet(seed=5)
            self.spec = ModelSpec("tiny", (6, 6), class_names=("a", "b", "c"), pooled_layer="features", classifier="fc")

        def forward(self, x):
            return self.net(x)

    m = untouched(WithSpec())
    x = torch.rand(2, 3, 6, 6)
    e = cam(m, x, target="b")
    assert e.layer == "net.features" and e.settings["classifier"] == "net.fc"
    assert e.classes.tolist() == [1, 1] and "b" in e.settings["target"]
    y = m(x).detach()[:, 1] - m.net.fc.bias[1].detach()
    assert torch.allclose(e.raw.mean((1, 2)), y, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        cam(m, x, target=7)


def test_a_zero_map_is_finite_and_flagged(untouched):
    net = TinyGapNet(seed=2)
    with torch.no_grad():
        net.fc.weight[1] = -net.fc.weight[1].abs() - 0.1  # class 1: every channel votes against
        net.fc.weight[2] = 0.0  # class 2: absent (depends on nothing)
    untouched(net)
    x = torch.rand(2, 3, 5, 5)
    for fn in (gradcam, gradcam_pp):
        e = fn(net, x, target=1)
        assert torch.equal(e.maps, torch.zeros_like(e.maps)) and e.extras["empty"].all()
        assert torch.isfinite(e.normalized()).all()
    for fn in (gradcam, gradcam_pp, saliency, guided_backprop, guided_gradcam):
        e = fn(net, x, target=2)
        assert torch.equal(e.maps, torch.zeros_like(e.maps)), fn.__name__
        assert e.extras["empty"].all() and torch.isfinite(e.normalized()).all()
    # a dead channel (all activations 0 after its ReLU) as the target
    dead = TinyGapNet(seed=2)
    with torch.no_grad():
        dead.features[2].bias[0] = -100.0
    untouched(dead)
    for fn in (gradcam, gradcam_pp):
        e = fn(dead, x, target=Target.channel("features.3", 0), layer="features.3")
        assert torch.equal(e.maps, torch.zeros_like(e.maps))
        assert e.extras["empty"].all() and torch.isfinite(e.maps).all()


class _GuidedRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0) * (g > 0)


def _reference_guided(net: InplaceReluNet, x, c):
    """Guided backprop of InplaceReluNet written out by hand."""
    xr = x.clone().requires_grad_(True)
    h = _GuidedRelu.apply(net.c1(xr))
    h = _GuidedRelu.apply(net.c2(h))
    z = net.c3(h)
    h = _GuidedRelu.apply(z).clamp_max(6.0)
    y = net.fc(h.mean((2, 3)))
    (g,) = torch.autograd.grad(y[torch.arange(len(c)), c].sum(), xr)
    return g


def test_guided_backprop_with_inplace_relus_matches_a_hand_written_rule(untouched):
    net = untouched(InplaceReluNet())
    x = torch.rand(2, 3, 6, 6)
    e = guided_backprop(net, x, target=[0, 2], reduce="none")
    ref = _reference_guided(net, x, torch.tensor([0, 2]))
    assert torch.allclose(e.raw, ref, atol=1e-6)
    plain = saliency(net, x, target=[0, 2], reduce="none").raw
    assert not torch.allclose(e.raw, plain, atol=1e-4)  # the rule really changed the backward
    assert all(p.grad is None for p in net.parameters())


def test_guided_backprop_refuses_a_model_without_relu(untouched):
    # functional ReLUs are guided too (tests/test_architectures.py); a forward with no ReLU at all is refused
    gelu = untouched(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    )
    with pytest.raises(ValueError, match=r"its activations are gelu ×1\); use saliency or gradcam"):
        guided_backprop(gelu, torch.rand(1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"its activations are gelu ×1\); use saliency or gradcam"):
        guided_gradcam(gelu, torch.rand(1, 3, 5, 5), layer="0")


def test_guided_gradcam_is_guided_backprop_times_gradcam(untouched):
    net = untouched(InplaceReluNet())
    x = torch.rand(2, 3, 6, 6)
    gg = guided_gradcam(net, x, target="second", layer="c3")
    gb = guided_backprop(net, x, target="second")
    gc = gradcam(net, x, target="second", layer="c3")
    assert torch.equal(gg.classes, gb.classes)
    assert torch.allclose(gg.maps, gb.maps * gc.maps, atol=1e-7)


def _check_cam(model, x, layer, classifier):
    e = cam(model, x)
    assert e.layer == layer and e.settings["classifier"] == classifier
    with torch.no_grad():
        y = model(x)
    lin = dict(model.named_modules())[classifier]
    expected = y[torch.arange(len(x)), e.classes] - lin.bias[e.classes]
    assert torch.allclose(e.raw.mean((1, 2)), expected, atol=1e-4, rtol=1e-4)
    return e


def test_cam_finds_the_head_of_torchvision_and_timm_models(untouched):
    import timm
    import torchvision

    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    _check_cam(untouched(torchvision.models.resnet18(num_classes=7).eval()), x, "layer4", "fc")
    _check_cam(untouched(timm.create_model("resnet10t", num_classes=5, pretrained=False).eval()), x, "layer4", "fc")
    eff = untouched(timm.create_model("tf_efficientnet_lite0", num_classes=4, pretrained=False).eval())
    e = _check_cam(eff, x, "bn2", "classifier")
    # Grad-CAM at the automatically found last spatial layer is CAM/(H·W) before the ReLU
    g = gradcam(eff, x)
    assert g.layer == "bn2" and torch.allclose(g.extras["pre_relu"], e.raw / 4, atol=1e-5)


def test_cam_on_the_shipped_models_uses_their_spec(digits_model, effnet):
    from cnnlens.models.digits import digits_split

    d = digits_split("test").x[:3]
    e = _check_cam(digits_model, d, "net.features", "net.fc")
    assert e.raw.shape[-2:] == (8, 8)
    g = gradcam(digits_model, d)
    assert torch.allclose(g.extras["pre_relu"], e.raw / 64, atol=1e-5)
    x = torch.rand(1, 3, 224, 224)
    e = _check_cam(effnet, x, "net.bn2", "net.classifier")
    assert e.raw.shape[-2:] == (7, 7)
