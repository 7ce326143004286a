"""Activation maximisation: the target goes up many-fold, TV lowers TV, objectives compose, seeds reproduce."""

from __future__ import annotations

import pytest
import torch
from inside_nets import ChainNet, pixel_chain_net
from torch import nn

from cnnlens import LayerTap
from cnnlens.inside import Objective, maximize, objectives, total_variation
from cnnlens.inside.maximize import _Ctx, gaussian_blur
from cnnlens.models.spec import ModelSpec, PixelModel

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(steps=60, lr=0.1, param="pixel")


def _channel_means(model, images, layer="features.4"):
    with LayerTap(model, [layer], detach=True) as tap, torch.no_grad():
        tap.run(images)
        return tap[layer].mean((2, 3))


@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_raises_the_channel_many_fold(untouched, param):
    model = untouched(pixel_chain_net())
    v = maximize(model, objectives.channel("features.4", 2), **{**FAST, "param": param})
    assert 0 < float(v.start) and float(v.final) > 20 * float(v.start)
    # the reported value is the channel's mean on the returned image
    assert torch.allclose(_channel_means(model, v.images)[0, 2], v.final[0], rtol=1e-4)
    assert float(v.images.min()) >= 0 and float(v.images.max()) <= 1
    assert v.history.shape == (60, 1) and float(v.history[-10:].mean()) > float(v.history[:10].mean())


def test_all_regularisers_together_still_climb(untouched):
    model = untouched(pixel_chain_net())
    for param in ("pixel", "fourier"):
        v = maximize(
            model,
            objectives.channel("features.4", 2),
            **{**FAST, "param": param},
            jitter=2,
            scale=0.1,
            rotate=10,
            blur_every=4,
            blur_sigma=0.5,
            l2_decay=0.01,
        )
        assert float(v.final) > 20 * float(v.start), param
        assert v.settings["scale"] == (0.9, 1.1) and v.settings["rotate"] == (-10.0, 10.0)


def test_tv_regularisation_lowers_the_images_tv(untouched):
    model = untouched(pixel_chain_net())
    plain = maximize(model, objectives.channel("features.4", 1), **FAST)
    smooth = maximize(model, objectives.channel("features.4", 1), **FAST, tv=1.0)
    assert float(total_variation(smooth.images)) < 0.5 * float(total_variation(plain.images))
    same = maximize(model, objectives.channel("features.4", 1) - 1.0 * objectives.tv(), **FAST)
    assert torch.equal(same.images, smooth.images)  # tv=λ is the objective J − λ·TV


def test_blur_lowers_tv_and_keeps_the_mean():
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    b = gaussian_blur(x, 1.0)
    assert float(total_variation(b).sum()) < 0.3 * float(total_variation(x).sum())
    assert torch.allclose(b.mean(), x.mean(), atol=0.02)


def test_mse_to_a_target_response(untouched):
    """The lecture's variant: minimise ‖f(x) − target‖² for a response a real image gives."""
    model = untouched(pixel_chain_net())
    x0 = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    with LayerTap(model, ["features.4"], detach=True) as tap, torch.no_grad():
        logits = tap.run(x0)
        r = tap["features.4"]
    v = maximize(model, objectives.mse(logits), **FAST)
    assert float(-v.final) < 0.01 * float(-v.start)
    with torch.no_grad():
        assert torch.allclose(((model(v.images) - logits) ** 2).mean(), -v.final[0], rtol=1e-4)
    w = maximize(model, objectives.mse(r, layer="features.4"), **FAST)
    assert float(-w.final) < 0.1 * float(-w.start) and w.settings["stopped_after"] == "net.features.4"


def test_several_channels_in_one_batch(untouched):
    model = untouched(pixel_chain_net())
    v = maximize(model, objectives.channel("features.4", [2, 4]), **FAST)
    assert v.images.shape[0] == 2 and v.settings["batch"] == 2
    m = _channel_means(model, v.images)[:, [2, 4]]
    assert float(m[0, 0]) > 2 * float(m[1, 0]) and float(m[1, 1]) > 2 * float(m[0, 1])  # each image: its own channel
    cls = maximize(model, objectives.class_score([0, 2]), **FAST)
    assert bool((cls.final > cls.start + 5).all())


def test_seed_reproduces_and_changes(untouched):
    model = untouched(pixel_chain_net())
    kw = dict(FAST, steps=15, jitter=1, rotate=5, param="fourier")
    a = maximize(model, objectives.channel("features.4", 2), seed=3, **kw)
    b = maximize(model, objectives.channel("features.4", 2), seed=3, **kw)
    c = maximize(model, objectives.channel("features.4", 2), seed=4, **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.history, b.history)
    assert not torch.equal(a.images, c.images)


def test_objectives_add_and_scale():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 1, 8, 8, generator=g)
    ctx = _Ctx(img, {"l": torch.rand(3, 4, 5, 5, generator=g)}, torch.rand(3, 6, generator=g))
    ch, tv, cl = objectives.channel("l", 1), objectives.tv(), objectives.class_score(4)
    J = 2 * ch - 0.5 * tv + cl / 4 - 1
    want = 2 * ctx.acts["l"][:, 1].mean((1, 2)) - 0.5 * total_variation(img) + ctx.logits[:, 4] / 4 - 1
    assert torch.allclose(J(ctx), want)
    assert J.layers == ("l",) and J.needs_logits
    assert torch.allclose(sum([ch, ch, -ch])(ctx), ch(ctx))
    n = objectives.neuron("l", [0, 3], 1, 2)
    assert torch.equal(n(ctx), ctx.acts["l"][[0, 1], [0, 3], 1, 2])
    assert torch.equal(objectives.neuron("l", 2)(ctx), ctx.acts["l"][:, 2, 2, 2])  # centre by default
    with pytest.raises(ValueError, match="2 and 3"):
        objectives.channel("l", [0, 1]) + objectives.channel("l", [0, 1, 2])
    assert isinstance(J, Objective) and "TV" in J.name


class _RaisesAfterFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = ChainNet().features
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        self.features(x)
        raise RuntimeError("the forward went past the target layer")


def test_forward_stops_at_the_target_layer_and_errors_leave_no_trace(untouched):
    model = untouched(PixelModel(_RaisesAfterFeatures(), ModelSpec("t", (16, 16), 1, (0.5,), (0.25,), ("a", "b", "c"))))
    v = maximize(model, objectives.channel("features.4", 2), steps=5, param="pixel")
    assert v.settings["stopped_after"] == "net.features.4"
    with pytest.raises(RuntimeError, match="past the target"):
        maximize(model, objectives.class_score(1), steps=5)
    with pytest.raises(ValueError, match="out of range"):
        maximize(model, objectives.channel("features.4", 60), steps=5)
    with pytest.raises(ValueError, match="not in the model"):
        maximize(model, objectives.channel("features.44", 0), steps=5)
    with pytest.raises(ValueError, match="param"):
        maximize(model, objectives.channel("features.4", 0), param="wavelet")


def test_pixel_init_starts_from_the_image(untouched):
    model = untouched(pixel_chain_net())
    x0 = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(9)) * 0.8 + 0.1
    v = maximize(model, objectives.channel("features.4", 2), steps=0, param="pixel", init=x0)
    assert torch.allclose(v.images, x0, atol=1e-5) and torch.equal(v.start, v.final)
    with pytest.raises(ValueError, match="init has shape"):
        maximize(model, objectives.channel("features.4", 2), steps=1, param="pixel", init=torch.rand(3, 8, 8))


def _lucid_redirected(x, g, lo, hi):
    """Lucid's redirected_relu(6)_grad, written out in float64: per image, the clamp's own gradient where it is not
    all zero, else the incoming gradient except where it would push x below lo or above hi."""
    inside = (x > lo) & (x < hi)
    own = torch.where(inside, g, torch.zeros_like(g))
    blocked = ((x <= lo) & (g < 0)) | ((x >= hi) & (g > 0))
    red = torch.where(blocked, torch.zeros_like(g), g)
    alive = own.flatten(1).abs().amax(1) > 0
    return torch.where(alive.view(-1, 1, 1, 1), own, red)


@pytest.mark.parametrize(
    "kind", ["relu", "relu_inplace", "relu6", "relu6_inplace", "module_relu6_inplace", "torch_relu"]
)
def test_redirected_relus_give_lucids_gradient_and_the_same_forward(kind):
    import torch.nn.functional as F

    from cnnlens.inside.maximize import redirected_relus

    g0 = torch.Generator().manual_seed(4)
    x0 = torch.randn(4, 3, 5, 5, generator=g0, dtype=torch.float64) * 4
    x0[1] = -x0[1].abs() - 0.1  # image 1: every unit inactive (the ReLU's own gradient is all zero)
    x0[2, :, :2] = 7.0  # image 2: some units past 6 (ReLU6 saturates)
    w = torch.randn(4, 3, 5, 5, generator=g0, dtype=torch.float64)  # signed incoming gradient
    hi = 6.0 if "relu6" in kind else float("inf")
    fn = {
        "relu": lambda h: F.relu(h),
        "relu_inplace": lambda h: F.relu(h, inplace=True),
        "relu6": lambda h: F.relu6(h),
        "relu6_inplace": lambda h: F.hardtanh(h, 0.0, 6.0, True),
        "module_relu6_inplace": nn.ReLU6(inplace=True),
        "torch_relu": torch.relu,
    }[kind]
    outs = []
    for redirect in (False, True):
        x = x0.clone().requires_grad_(True)
        with redirected_relus() if redirect else torch.enable_grad():
            h = x * 1.0  # not a leaf, so an in-place call may overwrite it
            y = fn(h)
        (gx,) = torch.autograd.grad((y * w).sum(), x)
        outs.append((y.detach(), gx))
    (y_plain, g_plain), (y_red, g_red) = outs
    assert torch.equal(y_red, y_plain)  # the forward is untouched
    assert torch.equal(g_red, _lucid_redirected(x0, w, 0.0, hi))
    # images whose own gradient is not all zero get exactly the plain gradient; image 1 gets a redirected one
    alive = [0, 2, 3]
    assert torch.equal(g_red[alive], g_plain[alive])
    assert float(g_plain[1].abs().sum()) == 0 and float(g_red[1].abs().sum()) > 0


def test_redirected_relu_wakes_a_channel_behind_in_place_relus(untouched):
    # torchvision's ResNets use ReLU(inplace=True): a hook after it sees no pre-activation any more
    net = pixel_chain_net()
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    model = untouched(net)
    off = maximize(model, objectives.channel("features.4", 3), steps=24, lr=0.1, redirect_relu=False)
    on = maximize(model, objectives.channel("features.4", 3), steps=24, lr=0.1, redirect_relu=True)
    assert float(off.start[0]) == pytest.approx(0.0, abs=1e-6) and float(off.final[0]) == 0.0
    assert float(on.final[0]) > 0.1
