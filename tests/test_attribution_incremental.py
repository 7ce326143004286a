"""Incremental occlusion (Krypton): the same values as full re-inference, on every layer type it has a rule for.

Exactness is checked in float64, where both paths agree to rounding (1e-9 of the
map's largest value), on hand-built nets that exercise each rule (strided, dilated,
grouped, depthwise, "same"-padded and timm's Conv2dSame convolutions, max/avg
pooling with padding and ceil mode, 1×1 stride-2 shortcuts, residual additions,
products of two branches, channel concatenation) and on the model zoo (random
weights, small non-square inputs, several windows, strides and fills, per-sample
fills). In float32 the incremental map is no further from the float64 map than
full re-inference in float32 is.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.attribution import occlusion
from cnnlens.attribution.incremental import IncrementalOcclusion, Stats, input_box

pytestmark = pytest.mark.usefixtures("one_thread")


def _agree(model, x, rel=1e-9, **kw):
    e1 = occlusion(model, x, **kw)
    e0 = occlusion(model, x, incremental=False, **kw)
    assert e1.settings["path"] == "incremental", e1.settings.get("full_reason")
    assert e0.settings["path"] == "full"
    scale = e0.raw.abs().max()
    assert scale > 0
    assert torch.allclose(e1.raw, e0.raw, rtol=0, atol=rel * float(scale)), float((e1.raw - e0.raw).abs().max() / scale)
    assert torch.allclose(e1.maps, e0.maps, rtol=0, atol=rel * float(scale))
    assert torch.allclose(e1.extras["probability"], e0.extras["probability"], rtol=0, atol=1e-6)
    assert torch.equal(e1.classes, e0.classes)
    return e1, e0


class Zoo(nn.Module):
    """One of every layer the incremental path has a rule for, in float64."""

    def __init__(self):
        super().__init__()
        from timm.layers import Conv2dSame

        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dil = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.same = Conv2dSame(8, 8, 3, stride=2)
        self.dw = nn.Conv2d(8, 8, 5, padding="same", groups=8)
        self.short = nn.Conv2d(8, 12, 1, stride=2)
        self.main = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)
        self.avg2 = nn.AvgPool2d(2)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(20, 5)
        with torch.no_grad():  # BatchNorm with statistics that are not the identity
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        x = F.relu(self.dil(x)) + x  # residual with different boxes
        x = self.pool(x)
        x = x * torch.sigmoid(self.dw(x))  # product of two branches
        y = self.main(x) + self.short(x)  # 1×1 stride-2 shortcut
        y = self.avg(y) * 0.5 - 1
        y = torch.cat([y, F.relu6(self.same(x))], 1)
        y = self.avg2(y)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


@pytest.mark.parametrize("size,window,stride", [((37, 45), 8, 5), ((33, 30), 5, 3), ((40, 40), 13, 13)])
def test_every_rule_matches_full_reinference_in_float64(untouched, size, window, stride):
    model = untouched(Zoo().double().eval())
    x = torch.rand(1, 3, *size, dtype=torch.float64)
    _agree(model, x, window=window, stride=stride)


@pytest.mark.parametrize("fill", ["black", "blur", 0.3])
def test_fills_including_per_sample_fills(untouched, fill):
    model = untouched(Zoo().double().eval())
    x = torch.rand(3, 3, 29, 34, dtype=torch.float64)
    _agree(model, x, window=(6, 9), stride=(4, 5), fill=fill)
    per_sample = torch.rand(3, 3, 29, 34, dtype=torch.float64)
    _agree(model, x, window=7, stride=4, fill=per_sample)


def test_a_fill_equal_to_the_image_gives_exactly_zero(untouched):
    model = untouched(Zoo().double().eval())
    x = torch.full((1, 3, 24, 24), 0.5, dtype=torch.float64)
    x[..., 12:, 12:] = torch.rand(3, 12, 12, dtype=torch.float64)
    e = occlusion(model, x, window=6, stride=6)
    assert e.settings["path"] == "incremental"
    assert (e.raw[0, :2, :] == 0).all() and (e.raw[0, :, :2] == 0).all()
    assert (e.raw[0, 2:, 2:] != 0).all()


def test_the_batch_size_does_not_change_the_result(untouched):
    model = untouched(Zoo().double().eval())
    x = torch.rand(2, 3, 30, 26, dtype=torch.float64)
    a = occlusion(model, x, window=6, stride=3, batch_size=1)
    b = occlusion(model, x, window=6, stride=3)
    assert torch.allclose(a.raw, b.raw, rtol=0, atol=1e-12)


def test_the_flop_bound_counts_what_is_recomputed():
    model = Zoo().double().eval()
    inc = IncrementalOcclusion(model)
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        env = inc.clean(x)
        rows = torch.tensor([0, 28, 56])
        small, big = Stats(), Stats()
        inc.run(env, input_box(x, x.new_zeros(1, 1, 1, 1), rows, rows, 8, 8)[0], small)
        inc.run(env, input_box(x, x.new_zeros(1, 1, 1, 1), rows[:1], rows[:1], 64, 64)[0], big)
    assert small.bound > 1.5
    assert big.bound == pytest.approx(1.0)  # a patch over the whole image recomputes everything
    # the full count is exactly 9 positions × the model's multiply-accumulates
    assert small.full == pytest.approx(9 * big.full)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.mean() > 2:  # data-dependent control flow: does not trace
            x = -x
        return self.fc(self.conv(x).mean((2, 3)))


def test_a_model_that_does_not_trace_falls_back_and_says_why(untouched, caplog):
    model = untouched(Branchy().eval())
    x = torch.rand(1, 3, 12, 12)
    with caplog.at_level("INFO", logger="cnnlens.attribution"):
        e = occlusion(model, x, window=4, stride=4)
    assert e.settings["path"] == "full" and "torch.fx" in e.settings["full_reason"]
    assert torch.allclose(e.raw, occlusion(model, x, window=4, stride=4, incremental=False).raw)
    with pytest.raises(ValueError, match="incremental occlusion is not possible"):
        occlusion(model, x, window=4, stride=4, incremental=True)


def test_a_channel_target_runs_the_whole_model(untouched):
    model = untouched(Zoo().double().eval())
    from cnnlens.targets import Target

    e = occlusion(model, torch.rand(1, 3, 20, 20, dtype=torch.float64), Target.channel("dw", 1), window=5, stride=5)
    assert e.settings["path"] == "full"


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x * torch.tensor(2.0)).mean((2, 3)))


def test_tracing_leaves_no_attribute_on_the_model(untouched):
    model = untouched(Constant().eval())
    before = set(vars(model)) | set(dict(model.named_buffers()))
    e = occlusion(model, torch.rand(1, 3, 10, 10), window=4, stride=3)
    assert e.settings["path"] == "incremental"
    assert set(vars(model)) | set(dict(model.named_buffers())) == before


def _zoo(name):
    import timm
    import torchvision

    import cnnlens

    torch.manual_seed(0)
    if name == "digits-cnn":
        return cnnlens.load_model("digits-cnn")
    if name == "tf_efficientnet_lite0":
        return timm.create_model(name)
    m = getattr(torchvision.models, name)()
    if name == "vgg11":  # the 4096-wide head only costs memory here (it runs on full tensors either way)
        m.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 10))
    return m


@pytest.mark.parametrize("name,size,window,stride,fill", [
    ("resnet18", (36, 44), 12, 12, "grey"),
    ("resnet18", (40, 34), 9, 6, "blur"),
    ("vgg11", (34, 40), 10, 8, "black"),
    ("mobilenet_v2", (36, 44), 12, 12, "blur"),
    ("tf_efficientnet_lite0", (44, 36), 11, 9, "grey"),
    ("densenet121", (36, 44), 12, 12, "blur"),
    ("digits-cnn", (32, 28), 6, 4, "black"),
])
def test_the_model_zoo_matches_full_reinference_in_float64(untouched, name, size, window, stride, fill):
    model = untouched(_zoo(name).eval().double())
    c = 1 if name == "digits-cnn" else 3
    x = torch.rand(2 if fill == "blur" else 1, c, *size, dtype=torch.float64)
    _agree(model, x, window=window, stride=stride, fill=fill)


@pytest.mark.parametrize("name", ["resnet18", "digits-cnn"])
def test_in_float32_no_further_from_float64_than_full_reinference(untouched, name):
    model = untouched(_zoo(name).eval())
    c = 1 if name == "digits-cnn" else 3
    x = torch.rand(1, c, 36, 40)
    kw = dict(window=10, stride=6)
    inc = occlusion(model, x, **kw).raw
    full = occlusion(model, x, incremental=False, **kw).raw
    exact = occlusion(_zoo(name).eval().double(), x.double(), incremental=False, **kw).raw
    scale = float(exact.abs().max())
    err_inc, err_full = float((inc - exact).abs().max()), float((full - exact).abs().max())
    assert err_inc <= max(1e-5 * scale, 2 * err_full), (err_inc, err_full, scale)


def test_the_tuned_full_reinference_gives_the_same_map(untouched, monkeypatch):
    """Whatever the tuner picks (batch sizes 1, 3 and 2, one thread or two, its choice kept from an earlier call), the
    map equals one forward at a time."""
    import importlib

    import cnnlens._batch as B

    occ = importlib.import_module("cnnlens.attribution.occlusion")
    monkeypatch.setattr(B, "_MEASURED", {})
    monkeypatch.setattr(B, "EXPLORE", 0.5)  # re-measure often: every arm runs several times
    monkeypatch.setattr(occ, "arms", lambda x, bs, cl: (B.Arm(1, cl), B.Arm(3, False, 1), B.Arm(2, True, 2)))
    model = untouched(Zoo().double().eval())
    x = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    one = occlusion(model, x, window=4, stride=4, incremental=False, batch_size=1)
    ran = []
    real = B.Tuner.timed

    def spy(self, arm, n):
        ran.append((arm, n))
        return real(self, arm, n)

    monkeypatch.setattr(B.Tuner, "timed", spy)
    n = torch.get_num_threads()
    for _ in range(2):  # the second call starts from the first one's measurements
        auto = occlusion(model, x, window=4, stride=4, incremental=False, channels_last=True)
        assert torch.get_num_threads() == n
        assert torch.allclose(auto.raw, one.raw, rtol=0, atol=1e-9 * float(one.raw.abs().max()))
        assert torch.allclose(auto.extras["probability"], one.extras["probability"], atol=1e-9)
    assert {a.batch for a, _ in ran} == {1, 2, 3} and sum(k for _, k in ran) == 2 * 2 * 36


def test_approximate_mode_with_no_cap_and_every_position_is_exact(untouched):
    model = untouched(Zoo().double().eval())
    x = torch.rand(1, 3, 30, 28, dtype=torch.float64)
    exact = occlusion(model, x, window=6, stride=2)
    full = occlusion(model, x, window=6, stride=2, approximate={"tau": 1.0, "fraction": 1.0}, check=True)
    assert full.settings["path"] == "approximate" and full.settings["approximate"]["tau"] == 1.0
    assert torch.allclose(full.raw, exact.raw, rtol=0, atol=1e-9 * float(exact.raw.abs().max()))
    assert full.extras["ssim"][0] == pytest.approx(1.0)


def test_approximate_mode_interpolates_what_it_does_not_compute(untouched):
    model = untouched(Zoo().double().eval())
    x = torch.rand(1, 3, 30, 28, dtype=torch.float64)
    e = occlusion(model, x, window=6, stride=2, approximate={"tau": 1.0, "fraction": 0.2, "coarse": 3}, check=True)
    exact = occlusion(model, x, window=6, stride=2)
    rows, cols = e.extras["rows"].tolist(), e.extras["cols"].tolist()
    coarse_r = [r for r in rows if r % 6 == 0]
    coarse_c = [c for c in cols if c % 6 == 0]
    # positions on the coarse grid are computed (exactly, with no cap)
    for r in coarse_r:
        for c in coarse_c:
            i, j = rows.index(r), cols.index(c)
            assert e.raw[0, i, j] == pytest.approx(float(exact.raw[0, i, j]), abs=1e-9)
    same = torch.isclose(e.raw, exact.raw, rtol=0, atol=1e-9).float().mean()
    assert 0.2 <= same < 1  # the top fifth (and the coarse grid) exactly, the rest interpolated
    assert 0 < float(e.extras["ssim"][0]) < 1
    with pytest.raises(ValueError, match="tau"):
        occlusion(model, x, window=6, stride=2, approximate={"tau": 0})


def test_adaptive_pooling_to_the_maps_own_size_is_the_identity(untouched):
    """VGG's head at 224²: AdaptiveAvgPool2d((7, 7)) on a 7×7 map."""
    torch.manual_seed(0)
    model = untouched(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((12, 10)),
                                    nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(480, 3)).double().eval())
    _agree(model, torch.rand(1, 3, 12, 10, dtype=torch.float64), window=3, stride=2)
