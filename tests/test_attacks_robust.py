"""Robust training: the gradient penalty against finite differences, adversarial examples by hand,
losses that go down, and the shipped robust digits models against the plain one."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from cnnlens.attacks import pgd
from cnnlens.attacks.robust import (
    AdversarialLoss,
    adversarial_loss,
    gradient_penalty_loss,
    input_gradient_penalty,
    load_digits,
    robust_loss,
    robust_weights_path,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class SmoothNet(nn.Module):
    """conv → tanh → linear, in float64: smooth, so finite differences of gradients are accurate."""

    def __init__(self, seed=0, k=3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(1, 2, 2).double()
        self.fc = nn.Linear(2 * 2 * 2, k).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _ce(net, x, y):
    return nn.functional.cross_entropy(net(x), y, reduction="none")


def test_penalty_equals_finite_differences(untouched):
    net = untouched(SmoothNet())
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    ce, pen = input_gradient_penalty(net, x, y)
    h = 1e-6
    fd = torch.zeros(4, 9, dtype=torch.float64)
    with torch.no_grad():
        for j in range(9):
            e = torch.zeros(1, 9, dtype=torch.float64)
            e[0, j] = h
            e = e.view(1, 1, 3, 3)
            fd[:, j] = (_ce(net, x + e, y) - _ce(net, x - e, y)) / (2 * h)
        assert torch.allclose(ce, _ce(net, x, y))
    assert torch.allclose(pen, fd.pow(2).sum(1), rtol=1e-7, atol=1e-12)
    assert (pen > 0).all()


def test_double_backprop_gradient_of_the_penalty_equals_finite_differences(untouched):
    net = untouched(SmoothNet(seed=2))
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 1, 3, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    loss_fn = gradient_penalty_loss(lam=0.7)
    terms = loss_fn.terms(net, x, y)
    assert torch.allclose(terms["loss"], terms["ce"] + 0.7 * terms["penalty"])
    w = net.conv.weight
    (dw,) = torch.autograd.grad(terms["loss"], [w])  # through ∂CE/∂x: needs create_graph=True
    h = 1e-6
    saved = w.detach().clone()
    for idx in [(0, 0, 0, 0), (1, 0, 1, 0), (0, 0, 1, 1)]:
        with torch.no_grad():
            w[idx] += h
        up = float(loss_fn(net, x, y).detach())
        with torch.no_grad():
            w.copy_(saved)
            w[idx] -= h
        down = float(loss_fn(net, x, y).detach())
        with torch.no_grad():
            w.copy_(saved)
        assert float(dw[idx]) == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)
    # without the penalty's own gradient, the result would differ: the double backprop matters
    (dw_ce,) = torch.autograd.grad(gradient_penalty_loss(0.0)(net, x, y), [w])
    assert not torch.allclose(dw, dw_ce)


def _train(net, loss_fn, x, y, steps=40, lr=0.05, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        loss = loss_fn(net, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


def _toy_data(n=64, seed=0, noise=0.0):
    """Two classes: the brighter half of the image is the left (0) or the right (1); ``noise``: share of flipped
    labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 6, generator=g) * 0.5
    y = torch.arange(n) % 2
    x[y == 0, :, :, :3] += 0.4
    x[y == 1, :, :, 3:] += 0.4
    if noise:
        flip = torch.arange(n) % round(1 / noise) == 0
        y = torch.where(flip, 1 - y, y)
    return x.clamp(0, 1), y


def _toy_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))


def test_gradient_penalty_training_lowers_loss_and_penalty():
    x, y = _toy_data(noise=0.2)  # label noise: CE cannot reach 0, so the plain model keeps steep gradients
    net = _toy_net()
    loss_fn = gradient_penalty_loss(lam=5.0)
    before = {k: float(v.detach()) for k, v in loss_fn.terms(net, x, y).items()}
    _train(net, loss_fn, x, y)
    after = {k: float(v.detach()) for k, v in loss_fn.terms(net, x, y).items()}
    assert after["loss"] < 0.9 * before["loss"]
    assert after["ce"] < before["ce"] and after["penalty"] < before["penalty"]
    plain = _train(_toy_net(), gradient_penalty_loss(0.0), x, y)
    _, pen_plain = input_gradient_penalty(plain, x, y)
    assert after["penalty"] < 0.01 * float(pen_plain.mean())  # the penalty made the function flatter


def test_adversarial_training_lowers_the_adversarial_loss_and_raises_robust_accuracy():
    x, y = _toy_data()
    loss_fn = adversarial_loss(eps=0.15, method="pgd", steps=3)
    net = _toy_net()
    torch.manual_seed(5)
    before = float(loss_fn.terms(net, x, y)["adversarial"].detach())
    _train(net, loss_fn, x, y, steps=60)
    torch.manual_seed(5)
    after = float(loss_fn.terms(net, x, y)["adversarial"].detach())
    assert after < 0.5 * before
    plain = _train(_toy_net(), lambda m, a, b: nn.functional.cross_entropy(m(a), b), x, y, steps=60)
    robust_acc = (pgd(net, x, y, eps=0.15, steps=10, target=None).pred_after == y).float().mean()
    plain_acc = (pgd(plain, x, y, eps=0.15, steps=10, target=None).pred_after == y).float().mean()
    assert robust_acc > plain_acc


def test_adversarial_examples_are_the_hand_computation_and_leave_parameters_alone():
    # binary linear model: ∇ₓ CE(y) ∝ w_other − w_y everywhere, so FGSM-with-random-start is
    # clip(Π_ε(x + δ₀ + 1.25ε·sign(w_other − w_y))) with δ₀ ~ U(−ε, ε) drawn as documented
    g = torch.Generator().manual_seed(4)
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 16, generator=g))
    net = nn.Sequential(nn.Flatten(), lin).train()
    x = torch.rand(8, 1, 4, 4, generator=g)
    y = torch.arange(8) % 2
    eps = 0.1
    torch.manual_seed(0)
    got = adversarial_loss(eps=eps).examples(net, x, y)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    start = (x + (2 * torch.rand(x.shape, generator=gen) - 1) * eps).clamp(0, 1)
    w = lin.weight.detach()
    step = torch.sign(w[1 - y] - w[y]).view_as(x)
    want = torch.maximum(torch.minimum(start + 1.25 * eps * step, x + eps), x - eps).clamp(0, 1)
    assert torch.allclose(got, want, atol=1e-7)
    assert float((got - x).abs().max()) <= eps + 1e-6
    # training mode kept, no parameter gradient created by the attack
    assert net.training and all(p.grad is None for p in net.parameters())
    # the same global seed gives the same examples (a seeded training run is reproducible)
    torch.manual_seed(0)
    assert torch.equal(adversarial_loss(eps=eps).examples(net, x, y), got)
    pgd_ex = adversarial_loss(eps=eps, method="pgd", steps=4).examples(net, x, y)
    assert float((pgd_ex - x).abs().max()) <= eps + 1e-6 and 0 <= float(pgd_ex.min()) and float(pgd_ex.max()) <= 1


def test_loss_settings_errors():
    assert robust_loss("none") is None
    assert isinstance(robust_loss("adversarial"), AdversarialLoss)
    assert robust_loss("gradient-penalty").lam == 1.0
    with pytest.raises(ValueError, match="none, adversarial, gradient-penalty"):
        robust_loss("magic")
    with pytest.raises(ValueError, match="mix"):
        adversarial_loss(mix=2)
    with pytest.raises(ValueError, match="lam"):
        gradient_penalty_loss(-1)


def test_shipped_robust_models_are_more_robust_than_the_plain_one(untouched):
    from safetensors import safe_open

    from cnnlens.models.digits import digits_split

    ds = digits_split("test")
    x, y = ds.x[:120], ds.y[:120]
    acc = {}
    for kind in ("none", "adversarial", "gradient-penalty"):
        m = untouched(load_digits(kind))
        clean = (m(x).argmax(1) == y).float().mean().item()
        r = pgd(m, x, y, eps=16 / 255, steps=10, target=None)
        acc[kind] = (clean, (r.pred_after == y).float().mean().item())
        assert clean >= 0.97
        if kind != "none":
            with safe_open(str(robust_weights_path(kind)), "pt") as f:
                meta = f.metadata()
            assert f"--robust {kind}" in meta["command"] and "--seed 0 --epochs 20" in meta["command"]
    # measured on the full split: PGD-10 at 16/255: plain 0.20, adversarial 0.87, gradient penalty 0.57
    assert acc["adversarial"][1] > acc["none"][1] + 0.4
    assert acc["gradient-penalty"][1] > acc["none"][1] + 0.2


def test_cli_train_digits_robust(tmp_path, untouched):
    from safetensors import safe_open
    from typer.testing import CliRunner

    from cnnlens.cli import app
    from cnnlens.models import load_model
    from cnnlens.train import accuracy

    out = tmp_path / "adv.safetensors"
    r = CliRunner().invoke(app, ["train", "digits", "--epochs", "1", "--robust", "gradient-penalty", "--out", str(out)])
    assert r.exit_code == 0, r.output
    printed = float(re.search(r"held-out accuracy ([\d.]+)%", r.output).group(1)) / 100
    m = untouched(load_model("digits-cnn", weights=out))
    assert abs(accuracy(m) - printed) < 1e-4
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["command"].endswith("--robust gradient-penalty") and "lambda" in meta["robust"]
    bad = CliRunner().invoke(app, ["train", "digits", "--robust", "magic", "--out", str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 2 and "--robust" in bad.output and not (tmp_path / "x.safetensors").exists()
