"""Ablation-CAM and Score-CAM: real ablations by hand, and pytorch-grad-cam's maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.attribution import ablation_cam, score_cam

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """conv → BN → ReLU → conv → ReLU (+ a residual) → GAP → linear, in float64."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = self.a(x)
        h = self.b(h) + h
        return self.fc(self.pool(self.c(h)).flatten(1))


def _real_drops(model, x, layer, classes):
    """Zero each channel of ``layer`` with a forward hook and re-run the whole model."""
    mod = dict(model.named_modules())[layer]
    with torch.no_grad():
        s0 = model(x)[torch.arange(len(x)), classes]
        out = []
        A = {}
        h = mod.register_forward_hook(lambda m, i, o: A.setdefault("a", o))
        model(x)
        h.remove()
        for c in range(A["a"].shape[1]):

            def zero(m, i, o, c=c):
                o = o.clone()
                o[:, c] = 0
                return o

            h = mod.register_forward_hook(zero)
            out.append(s0 - model(x)[torch.arange(len(x)), classes])
            h.remove()
    return torch.stack(out, 1), s0, A["a"]


@pytest.mark.parametrize("layer,path", [("c", "closed form"), ("b", "after the layer"), ("a.2", "after the layer")])
def test_ablation_drops_are_the_real_ablations(layer, path):
    model = Net().double().eval()
    x = torch.rand(3, 3, 12, 10, dtype=torch.float64)
    e = ablation_cam(model, x, layer=layer, batch_size=4)
    assert e.settings["path"] == path
    drops, s0, A = _real_drops(model, x, layer, e.classes)
    assert torch.allclose(e.extras["drops"].double(), drops, rtol=1e-5, atol=1e-6 * float(drops.abs().max()))
    w = drops / s0.view(-1, 1)
    expected = torch.einsum("nk,nkhw->nhw", w, A).clamp_min(0)
    assert torch.allclose(e.raw.double(), expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


def test_a_model_that_does_not_trace_ablates_through_the_whole_model(untouched):
    class Branchy(Net):
        def forward(self, x):
            if x.mean() > 5:
                x = -x
            return super().forward(x)

    model = untouched(Branchy().double().eval())
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    e = ablation_cam(model, x, layer="b")
    assert e.settings["path"] == "whole model"
    drops, _, _ = _real_drops(model, x, "b", e.classes)
    assert torch.allclose(e.extras["drops"].double(), drops, rtol=1e-5, atol=1e-9)


def _corr(a, b):
    return float(np.corrcoef(np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel())[0, 1])


@pytest.fixture(scope="module")
def resnet():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.mark.parametrize("layer", ["layer4.1", "layer3.1"])
def test_ablation_cam_agrees_with_pytorch_grad_cam(resnet, untouched, layer):
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = untouched(resnet)
    x = torch.rand(2, 3, 64, 72)
    e = ablation_cam(model, x, layer=layer)
    assert e.settings["path"] == ("closed form" if layer == "layer4.1" else "after the layer")
    mod = dict(model.named_modules())[layer]
    theirs = AblationCAM(model, [mod])(x, targets=[ClassifierOutputTarget(int(c)) for c in e.classes])
    for i in range(2):
        assert _corr(e.maps[i], theirs[i]) >= 0.999


def test_score_cam_agrees_with_pytorch_grad_cam(resnet, untouched):
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = untouched(resnet)
    x = torch.rand(1, 3, 48, 56)
    e = score_cam(model, x, layer="layer2.1")
    cam = ScoreCAM(model, [model.layer2[1]])
    cam.batch_size = 64
    theirs = cam(x, targets=[ClassifierOutputTarget(int(c)) for c in e.classes])
    assert _corr(e.maps[0], theirs[0]) >= 0.999


def test_score_cam_weights_are_the_softmax_of_masked_scores():
    model = Net().double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    e = score_cam(model, x, layer="b", batch_size=2)
    A = {}
    mod = model.b
    h = mod.register_forward_hook(lambda m, i, o: A.setdefault("a", o.detach()))
    with torch.no_grad():
        model(x)
        h.remove()
        up = torch.nn.functional.interpolate(A["a"], size=(8, 8), mode="bilinear", align_corners=True)[0]
        scores = []
        for k in range(up.shape[0]):
            m = (up[k] - up[k].min()) / (up[k].max() - up[k].min() + 1e-8)
            scores.append(model(x * m)[0, e.classes[0]])
    scores = torch.stack(scores)
    assert torch.allclose(e.extras["scores"][0].double(), scores, rtol=1e-6, atol=1e-9)
    assert torch.allclose(e.extras["weights"][0].double(), scores.softmax(0), rtol=1e-5)


@pytest.mark.parametrize("batch_size", [None, 1, 3])
def test_score_cam_sharing_the_forward_of_constant_maps_changes_nothing(batch_size, untouched):
    """Channels whose map is constant (dead after the ReLU, or a constant bias) get an all-zero mask and share one
    forward; their scores, and every other, equal a forward per channel with no sharing (also on two threads)."""
    model = Net().double().eval()
    with torch.no_grad():
        conv = model.b[0]
        conv.weight[[1, 4]] = 0
        conv.bias[[1, 4]] = -1.0  # ReLU(−1) = 0 everywhere
        conv.weight[2] = 0
        conv.bias[2] = 0.3  # constant 0.3
    model = untouched(model)
    x = torch.rand(2, 3, 10, 12, dtype=torch.float64)
    n = torch.get_num_threads()
    torch.set_num_threads(2)  # the tuner also tries one thread
    try:
        e = score_cam(model, x, layer="b", batch_size=batch_size)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)
    with torch.no_grad():
        A = {}
        h = model.b.register_forward_hook(lambda m, i, o: A.setdefault("a", o.detach()))
        model(x)
        h.remove()
        up = torch.nn.functional.interpolate(A["a"], size=(10, 12), mode="bilinear", align_corners=True)
        want = torch.empty(2, 6, dtype=torch.float64)
        for i in range(2):
            for k in range(6):
                m = (up[i, k] - up[i, k].min()) / (up[i, k].max() - up[i, k].min() + 1e-8)
                want[i, k] = model(x[i : i + 1] * m)[0, e.classes[i]]
    assert bool((up[:, [1, 2, 4]].flatten(2).std(2) == 0).all())  # the three channels really are constant
    assert torch.equal(e.extras["constant"], up.flatten(2).amax(2) == up.flatten(2).amin(2))
    assert torch.allclose(e.extras["scores"].double(), want, rtol=1e-6, atol=1e-9)  # kept as float32
    assert torch.allclose(e.extras["weights"].double(), want.softmax(1), rtol=1e-6)
