"""Silent wrong answers and misleading errors, each case of the reliability report pinned down.

In-place twins must give the values of their plain twins; a module that runs twice is refused on
every path, also where the forward stops early; gradient methods work under ``no_grad`` and
``inference_mode``; targets are checked before any forward; CAM's head check knows low precision;
an empty image and a 1×1 grid are named.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import cnnlens
from cnnlens import attacks, attribution, inside
from cnnlens.targets import Target

pytestmark = pytest.mark.usefixtures("one_thread")


def inplace_twin(model: nn.Module) -> nn.Module:
    """The same weights with every ReLU in place (as torchvision writes them)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    return twin


@pytest.fixture(scope="module")
def digits_pair():
    m = cnnlens.load_model("digits-cnn")
    from cnnlens.models.digits import digits_split

    x = digits_split("test").x[:3].clone()
    return m, inplace_twin(m), x


def _data(x):
    return torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 2])[: len(x)])


# every method that reads a recorded layer output, on the layer an in-place ReLU overwrites
READERS = {
    "saliency/channel": lambda m, x: attribution.saliency(m, x, target=Target.channel("net.features.0", 3)).maps,
    "gradient_x_input/channel": lambda m, x: (
        attribution.gradient_x_input(m, x, target=Target.channel("net.features.3", 1)).maps
    ),
    "integrated_gradients/neuron": lambda m, x: (
        attribution.integrated_gradients(m, x, target=Target.neuron("net.features.0", 2, 5, 5), steps=4).maps
    ),
    "occlusion/channel": lambda m, x: (
        attribution.occlusion(m, x, target=Target.channel("net.features.0", 3), window=8, stride=8).maps
    ),
    "gradcam/class": lambda m, x: attribution.gradcam(m, x, layer="net.features.3").maps,
    "gradcam/channel": lambda m, x: (
        attribution.gradcam(m, x, layer="net.features.0", target=Target.channel("net.features.3", 2)).maps
    ),
    "gradcam_pp": lambda m, x: attribution.gradcam_pp(m, x, layer="net.features.6").maps,
    "guided_gradcam": lambda m, x: attribution.guided_gradcam(m, x, layer="net.features.3").maps,
    "feature_maps": lambda m, x: inside.feature_maps(m, x, "net.features.0").activations,
    "neuron_stats": lambda m, x: inside.neuron_stats(m, _data(x), "net.features.0").mean,
    "dataset_search": lambda m, x: inside.dataset_search(m, _data(x), "net.features.3", k=2).activations,
    "influence": lambda m, x: inside.influence(m, x, "net.features.3").taylor,
    "maximize": lambda m, x: inside.maximize(m, inside.objectives.channel("net.features.0", 3), steps=3).images,
    "deconvnet": lambda m, x: inside.deconvnet(m, x, "net.features.3", 1).images,
    "deep_dream": lambda m, x: inside.deep_dream(m, x[0], "net.features.3", octaves=1, steps=2).images,
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_an_inplace_twin_gives_the_values_of_its_plain_twin(digits_pair, untouched, name):
    plain, twin, x = digits_pair
    untouched(plain), untouched(twin)
    a, b = READERS[name](plain, x), READERS[name](twin, x)
    assert a.abs().amax() > 0
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().amax())), name


def test_the_reported_case_a_channel_of_the_conv_not_of_the_relu(digits_pair):
    plain, twin, x = digits_pair
    t = Target.channel("net.features.0", 3)
    a = attribution.saliency(twin, x, target=t).maps
    relu = attribution.saliency(plain, x, target=Target.channel("net.features.1", 3)).maps
    assert torch.allclose(a, attribution.saliency(plain, x, target=t).maps)
    assert not torch.allclose(a, relu)  # what came out before: the map of the ReLU after the conv


def test_a_record_changed_through_shared_memory_is_refused():
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.flat = nn.Flatten()
            self.fc = nn.Linear(2 * 16, 2)

        def forward(self, x):
            a = self.conv(x)
            f = self.flat(a)  # a view of a
            a.relu_()  # changes f through shared memory after the layer ran
            return self.fc(f)

    m = Aliased()
    with pytest.raises(ValueError, match="changed in place after the layer ran"):
        attribution.saliency(m, torch.rand(1, 1, 4, 4), target=Target.channel("flat", 0))


# --------------------------------------------------------------------------- modules that run twice
class SharedReLU(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()  # used twice, as in torchvision's BasicBlock
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


X8 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
DATA8 = torch.utils.data.TensorDataset(X8, torch.tensor([0, 1]))
TWICE = {
    "feature_maps": lambda m: inside.feature_maps(m, X8, "relu"),
    "neuron_stats": lambda m: inside.neuron_stats(m, DATA8, "relu"),
    "receptive_field": lambda m: inside.receptive_field(m, "relu", input_size=8, channels=3),
    "dataset_search": lambda m: inside.dataset_search(m, DATA8, "relu", k=1),
    "maximize": lambda m: inside.maximize(m, inside.objectives.channel("relu", 0), steps=2, size=8),
    "deep_dream": lambda m: inside.deep_dream(m, X8[0], "relu", octaves=1, steps=1),
    "influence": lambda m: inside.influence(m, X8, "relu"),
    "gradcam": lambda m: attribution.gradcam(m, X8, layer="relu"),
}


@pytest.mark.parametrize("name", sorted(TWICE))
def test_a_module_that_runs_twice_is_refused_on_every_path(untouched, name):
    m = untouched(SharedReLU())
    with pytest.raises(ValueError, match="'relu' ran twice in one forward pass"):
        TWICE[name](m)


def test_resnet18_shared_relu_is_refused_by_feature_maps(untouched):
    import torchvision

    torch.manual_seed(0)
    m = untouched(torchvision.models.resnet18(num_classes=4).eval())
    with pytest.raises(ValueError, match="'layer1.0.relu' ran twice"):
        inside.feature_maps(m, torch.rand(1, 3, 32, 32), "layer1.0.relu")
    fm = inside.feature_maps(m, torch.rand(1, 3, 32, 32), "layer1.0.bn1")  # a module that runs once still works
    assert fm.activations.shape == (1, 64, 8, 8)


# --------------------------------------------------------------------------- grad mode of the caller
GRAD = {
    "saliency": lambda m, x: attribution.saliency(m, x).maps,
    "guided_backprop": lambda m, x: attribution.guided_backprop(m, x).maps,
    "gradcam": lambda m, x: attribution.gradcam(m, x).maps,
    "integrated_gradients": lambda m, x: attribution.integrated_gradients(m, x, steps=4).maps,
    "fgsm": lambda m, x: attacks.fgsm(m, x, eps=4 / 255).x_adv,
    "pgd": lambda m, x: attacks.pgd(m, x, eps=4 / 255, steps=2).x_adv,
    "minimal_eps": lambda m, x: attacks.minimal_eps(m, x, max_iter=3).eps,
    "influence": lambda m, x: inside.influence(m, x, "net.features.3").gradient,
    "deep_dream": lambda m, x: inside.deep_dream(m, x[0], "net.features.3", octaves=1, steps=2).images,
}


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("name", sorted(GRAD))
def test_gradient_methods_work_under_the_callers_grad_mode(digits_pair, untouched, name, mode):
    m, _, x = digits_pair
    untouched(m)
    want = GRAD[name](m, x)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        xi = x.clone()  # an inference tensor under inference_mode
        got = GRAD[name](m, xi)
        assert torch.is_grad_enabled() is False  # the caller's mode is back
    assert torch.equal(want, got)


# --------------------------------------------------------------------------- targets before any forward
class Boom(nn.Module):
    def __init__(self, spec=None):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2, 10)
        if spec is not None:
            self.spec = spec

    def forward(self, x):
        raise RuntimeError("a forward ran before the target was checked")


@pytest.mark.parametrize("target", [10, -1])
@pytest.mark.parametrize("name", ["fgsm", "pgd", "minimal_eps"])
def test_attack_targets_are_checked_against_the_spec_before_any_forward(name, target):
    from cnnlens.models.digits import digits_spec

    m = Boom(digits_spec())
    x = torch.rand(2, 1, 8, 8)
    call = {
        "fgsm": lambda: attacks.fgsm(m, x, eps=0.1, target=target),
        "pgd": lambda: attacks.pgd(m, x, eps=0.1, steps=1, target=target),
        "minimal_eps": lambda: attacks.minimal_eps(m, x, target=target),
    }[name]
    with pytest.raises(ValueError, match="out of range: the model has 10 classes" if target == 10 else "is negative"):
        call()


NEGATIVE = {
    **{f"attribution.{n}": (lambda f: lambda m, x: f(m, x, target=-1))(f) for n, f in attribution.METHODS.items()},
    "attacks.fgsm": lambda m, x: attacks.fgsm(m, x, eps=0.1, target=-1),
    "attacks.pgd": lambda m, x: attacks.pgd(m, x, eps=0.1, target=-1),
    "attacks.minimal_eps": lambda m, x: attacks.minimal_eps(m, x, target=-1),
    "inside.influence": lambda m, x: inside.influence(m, x, "conv", target=-1),
    "inside.deep_dream": lambda m, x: inside.deep_dream(m, x[0], target=-1, octaves=1, steps=1),
    "y=-1": lambda m, x: attribution.saliency(m, x, target="true", y=torch.tensor([0, -1])),
}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_a_negative_class_is_refused_before_any_forward_on_a_plain_module(name):
    with pytest.raises(ValueError, match="negative|class indices in"):
        NEGATIVE[name](Boom(), torch.rand(2, 1, 8, 8))


# --------------------------------------------------------------------------- precision
class GapNet(nn.Module):
    def __init__(self, global_max: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1) if global_max else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            self.fc.weight.mul_(3.0)  # logits of a few tens, where bfloat16 rounds to ±0.125

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "autocast"])
def test_cam_accepts_a_gap_linear_head_in_low_precision(dtype, untouched):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = attribution.cam(GapNet(), x, target=3)
    net = untouched(GapNet())
    if dtype == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            e = attribution.cam(net, x, target=3)
    else:
        net = untouched(GapNet().to(getattr(torch, dtype)))
        e = attribution.cam(net, x, target=3)
    assert float(ref.raw.abs().amax()) > 10
    assert torch.allclose(e.raw, ref.raw, rtol=0.05, atol=0.05 * float(ref.raw.abs().amax()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_head_check_still_refuses_a_global_max_pool_in_low_precision(dtype):
    net = GapNet(global_max=True).to(dtype)
    with pytest.raises(ValueError, match="does not give the logits .*rounding allows.*CAM needs a global-average-pool"):
        attribution.cam(net, torch.rand(2, 3, 16, 16), layer="relu", classifier="fc")


# --------------------------------------------------------------------------- layout, empty images, flat grids
class ViewNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 64 * 64, 3)

    def forward(self, x):
        a = self.conv(x)
        return self.fc(a.view(a.shape[0], -1))  # needs the default layout


def test_the_channels_last_retry_passes_the_input_contiguous(untouched):
    m = untouched(ViewNet())
    x = torch.rand(1, 3, 64, 64)
    want = attribution.saliency(m, x, channels_last=False).maps
    got = attribution.saliency(m, x.contiguous(memory_format=torch.channels_last)).maps
    assert torch.allclose(want, got, atol=1e-6)


EMPTY = {
    "saliency": lambda m, x: attribution.saliency(m, x),
    "occlusion": lambda m, x: attribution.occlusion(m, x),
    "fgsm": lambda m, x: attacks.fgsm(m, x, eps=0.1),
    "feature_maps": lambda m, x: inside.feature_maps(m, x, "conv"),
    "deconvnet": lambda m, x: inside.deconvnet(m, x, "conv", 0),
    "deep_dream": lambda m, x: inside.deep_dream(m, x[0], "conv", octaves=1, steps=1),
    "influence": lambda m, x: inside.influence(m, x, "conv"),
}


@pytest.mark.parametrize("shape", [(1, 3, 0, 8), (1, 3, 8, 0)])
@pytest.mark.parametrize("name", sorted(EMPTY))
def test_an_empty_image_is_one_clear_error(name, shape):
    with pytest.raises(ValueError, match=r"x has an empty image \(\d×\d pixels\)"):
        EMPTY[name](GapNet(), torch.rand(*shape))


def test_a_1x1_grid_warns_and_names_a_layer_with_a_real_map(digits_pair, caplog):
    m, _, x = digits_pair
    with caplog.at_level(logging.WARNING, logger="cnnlens"):
        e = attribution.gradcam(m, x, layer="net.pool")
    flat = e.maps.flatten(1)
    assert torch.all(flat.amax(1) - flat.amin(1) <= 1e-5 * flat.abs().amax(1))  # one value over the image
    assert "'net.pool' has a 1×1 grid" in caplog.text and "a real grid is 'net.features'" in caplog.text


def test_a_layer_off_the_path_is_described_truly(untouched):
    class SideBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.side = nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            a = self.conv(x).relu()
            self.side(a)  # computed, never used
            return self.fc(a.mean((2, 3)))

    m = untouched(SideBranch())
    with pytest.raises(ValueError, match="no path leads from it to the target .*side branch"):
        attribution.gradcam(m, torch.rand(1, 3, 8, 8), layer="side")
