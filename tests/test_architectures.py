"""What cnnlens guarantees on any architecture (issue 20, defects 1–3).

Guided backprop and deconvnet reach every ReLU application (module, functional, in place),
checked against float64 references written out by hand.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from inside_nets import seeded_
from torch import nn

from cnnlens.attribution import guided_backprop, guided_gradcam, saliency
from cnnlens.inside import deconvnet

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------
# 1. guided backprop and deconvnet guide every ReLU application
class MixedBlock(nn.Module):
    """A ResNet-style basic block whose ReLUs are functional: F.relu, then an in-place x.relu_() after the sum."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return out.relu_()


class MixedReluNet(nn.Module):
    """Every kind of ReLU application: an in-place nn.ReLU module, the block's functional ReLUs, F.relu6, and a
    DenseNet-style final ``F.relu(features, inplace=True)`` before global pooling."""

    def __init__(self):
        super().__init__()
        self.stem, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True)
        self.block = MixedBlock(4)
        self.conv3 = nn.Conv2d(4, 5, 3, padding=1)
        self.conv4 = nn.Conv2d(5, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)
        seeded_(self, 4, scale=0.8)
        for bn in (self.block.bn1, self.block.bn2):
            bn.running_mean.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(1))
            bn.running_var.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))

    def forward(self, x):
        h = self.block(self.act(self.stem(x)))
        h = F.relu6(self.conv3(h) * 4)
        h = F.relu(self.conv4(h), inplace=True)
        return self.fc(h.mean((2, 3)))


def _by_hand(net: MixedReluNet, x, relu, relu6):
    """MixedReluNet's forward written out with explicit relu / relu6 functions (same modules, same order)."""
    b = net.block
    h = relu(net.stem(x))
    o = b.bn2(b.conv2(relu(b.bn1(b.conv1(h))))) + h
    h = relu(o)
    h = relu6(net.conv3(h) * 4)
    h = relu(net.conv4(h))
    return net.fc(h.mean((2, 3)))


class _Guided(torch.autograd.Function):
    """clamp(x, 0, hi) whose backward is guided backprop's: g · 1[0 < x < hi] · 1[g > 0]."""

    @staticmethod
    def forward(ctx, x, hi):
        ctx.save_for_backward(x)
        ctx.hi = hi
        return x.clamp(0, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        keep = (x > 0) & (g > 0)
        if ctx.hi is not None:
            keep &= x < ctx.hi
        return g * keep, None


def _guided_reference(net, x, classes):
    """The guided gradient of every ReLU application, in float64, by hand."""
    n64 = copy.deepcopy(net).double().eval()
    x64 = x.double().requires_grad_(True)
    y = _by_hand(n64, x64, lambda t: _Guided.apply(t, None), lambda t: _Guided.apply(t, 6.0))
    (g,) = torch.autograd.grad(y[torch.arange(len(classes)), classes].sum(), x64)
    return g


def test_guided_backprop_guides_every_relu_application(untouched):
    net = untouched(MixedReluNet().eval())
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():  # the hand-written forward is the model's forward
        assert torch.allclose(_by_hand(net, x.clone(), F.relu, F.relu6), net(x.clone()), atol=1e-6)
    e = guided_backprop(net, x, target=[0, 1, 2], reduce="none", batch_size=2)
    ref = _guided_reference(net, x, torch.tensor([0, 1, 2]))
    assert float((e.raw.double() - ref).abs().max() / ref.abs().max()) < 1e-5
    assert e.settings["guided_relus"] == 5  # nn.ReLU, F.relu, relu_, F.relu6, F.relu(inplace=True)
    assert "unguided_activations" not in e.settings
    plain = saliency(net, x, target=[0, 1, 2], reduce="none").raw
    assert float((e.raw - plain).abs().max()) > 0.05 * float(ref.abs().max())  # the rule really changed the backward
    gg = guided_gradcam(net, x, target=[0, 1, 2], layer="block", reduce="none")
    assert torch.allclose(gg.raw, e.raw * gg.extras["gradcam"].unsqueeze(1), atol=1e-6)
    assert gg.settings["guided_relus"] == 5


def test_functional_relu_net_is_guided_and_a_gelu_net_refused(untouched):
    from attribution_nets import FunctionalReluNet

    net = untouched(FunctionalReluNet())
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    e = guided_backprop(net, x, target=[0, 1], reduce="none")
    x64 = x.double().requires_grad_(True)
    n64 = copy.deepcopy(net).double()
    y = n64.fc(_Guided.apply(n64.c1(x64), None).mean((2, 3)))
    (ref,) = torch.autograd.grad(y[[0, 1], [0, 1]].sum(), x64)
    assert torch.allclose(e.raw.double(), ref, atol=1e-6) and e.settings["guided_relus"] == 1
    gelu = untouched(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(4, 2)))
    with pytest.raises(ValueError, match=r"applies none \(its activations are gelu ×1\); use saliency or gradcam"):
        guided_backprop(gelu, torch.rand(1, 3, 5, 5))


def test_an_activation_guided_backprop_cannot_guide_is_said(untouched, caplog):
    net = untouched(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.SiLU(), nn.Conv2d(4, 4, 1),
                                  nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval())
    with caplog.at_level(logging.WARNING, logger="cnnlens"):
        e = guided_backprop(net, torch.rand(2, 3, 6, 6))
    assert e.settings["guided_relus"] == 1
    assert e.settings["unguided_activations"] == {"gelu": 1, "silu": 1}
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    want = ("guided backprop: 1 ReLU applications guided per forward; gelu ×1, silu ×1 keep their "
            "ordinary gradient (guided backprop has no rule for them)")
    assert lines == [want]


@pytest.mark.parametrize("arch, relus", [("resnet18", 17), ("densenet121", 121)])
def test_torchvision_relu_applications_are_counted(untouched, arch, relus):
    """ResNet-18 reuses one in-place nn.ReLU per block (1 + 8·2 applications); DenseNet-121 has 120 ReLU
    modules and ends its features with F.relu(inplace=True) — 121."""
    tv = pytest.importorskip("torchvision")
    net = untouched(getattr(tv.models, arch)(weights=None, num_classes=3).eval())
    e = guided_backprop(net, torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert e.settings["guided_relus"] == relus


class _ChainF(nn.Module):
    """conv → ReLU → max-pool → conv → ReLU6 → max-pool with functional ReLUs (``inplace``: F.relu_ / relu6 in place)."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.conv1, self.pool1 = nn.Conv2d(1, 3, 3, padding=1), nn.MaxPool2d(2)
        self.conv2, self.pool2 = nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2)
        self.inplace = inplace
        seeded_(self, 7)

    def forward(self, x):
        h = self.pool1(F.relu(self.conv1(x), inplace=self.inplace))
        h = self.conv2(h)
        h = h.relu_() if self.inplace else F.relu6(h)
        return self.pool2(h).mean((2, 3))


def _module_twin(net: _ChainF) -> nn.Sequential:
    """The same weights as a chain of modules with nn.ReLU / nn.ReLU6: the case deconvnet always handled."""
    return nn.Sequential(copy.deepcopy(net.conv1), nn.ReLU(), copy.deepcopy(net.pool1), copy.deepcopy(net.conv2),
                         nn.ReLU() if net.inplace else nn.ReLU6(), copy.deepcopy(net.pool2)).eval()


@pytest.mark.parametrize("inplace", [True, False])
def test_deconvnet_unrelus_functional_relus_like_modules(untouched, inplace):
    net = untouched(_ChainF(inplace).eval())
    twin = untouched(_module_twin(net))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.5
    p = deconvnet(net, x, "pool2", 1, position="all")
    want = deconvnet(twin, x, "5", 1, position="all")
    assert float(want.images.abs().max()) > 0
    assert torch.allclose(p.images, want.images, atol=1e-5)
    assert p.settings["guided_relus"] == want.settings["guided_relus"] == 2
    assert p.chain == ("conv1", "<relu>", "pool1", "conv2", "<relu_>" if inplace else "<relu6>", "pool2")


# ---------------------------------------------------------------------------
# 3. the default CAM layer has a real grid; a constant map is said
@pytest.mark.parametrize("arch, layer", [("alexnet", "features.11"), ("vgg11_bn", "features")])
def test_default_layer_is_a_real_grid_not_a_spreading_pool(untouched, arch, layer, caplog):
    """At 64², AlexNet's features end at 1×1 and its avgpool spreads that over 6×6; VGG's spreads 2×2 over 7×7."""
    tv = pytest.importorskip("torchvision")
    from cnnlens.attribution import gradcam
    from cnnlens.tap import find_last_spatial_layer

    torch.manual_seed(0)
    net = untouched(getattr(tv.models, arch)(weights=None, num_classes=5).eval())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with caplog.at_level(logging.INFO, logger="cnnlens"):
        assert find_last_spatial_layer(net, x) == layer
    assert "skipped avgpool (spreads a" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnlens"):
        e = gradcam(net, x, relu=False)
    assert e.layer == layer and min(e.raw.shape[-2:]) >= 2
    flat = e.maps.flatten(1)
    assert bool((flat.amax(1) - flat.amin(1) > 1e-3 * flat.abs().amax(1)).all())  # a map that varies
    assert not e.extras["constant_map"].any() and "constant" not in caplog.text
    # the old default, the spreading pool, gives a constant map (AlexNet) or one spread from 2×2 (VGG)
    if arch == "alexnet":
        with caplog.at_level(logging.WARNING, logger="cnnlens"):
            old = gradcam(net, x, layer="avgpool", relu=False)
        assert old.extras["constant_map"].all()
        assert "gradcam: 2 of 2 map(s) at layer 'avgpool' constant over the image" in caplog.text


class LeNetSharedPool(nn.Module):
    """LeNet as often written: one MaxPool2d used after both convolutions, functional ReLUs, .view before fc."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)
        seeded_(self, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(x.view(x.size(0), -1))))


def test_a_layer_that_runs_twice_is_not_the_default(untouched, caplog):
    from cnnlens.attribution import gradcam
    from cnnlens.tap import find_last_spatial_layer

    net = untouched(LeNetSharedPool().eval())
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.INFO, logger="cnnlens"):
        assert find_last_spatial_layer(net, x) == "conv2"
    assert "pool (runs 2 times per forward)" in caplog.text
    e = gradcam(net, x, relu=False)  # usable: cnnlens does not refuse its own default
    leaf = copy.deepcopy(net).double()
    x64 = x.double()
    a = leaf.conv2(leaf.pool(F.relu(leaf.conv1(x64)))).detach().requires_grad_(True)
    y = leaf.fc2(F.relu(leaf.fc1(leaf.pool(F.relu(a)).flatten(1))))
    cls = y.argmax(1)
    (g,) = torch.autograd.grad(y[torch.arange(2), cls].sum(), a)
    want = torch.einsum("nk,nkhw->nhw", g.mean((2, 3)), a.detach())
    assert torch.equal(e.classes, cls) and e.layer == "conv2"
    assert torch.allclose(e.raw.double(), want, atol=1e-5 * float(want.abs().max()))


def test_a_constant_map_is_warned_about_whatever_its_size(untouched, caplog):
    """A layer whose 4×4 output is one value per channel: every CAM map is constant, at any grid size."""

    class Spread(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.flat = nn.AdaptiveAvgPool2d(1)
            self.up = nn.Upsample(size=(4, 4))
            self.fc = nn.Linear(4, 2)
            seeded_(self, 0)

        def forward(self, x):
            return self.fc(self.up(self.flat(self.conv(x))).mean((2, 3)))

    from cnnlens.attribution import gradcam

    net = untouched(Spread().eval())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="cnnlens"):
        e = gradcam(net, x, layer="up", relu=False)
    assert e.raw.shape[-2:] == (4, 4) and e.extras["constant_map"].all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["gradcam: 2 of 2 map(s) at layer 'up' constant over the image, showing no location "
                        "(flagged in extras['constant_map'])"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnlens"):
        d = gradcam(net, x, relu=False)  # the default layer is the conv, not the spreading upsample
    assert d.layer == "conv" and not d.extras["constant_map"].any() and not caplog.records
