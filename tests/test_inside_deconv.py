"""Deconvnet: the switch-based reconstruction by hand, the gradient identity without ReLUs, clear errors."""

from __future__ import annotations

import pytest
import torch
from inside_nets import Block, seeded_
from torch import nn

from cnnlens.inside import deconvnet
from cnnlens.models.spec import ModelSpec, PixelModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_block(seed=0):
    return seeded_(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)), seed).eval()


def _hand(net, x, mode):
    """Loops: conv, ReLU, 2×2 max-pool with switches; then unpool, ReLU, transposed conv."""
    W, b = net[0].weight.detach(), net[0].bias.detach()
    H = x.shape[-1]
    xp = torch.zeros(H + 2, H + 2)
    xp[1:-1, 1:-1] = x[0, 0]
    conv = torch.zeros(2, H, H)
    for o in range(2):
        for i in range(H):
            for j in range(H):
                conv[o, i, j] = b[o] + sum(W[o, 0, u, v] * xp[i + u, j + v] for u in range(3) for v in range(3))
    relu = conv.clamp_min(0)
    pooled = torch.zeros(2, H // 2, H // 2)
    switch = {}
    for o in range(2):
        for i in range(H // 2):
            for j in range(H // 2):
                win = [(relu[o, 2 * i + u, 2 * j + v].item(), 2 * i + u, 2 * j + v) for u in range(2) for v in range(2)]
                best = max(win, key=lambda t: t[0])  # first maximum in row-major order
                best = next(t for t in win if t[0] == best[0])
                pooled[o, i, j] = best[0]
                switch[o, i, j] = best[1:]
    # the layer's activations with everything but channel 0 (and, in "max" mode, its strongest unit) set to zero
    keep = torch.zeros_like(pooled)
    if mode == "max":
        flat = int(pooled[0].flatten().argmax())
        keep[0, flat // (H // 2), flat % (H // 2)] = pooled[0].flatten()[flat]
    else:
        keep[0] = pooled[0]
    unpooled = torch.zeros(2, H, H)
    for (o, i, j), (si, sj) in switch.items():
        unpooled[o, si, sj] += keep[o, i, j]
    r = unpooled.clamp_min(0)
    out = torch.zeros(H + 2, H + 2)
    for o in range(2):
        for i in range(H):
            for j in range(H):
                for u in range(3):
                    for v in range(3):
                        out[i + u, j + v] += W[o, 0, u, v] * r[o, i, j]
    return out[1:-1, 1:-1]


@pytest.mark.parametrize("mode", ["max", "all"])
def test_one_block_equals_the_hand_computation(untouched, mode):
    net = untouched(_one_block())
    x = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    p = deconvnet(net, x, "2", 0, position=mode)
    want = _hand(net, x, mode)
    assert torch.allclose(p.images[0, 0], want, atol=1e-5)
    assert float(want.abs().sum()) > 0
    assert p.chain == ("0", "1", "2")
    if mode == "max":
        assert p.positions.shape == (1, 2)


class _NoRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 5, 3, stride=2, padding=1),
            nn.MaxPool2d(3, stride=1, padding=1),
        )

    def forward(self, x):
        return self.features(x).mean((2, 3))


def test_without_relus_the_projection_is_activation_times_gradient(untouched):
    """With no ReLU on the path, unpooling with switches and transposed convolutions are exactly the
    backward pass, so the projection of unit a equals a · ∂a/∂x (input normalisation included)."""
    net = seeded_(_NoRelu(), 2)
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-0.5, 0.5)
        net.features[1].running_var.uniform_(0.5, 2.0)
    model = untouched(PixelModel(net, ModelSpec("n", (8, 8), 3, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))).eval())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    p = deconvnet(model, x, "features.4", 3, position=(1, 0))
    xg = x.clone().requires_grad_(True)
    a = model.net.features(model.normalize(xg))[:, 3, 1, 0]
    (g,) = torch.autograd.grad(a.sum(), xg)
    assert torch.allclose(p.images, a.detach().view(-1, 1, 1, 1) * g, atol=1e-5)
    assert torch.allclose(p.activations, a.detach())
    # every unit of the map at once: Σ_ij a_ij ∂a_ij/∂x
    q = deconvnet(model, x, "features.4", 3, position="all")
    a = model.net.features(model.normalize(xg))[:, 3]
    (g,) = torch.autograd.grad((a.detach() * a).sum(), xg)
    assert torch.allclose(q.images, g, atol=1e-5)
    assert q.chain[0] == "normalize"


def test_digits_projection(digits_model):
    import cnnlens

    ds = cnnlens.as_dataset("digits", digits_model)
    x = torch.stack([ds[i][0] for i in range(4)])
    p = deconvnet(digits_model, x, "features.7", 5)
    assert p.images.shape == (4, 1, 32, 32)
    assert p.chain == ("normalize",) + tuple(f"net.features.{i}" for i in range(8))
    n = p.normalized()
    assert float(n.min()) >= 0 and float(n.max()) <= 1
    # the projection lives inside the unit's 18-pixel receptive field
    from cnnlens.inside import receptive_field

    rf = receptive_field(digits_model, "features.7", probe=False)
    for k in range(4):
        (t, l, b, r), _ = rf.clipped_box(*p.positions[k].tolist())
        outside = p.images[k, 0].clone()
        outside[t:b, l:r] = 0
        assert float(outside.abs().max()) == 0 and float(p.images[k].abs().max()) > 0


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = Block(4, 4, 1)

    def forward(self, x):
        return self.block(self.stem(x)).mean((2, 3))


class _Silu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.conv(x)).mean((2, 3))


class _SharedRelu(nn.Module):
    """One ReLU instance used twice."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.relu, self.out = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Identity()

    def forward(self, x):
        return self.out(self.relu(self.c2(self.relu(self.c1(x))))).mean((2, 3))


def test_clear_errors_name_the_module(untouched):
    x = torch.rand(1, 1, 8, 8)
    res = untouched(_Residual().eval())
    assert deconvnet(res, x, "stem", 0).images.shape == x.shape  # below the residual block it works
    # b takes torch.relu(a(x)) (a functional ReLU: walked through); the shortcut takes the block's input
    with pytest.raises(ValueError, match=r"'block\.shortcut' \(Conv2d\).*residual"):
        deconvnet(res, x, "block", 0)
    silu = untouched(_Silu().eval())
    with pytest.raises(ValueError, match=r"applies silu ×1 \(no un-ReLU rule"):
        deconvnet(silu, x, "act", 0)
    shared = untouched(_SharedRelu().eval())
    with pytest.raises(ValueError, match="deconvnet cannot invert this model.*ran twice.*use guided backprop"):
        deconvnet(shared, x, "out", 0)
    net = untouched(_one_block())
    with pytest.raises(ValueError, match="out of range"):
        deconvnet(net, x, "2", 5)
    with pytest.raises(ValueError, match="outside"):
        deconvnet(net, x, "2", 0, position=(9, 9))
