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
    gelu = untouched(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    )
    with pytest.raises(ValueError, match=r"applies none \(its activations are gelu ×1\); use saliency or gradcam"):
        guided_backprop(gelu, torch.rand(1, 3, 5, 5))


def test_an_activation_guided_backprop_cannot_guide_is_said(untouched, caplog):
    net = untouched(
        nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.ReLU(),
            nn.Conv2d(4, 4, 1),
            nn.SiLU(),
            nn.Conv2d(4, 4, 1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 2),
        ).eval()
    )
    with caplog.at_level(logging.WARNING, logger="cnnlens"):
        e = guided_backprop(net, torch.rand(2, 3, 6, 6))
    assert e.settings["guided_relus"] == 1
    assert e.settings["unguided_activations"] == {"gelu": 1, "silu": 1}
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    want = (
        "guided backprop: 1 ReLU applications guided per forward; gelu ×1, silu ×1 keep their "
        "ordinary gradient (guided backprop has no rule for them)"
    )
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
    """conv → ReLU → max-pool → conv → ReLU6 → max-pool with functional ReLUs (``inplace``: F.relu_ / relu6 in
    place)."""

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
    return nn.Sequential(
        copy.deepcopy(net.conv1),
        nn.ReLU(),
        copy.deepcopy(net.pool1),
        copy.deepcopy(net.conv2),
        nn.ReLU() if net.inplace else nn.ReLU6(),
        copy.deepcopy(net.pool2),
    ).eval()


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
    assert warnings == [
        "gradcam: 2 of 2 map(s) at layer 'up' constant over the image, showing no location "
        "(flagged in extras['constant_map'])"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnlens"):
        d = gradcam(net, x, relu=False)  # the default layer is the conv, not the spreading upsample
    assert d.layer == "conv" and not d.extras["constant_map"].any() and not caplog.records


# ---------------------------------------------------------------------------
# 2. a channels-last layer is read as channels-last, also when C equals the grid width
class ConvNeXtStyle(nn.Module):
    """A ConvNeXt block (conv_mlp=False) on a 4×4-patch stem: 16 channels on a 16×16 grid at 64², so the
    LayerNorm's N×16×16×16 output reads both as N×C×H×W and N×H×W×C."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, stride=4)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.act, self.fc2 = nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c)
        self.head = nn.Linear(c, 4)
        seeded_(self, 11, scale=0.8)

    def forward(self, x):
        x = self.stem(x)
        h = self.norm(self.dw(x).permute(0, 2, 3, 1))
        h = self.fc2(self.act(self.fc1(h))).permute(0, 3, 1, 2)
        return self.head((x + h).mean((2, 3)))


def _gradcam_reference(net: ConvNeXtStyle, x, layer: str):
    """pytorch-grad-cam on the channels-last layer with an explicit N×H×W×C → N×C×H×W reshape_transform."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    twin = copy.deepcopy(net).eval()
    with torch.no_grad():
        classes = twin(x).argmax(1)
    with GradCAM(twin, [getattr(twin, layer)], reshape_transform=lambda t: t.permute(0, 3, 1, 2)) as gc:
        gc.compute_input_gradient = False
        maps = gc(x, [ClassifierOutputTarget(int(c)) for c in classes])  # N×H×W, min-max scaled per image
    return torch.as_tensor(maps), classes


def _scaled(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo + 1e-7)).view_as(m)


def test_a_channels_last_layer_with_c_equal_to_its_width_is_read_channels_last(untouched):
    pytest.importorskip("pytorch_grad_cam")
    from cnnlens.attribution import gradcam

    net = untouched(ConvNeXtStyle().eval())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    e = gradcam(net, x, layer="norm")
    ref, classes = _gradcam_reference(net, x, "norm")
    assert torch.equal(e.classes, classes)
    # by hand in float64: A = the LayerNorm output as N×C×H×W, α = mean over positions of ∂y/∂A
    n64 = copy.deepcopy(net).double()
    x64 = x.double()
    a = n64.norm(n64.dw(n64.stem(x64)).permute(0, 2, 3, 1)).detach().requires_grad_(True)
    h = n64.fc2(n64.act(n64.fc1(a))).permute(0, 3, 1, 2)
    y = n64.head((n64.stem(x64) + h).mean((2, 3)))
    (g,) = torch.autograd.grad(y[torch.arange(2), classes].sum(), a)
    A, G = a.detach().permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
    want = torch.einsum("nk,nkhw->nhw", G.mean((2, 3)), A).clamp_min(0)
    assert torch.allclose(e.raw.double(), want, atol=1e-5 * float(want.abs().max()))
    assert float(want.abs().max()) > 0
    assert float((_scaled(e.maps) - ref).abs().max()) < 1e-3  # pytorch-grad-cam's min-max-scaled maps
    # the mlp's output (a Linear over the last dimension) too; "nchw" by hand reads it wrongly
    assert gradcam(net, x, layer="fc2").settings["grid"] == (16, 16)
    wrong = gradcam(net, x, layer="norm", layout="nchw")
    assert not torch.allclose(wrong.raw.double(), want, atol=0.1 * float(want.abs().max()))


class _MyBlock(nn.Module):
    """A custom ConvNeXt-style block whose output comes from a functional residual sum: nothing says its layout."""

    def __init__(self, c: int):
        super().__init__()
        self.dw, self.norm, self.fc = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.LayerNorm(c), nn.Linear(c, c)

    def forward(self, x):
        return x + self.fc(self.norm(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


def test_an_ambiguous_layer_is_refused_in_one_line_and_layout_decides(untouched):
    from cnnlens.attribution import eigencam, gradcam, hirescam

    net = untouched(
        seeded_(
            nn.Sequential(
                nn.Conv2d(3, 8, 4, stride=4), _MyBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
            ),
            1,
        ).eval()
    )
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for fn in (gradcam, hirescam, eigencam):
        with pytest.raises(ValueError) as err:
            fn(net, x, layer="1")
        msg = str(err.value)
        assert "\n" not in msg and "reads both as N×C×H×W and N×H×W×C" in msg and "layout='nchw'" in msg
    e = hirescam(net, x, layer="1", layout="nchw", relu=False)
    assert e.raw.shape == (2, 8, 8)
    # by hand: the block's output as N×C×H×W
    a = net[1](net[0](x)).detach().requires_grad_(True)
    y = net[4](net[3](net[2](a)))
    (g,) = torch.autograd.grad(y[torch.arange(2), e.classes].sum(), a)
    assert torch.allclose(e.raw, (g * a).sum(1).detach(), atol=1e-6)
    with pytest.raises(ValueError, match="layout must be 'nchw', 'nhwc' or None"):
        gradcam(net, x, layer="1", layout="NHWC!")
    # a plain CNN whose channel count equals its grid width is read as N×C×H×W, as always
    cnn = untouched(
        nn.Sequential(
            nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
        ).eval()
    )
    assert gradcam(cnn, x).raw.shape == (2, 8, 8)


@pytest.mark.parametrize("arch", ["convnext_tiny", "swin_t"])
def test_torchvision_channels_last_modules_are_read_by_what_they_are(arch):
    tv = pytest.importorskip("torchvision")
    from cnnlens.grid import module_layout

    net = getattr(tv.models, arch)(weights=None)
    mods = dict(net.named_modules())
    if arch == "convnext_tiny":
        assert module_layout(mods["features.1.0"]) == "nchw"  # CNBlock
        assert module_layout(mods["features.1.0.block"]) == "nchw"  # ... ending in Permute([0, 3, 1, 2])
        assert module_layout(mods["features.1.0.block.2"], 96) == "nhwc"  # its LayerNorm
        assert module_layout(mods["features.1"]) == "nchw"
    else:
        assert module_layout(mods["features.0"], 96) == "nhwc"  # conv, Permute, LayerNorm
        assert module_layout(mods["features.1"]) == "nhwc"  # SwinTransformerBlocks
        assert module_layout(mods["features.2"]) == "nhwc"  # PatchMerging
        assert module_layout(mods["permute"]) == "nchw"


class _Grab:
    """A scan accumulator that keeps a layer's grid as the scan hands it over."""

    def __init__(self, layer):
        self.layers, self.seen = (layer,), []

    def update(self, batch):
        self.seen.append(batch.acts[self.layers[0]].clone())

    def merge(self, other):
        self.seen += other.seen
        return self

    def compute(self):
        return torch.cat(self.seen)


def test_the_scan_reads_layers_the_same_way_and_takes_layout(untouched):
    from cnnlens.scanning import scan

    net = untouched(ConvNeXtStyle().eval())
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(x, torch.zeros(3, dtype=torch.long))
    with torch.no_grad():
        want = net.norm(net.dw(net.stem(x)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    (got,) = scan(net, data, [_Grab("norm")])
    assert torch.allclose(got, want, atol=1e-6)
    (forced,) = scan(net, data, [_Grab("norm")], layout={"norm": "nchw"})  # as told, even if wrong
    assert torch.allclose(forced, want.permute(0, 2, 3, 1), atol=1e-6)
    block = untouched(
        seeded_(
            nn.Sequential(
                nn.Conv2d(3, 8, 4, stride=4), _MyBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
            ),
            1,
        ).eval()
    )
    small = torch.utils.data.TensorDataset(x[:, :, :32, :32], torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="reads both as N×C×H×W and N×H×W×C.*pass layout="):
        scan(block, small, [_Grab("1")])
    (ok,) = scan(block, small, [_Grab("1")], layout="nchw")
    with torch.no_grad():
        assert torch.allclose(ok, block[1](block[0](x[:, :, :32, :32])), atol=1e-6)


def test_timm_convnext_blocks_are_read_by_what_they_are(untouched):
    timm = pytest.importorskip("timm")
    from cnnlens.grid import grid_layout
    from cnnlens.tap import LayerTap

    torch.manual_seed(0)
    net = untouched(
        timm.create_model(
            "convnext_atto", pretrained=False, conv_mlp=False, dims=(16, 32, 64, 128), num_classes=5
        ).eval()
    )
    x = torch.rand(1, 3, 64, 64)
    want = {
        "stem": "nchw",
        "stages.0.blocks.0.conv_dw": "nchw",
        "stages.0.blocks.0.norm": "nhwc",
        "stages.0.blocks.0.mlp": "nhwc",
        "stages.0.blocks.0.mlp.act": "nhwc",
        "stages.0.blocks.0": "nchw",
        "stages.0": "nchw",
    }
    mods = dict(net.named_modules())
    with LayerTap(net, list(want), detach=True) as tap, torch.no_grad():
        tap.run(x)
        for name, layout in want.items():
            assert tuple(tap[name].shape[1:3]) == (16, 16)  # every one of them reads both ways by its shape
            assert grid_layout(tap[name], net, mods[name], (64, 64), name)[0] == layout, name
