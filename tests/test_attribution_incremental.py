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

import contextlib

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


@pytest.mark.parametrize(
    "name,size,window,stride,fill",
    [
        ("resnet18", (36, 44), 12, 12, "grey"),
        ("resnet18", (40, 34), 9, 6, "blur"),
        ("vgg11", (34, 40), 10, 8, "black"),
        ("mobilenet_v2", (36, 44), 12, 12, "blur"),
        ("tf_efficientnet_lite0", (44, 36), 11, 9, "grey"),
        ("densenet121", (36, 44), 12, 12, "blur"),
        ("digits-cnn", (32, 28), 6, 4, "black"),
    ],
)
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

    import cnnlens.batching as B

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


def test_incremental_chunks_run_on_the_thread_count_measured_fastest(untouched, monkeypatch):
    """On a CPU with two torch threads, the incremental path tries each chunk size on both thread counts (one, the
    process's) and keeps the faster; exact either way (float64, against full re-inference), the count restored."""
    import cnnlens.batching as B

    monkeypatch.setattr(B, "_MEASURED", {})
    monkeypatch.setattr(B, "EXPLORE", 0.5)
    ran = []
    real = B.Tuner.timed

    @contextlib.contextmanager
    def spy(self, arm, n):
        with real(self, arm, n):
            ran.append((arm.threads, torch.get_num_threads(), n))  # inside: on the arm's thread count
            yield

    monkeypatch.setattr(B.Tuner, "timed", spy)
    model = untouched(Zoo().double().eval())
    x = torch.rand(2, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        e1, e0 = _agree(model, x, window=4, stride=2, batch_size=8)
        assert torch.get_num_threads() == 2
        approx = occlusion(model, x, window=4, stride=2, batch_size=8, approximate={"fraction": 1.0})
        assert torch.allclose(approx.raw, e0.raw, rtol=0, atol=1e-9 * float(e0.raw.abs().max()))
    finally:
        torch.set_num_threads(before)
    assert {t for t, _, _ in ran} == {0, 1}  # both arms ran
    assert all(n == (1 if t == 1 else 2) for t, n, _ in ran)  # each on its thread count
    assert sum(k for _, _, k in ran) >= 2 * 11 * 11  # every position of the exact map went through the tuner


@pytest.mark.parametrize("coarse", [1, 2, 3])
def test_approximate_mode_with_no_cap_and_every_position_is_exact(untouched, coarse):
    model = untouched(Zoo().double().eval())
    x = torch.rand(1, 3, 30, 28, dtype=torch.float64)
    exact = occlusion(model, x, window=6, stride=2)
    full = occlusion(
        model, x, window=6, stride=2, approximate={"tau": 1.0, "fraction": 1.0, "coarse": coarse}, check=True
    )
    assert full.settings["path"] == "approximate" and full.settings["approximate"]["tau"] == 1.0
    assert full.settings["approximate"]["computed"] == 1.0
    assert torch.allclose(full.raw, exact.raw, rtol=0, atol=1e-9 * float(exact.raw.abs().max()))
    assert torch.allclose(full.extras["probability"], exact.extras["probability"], rtol=0, atol=1e-12)
    assert full.extras["ssim"][0] == pytest.approx(1.0)


def test_approximate_mode_with_no_cap_is_exact_in_float32_on_digits(untouched, digits_model):
    x = torch.rand(2, 1, 32, 32)
    exact = occlusion(digits_model, x, window=6, stride=2)
    approx = occlusion(digits_model, x, window=6, stride=2, approximate={"tau": 1.0, "fraction": 1.0})
    assert torch.allclose(approx.raw, exact.raw, rtol=0, atol=1e-5 * float(exact.raw.abs().max()))


def test_drill_down_runs_the_coarse_grid_and_its_share_exactly_and_fills_the_rest(untouched):
    from cnnlens.attribution.occlusion import _coarse_index, _fill

    model = untouched(Zoo().double().eval())
    x = torch.rand(1, 3, 30, 28, dtype=torch.float64)
    e = occlusion(model, x, window=6, stride=2, approximate={"tau": 1.0, "fraction": 0.3, "coarse": 2}, check=True)
    exact = occlusion(model, x, window=6, stride=2)
    Pr, Pc = e.raw.shape[1:]  # 13 × 12
    rc, cc = _coarse_index(Pr, 2), _coarse_index(Pc, 2)
    assert (rc, cc) == (list(range(0, 13, 2)), [0, 2, 4, 6, 8, 10, 11])
    assert e.settings["approximate"]["coarse_positions"] == (7, 7)
    n_run = 49 + round(0.3 * (Pr * Pc - 49))
    assert e.settings["approximate"]["computed"] == pytest.approx(n_run / (Pr * Pc))
    hit = torch.isclose(e.raw[0], exact.raw[0], rtol=0, atol=1e-9 * float(exact.raw.abs().max()))
    assert hit[torch.tensor(rc).view(-1, 1), torch.tensor(cc).view(1, -1)].all()  # the coarse grid: exact
    assert hit.sum() >= n_run  # and the recomputed share (others may agree by chance, not here)
    assert hit.sum() < Pr * Pc
    # what was not run is the neighbour-weighted mean of what was
    filled = _fill(
        torch.where(hit, e.raw[0], torch.zeros_like(e.raw[0])),
        hit,
        rc,
        cc,
        e.extras["rows"].tolist(),
        e.extras["cols"].tolist(),
    )
    assert torch.allclose(filled.double(), e.raw[0].double(), atol=1e-6)
    assert 0.2 < float(e.extras["ssim"][0]) < 1


def test_drill_down_fills_from_the_known_neighbours():
    from cnnlens.attribution.occlusion import _fill

    v = torch.zeros(3, 3)
    known = torch.zeros(3, 3, dtype=torch.bool)
    known[0, 0], known[0, 2], known[2, 0], known[2, 2], known[0, 1] = True, True, True, True, True
    v[0, 0], v[0, 2], v[2, 0], v[2, 2], v[0, 1] = 1.0, 3.0, 5.0, 7.0, 2.0
    f = _fill(v, known, [0, 2], [0, 2], [0, 4, 8], [0, 4, 8])
    # centre: 4 diagonal (½ each) and 1 beside (1): (½(1 + 3 + 5 + 7) + 2) / 3
    assert float(f[1, 1]) == pytest.approx((0.5 * 16 + 2) / 3)
    assert float(f[2, 1]) == pytest.approx((5 + 7) / 2)  # two beside; its diagonals are unknown
    assert float(f[1, 0]) == pytest.approx((1 + 5 + 0.5 * 2) / 2.5)
    assert torch.equal(f[known], v[known])


def test_drill_down_order_puts_cell_interiors_first_by_corner_spread():
    from cnnlens.attribution.occlusion import _drill_order

    dc = torch.tensor([[0.0, 0.0, 2.0], [0.0, 1.0, 0.0], [7.0, 0.0, 9.0]])  # coarse drops at fine (0, 2, 4)²
    order = _drill_order(dc, [0, 2, 4], [0, 2, 4], 5, 5).tolist()
    assert sorted(order) == sorted(set(range(25)) - {0, 2, 4, 10, 12, 14, 20, 22, 24})  # each off-grid one once
    # cell interiors (1,1), (1,3), (3,1), (3,3) first, by corner spread 1, 2, 7, 9
    assert order[:4] == [18, 16, 8, 6]
    # then the edges, by the spread of their two ends: (3,4) and (4,3) between 0 and 9, (3,0) and (4,1) between 0
    # and 7, (0,3) and (1,4) between 0 and 2, then those between 0 and 1, and between 0 and 0 last
    assert order[4:] == [19, 23, 15, 21, 3, 9, 7, 11, 13, 17, 1, 5]


def test_the_tau_cap_is_centred_on_the_patch_also_at_the_border():
    from cnnlens.attribution.incremental import _window_dim

    # a 9-wide kernel (padding 4) over a 20-wide map: a patch on rows 0–1 reaches rows 0–5; capped at 4 rows,
    # the box must keep rows 0–1 where the patch is (centring on the part inside the map gave rows 1–4)
    out, length = _window_dim(torch.tensor([0, 8, 18]), 2, 20, 20, 9, 1, 1, 4, tau=0.2)
    assert length == 4
    assert out.tolist() == [0, 7, 16]  # border: flush; inside: centred on the patch (rows 8–9 → 7–10)
    # no cap: the whole projective field
    out, length = _window_dim(torch.tensor([0, 8, 18]), 2, 20, 20, 9, 1, 1, 4, tau=None)
    assert (out.tolist(), length) == ([0, 4, 10], 10)
    for start in range(0, 19):  # every capped box holds the patch's own rows
        o, n = _window_dim(torch.tensor([start]), 2, 20, 20, 9, 1, 1, 4, tau=0.2)
        assert int(o) <= start and start + 2 <= int(o) + n


def test_a_tau_cap_recomputes_less(untouched):
    model = untouched(Zoo().double().eval())
    x = torch.rand(1, 3, 48, 48, dtype=torch.float64)
    exact = occlusion(model, x, window=8, stride=8)
    capped = occlusion(model, x, window=8, stride=8, approximate={"tau": 0.3, "fraction": 1.0})
    assert capped.settings["approximate"]["tau"] == 0.3
    err = float((capped.raw - exact.raw).abs().max() / exact.raw.abs().max())
    assert err > 1e-6  # an approximation (how good, on a random-weight net, says little)
    inc, st_exact, st_cap = IncrementalOcclusion(model), Stats(), Stats()
    cap = IncrementalOcclusion(model, tau=0.3)
    rows = torch.tensor([0, 20, 40])
    with torch.no_grad():
        for m, st in ((inc, st_exact), (cap, st_cap)):
            m.run(m.clean(x), input_box(x, x.new_full((1, 1, 1, 1), 0.5), rows, rows, 8, 8)[0], st)
    assert st_cap.incremental < st_exact.incremental and st_cap.full == st_exact.full


def test_approximate_defaults_keep_ssim_on_the_cluttered_digits_model(untouched):
    """The bundled trained 64×64 model, window 8, stride 2 (29×29 positions: as 16/4 on 224²). Measured: mean SSIM
    0.970 (min 0.959) over these 4 images with the defaults, 0.901 with no drill-down (fraction 0)."""
    import skimage.metrics

    import cnnlens
    from cnnlens.attribution.occlusion import APPROXIMATE, _ssim
    from cnnlens.models.cluttered import cluttered_digits

    model = untouched(cnnlens.load_model("cluttered-digits-cnn"))
    ds = cluttered_digits("test")
    x = torch.stack([ds[i][0] for i in range(4)])
    e = occlusion(model, x, window=8, stride=2, approximate=True, check=True)
    exact = occlusion(model, x, window=8, stride=2)
    assert e.settings["approximate"] == {
        **APPROXIMATE,
        "coarse_positions": (15, 15),
        "computed": pytest.approx((225 + round(0.2 * (841 - 225))) / 841),
    }
    ssim = e.extras["ssim"]
    for s, a, b in zip(
        ssim, e.maps, exact.maps, strict=True
    ):  # the stored SSIM is scikit-image's, data range of the exact map
        assert float(s) == pytest.approx(
            skimage.metrics.structural_similarity(
                a.double().numpy(), b.double().numpy(), data_range=float(b.max() - b.min())
            ),
            abs=1e-6,
        )
    assert float(ssim.mean()) > 0.94 and float(ssim.min()) > 0.93
    coarse_only = occlusion(model, x, window=8, stride=2, approximate={"fraction": 0.0})
    assert coarse_only.settings["approximate"]["computed"] == pytest.approx(225 / 841)
    ssim0 = [_ssim(a, b) for a, b in zip(coarse_only.maps, exact.maps, strict=True)]
    assert sum(ssim0) / len(ssim0) < float(ssim.mean()) - 0.03  # the drill-down is what helps


def test_approximate_mode_rejects_bad_settings():
    model = Zoo().double().eval()
    x = torch.rand(1, 3, 30, 28, dtype=torch.float64)
    with pytest.raises(ValueError, match="tau"):
        occlusion(model, x, window=6, stride=2, approximate={"tau": 0})
    with pytest.raises(ValueError, match="unknown"):
        occlusion(model, x, window=6, stride=2, approximate={"ratio": 0.5})
    with pytest.raises(TypeError, match="approximate must be"):
        occlusion(model, x, window=6, stride=2, approximate="yes")
    with pytest.raises(ValueError, match="incremental"):
        occlusion(model, x, window=6, stride=2, approximate=True, incremental=False)


def test_adaptive_pooling_to_the_maps_own_size_is_the_identity(untouched):
    """VGG's head at 224²: AdaptiveAvgPool2d((7, 7)) on a 7×7 map."""
    torch.manual_seed(0)
    model = untouched(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((12, 10)),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Flatten(),
            nn.Linear(480, 3),
        )
        .double()
        .eval()
    )
    _agree(model, torch.rand(1, 3, 12, 10, dtype=torch.float64), window=3, stride=2)


class ViewLeNet(nn.Module):
    """LeNet as it is often written: ``x.view(x.size(0), -1)`` right after the last convolution block."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 5)
        self.fc1 = nn.Linear(8 * 5 * 5, 20)
        self.fc2 = nn.Linear(20, 4)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)  # needs the contiguous layout the plain forward gives
        return self.fc2(F.relu(self.fc1(x)))


def test_view_after_a_conv_runs_incrementally_and_equals_the_whole_model(untouched):
    model = untouched(ViewLeNet().double().eval())
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    _agree(model, x, window=6, stride=4)


class Flaky(ViewLeNet):
    """Traces, but an op of its forward refuses the values the incremental run gives it (a stand-in for any
    failure inside the incremental run that tracing cannot foresee)."""

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(_refuse_positions(x).flatten(1))))


@torch.fx.wrap
def _refuse_positions(x):
    if x.shape[0] > 2:
        raise RuntimeError("more images than this model takes")
    return x


def test_a_failing_incremental_run_falls_back_and_says_why(untouched, caplog):
    model = untouched(Flaky().eval())
    x = torch.rand(1, 3, 32, 32)
    with caplog.at_level("INFO", logger="cnnlens.attribution"):
        e = occlusion(model, x, window=8, stride=8, batch_size=2)
    assert e.settings["path"] == "full"
    assert "incremental run failed" in e.settings["full_reason"]
    assert "more images than this model takes" in e.settings["full_reason"]
    assert any("more images" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="incremental occlusion is not possible"):
        occlusion(model, x, window=8, stride=8, batch_size=2, incremental=True)
