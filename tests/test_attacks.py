"""Attacks: FGSM, PGD and the minimal ε, checked against hand computations on tiny nets."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyGapNet
from torch import nn

from cnnlens.attacks import fgsm, minimal_eps, pgd

pytestmark = pytest.mark.usefixtures("one_thread")


def linear_net(w: torch.Tensor, b: torch.Tensor, shape=(1, 4, 4)) -> nn.Module:
    """f(x) = W·flatten(x) + b."""
    lin = nn.Linear(w.shape[1], w.shape[0]).to(w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), lin)


class TinyBNNet(nn.Module):
    """conv → BatchNorm → ReLU → pool → linear: BatchNorm buffers would move in train mode."""

    def __init__(self, k: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4, k)
        with torch.no_grad():
            for p in [self.conv.weight, self.conv.bias, self.fc.weight, self.fc.bias]:
                p.copy_(torch.randn(p.shape, generator=g))
            self.bn.running_mean.copy_(torch.randn(4, generator=g) * 0.1)
            self.bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


def rand_images(n=16, shape=(3, 8, 8), seed=1, lo=0.0, hi=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand((n, *shape), generator=g, dtype=dtype)


# ----------------------------------------------------------------------------- ε = 0, bounds, projection
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_eps_zero_returns_input_bit_for_bit(untouched, norm):
    net = untouched(TinyGapNet())
    x = rand_images()
    for r in [
        fgsm(net, x, eps=0.0, norm=norm),
        fgsm(net, x, eps=0.0, target="second", norm=norm),
        pgd(net, x, eps=0.0, norm=norm),
        pgd(net, x, eps=0, random_start=True, target=None, norm=norm),
    ]:
        assert torch.equal(r.x_adv, x)
        assert torch.equal(r.perturbation, torch.zeros_like(x))
        assert torch.equal(r.pred_after, r.pred_before)
    # per-sample ε: the ε = 0 samples stay exactly, the others move
    e = torch.tensor([0.0, 0.1] * 8)
    r = pgd(net, x, eps=e, target=None, norm=norm)
    assert torch.equal(r.x_adv[e == 0], x[e == 0])
    assert (r.x_adv[e > 0] != x[e > 0]).any()


@pytest.mark.parametrize("method", ["fgsm", "pgd", "pgd-rs"])
def test_linf_budget_and_pixel_range(untouched, method):
    net = untouched(TinyGapNet())
    # images with many pixels at 0 and 1, so clipping is exercised
    x = rand_images(lo=-0.5, hi=1.5).clamp(0, 1)
    for eps in [1 / 255, 0.03, 0.3]:
        if method == "fgsm":
            r = fgsm(net, x, eps=eps)
        else:
            r = pgd(
                net,
                x,
                eps=eps,
                steps=7,
                step_size=eps / 2,
                random_start=method == "pgd-rs",
                target=None,
                early_stop=False,
            )
        assert float(r.linf().max()) <= eps + 1e-6
        assert float(r.x_adv.min()) >= 0 and float(r.x_adv.max()) <= 1
        assert torch.equal(r.perturbation, r.x_adv - x)
        assert float(r.linf().max()) > 0.5 * eps  # it did move


def test_l2_projection_norm_at_most_eps(untouched):
    net = untouched(TinyGapNet())
    x = rand_images(lo=-0.5, hi=1.5).clamp(0, 1)
    for eps in [0.05, 0.5, 2.0]:
        for rs in (False, True):
            r = pgd(net, x, eps=eps, steps=8, step_size=eps, norm="2", random_start=rs, target=None, early_stop=False)
            assert float(r.l2().max()) <= eps * (1 + 1e-5)
            assert float(r.x_adv.min()) >= 0 and float(r.x_adv.max()) <= 1
        # an unclipped image in the middle of the cube: large steps end on the sphere
        xm = torch.full_like(x, 0.5)
        r = pgd(net, xm, eps=eps * 0.1, steps=3, step_size=eps, norm="2", target=None, early_stop=False)
        assert torch.allclose(r.l2(), torch.full((len(x),), eps * 0.1), rtol=1e-4)


# ----------------------------------------------------------------------------- FGSM by hand
def test_fgsm_on_binary_linear_model_is_the_hand_computation(untouched):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2, 16, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64)
    net = untouched(linear_net(w, b))
    x = rand_images(12, (1, 4, 4), seed=4, dtype=torch.float64)
    y = torch.tensor([0, 1] * 6)
    eps = 0.07
    r = fgsm(net, x, y, eps=eps)
    other = 1 - y
    # raise CE(y): ∇ = p_other·(w_other − w_y), so the step is ε·sign(w_other − w_y)
    expected = (x + eps * torch.sign(w[other] - w[y]).view_as(x)).clamp(0, 1)
    assert torch.equal(r.x_adv, expected)
    # targeted at the other class is the same step
    rt = fgsm(net, x, eps=eps, target=other.tolist())
    assert torch.equal(rt.x_adv, expected)


def test_fgsm_on_multiclass_linear_model_is_the_hand_computation(untouched):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(5, 16, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    net = untouched(linear_net(w, b))
    x = rand_images(10, (1, 4, 4), seed=6, dtype=torch.float64)
    xf = x.flatten(1)
    p = torch.softmax(xf @ w.T + b, 1)
    eps = 0.05
    # untargeted, no labels: ∇ₓ CE(pred) = Wᵀ(p − e_pred)
    pred = p.argmax(1)
    grad = (p - nn.functional.one_hot(pred, 5)) @ w
    r = fgsm(net, x, eps=eps)
    assert torch.equal(r.x_adv, (x + eps * grad.sign().view_as(x)).clamp(0, 1))
    # targeted toward the second class: −∇ₓ CE(t) = −Wᵀ(p − e_t)
    t = p.topk(2, 1).indices[:, 1]
    grad_t = -(p - nn.functional.one_hot(t, 5)) @ w
    rt = fgsm(net, x, eps=eps, target="second")
    assert torch.equal(rt.classes, t)
    assert torch.equal(rt.x_adv, (x + eps * grad_t.sign().view_as(x)).clamp(0, 1))
    # L2 fast gradient method: x + ε·∇/||∇||
    r2 = fgsm(net, torch.full_like(x, 0.5), eps=0.1, norm="2")
    xm = torch.full_like(xf, 0.5)
    pm = torch.softmax(xm @ w.T + b, 1)
    gm = (pm - nn.functional.one_hot(pm.argmax(1), 5)) @ w
    assert torch.allclose(r2.x_adv.flatten(1), xm + 0.1 * gm / gm.norm(dim=1, keepdim=True), atol=1e-12)


def test_fgsm_success_never_falls_as_eps_grows_on_a_linear_model(untouched):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(2, 16, generator=g)
    net = untouched(linear_net(w, torch.zeros(2)))
    x = rand_images(64, (1, 4, 4), seed=8)
    prev = torch.zeros(64, dtype=torch.bool)
    rates = []
    for eps in torch.linspace(0, 0.5, 26).tolist():
        r = fgsm(net, x, eps=eps)
        assert (r.success | ~prev).all(), f"a sample flipped back at eps={eps}"
        prev = r.success
        rates.append(r.success_rate)
    assert rates[0] == 0 and rates[-1] == 1.0


# ----------------------------------------------------------------------------- PGD
@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("target", [None, "second", 2])
def test_pgd_one_step_of_size_eps_equals_fgsm(untouched, norm, target):
    net = untouched(TinyGapNet())
    x = rand_images(lo=-0.3, hi=1.3).clamp(0, 1)
    eps = 0.04
    a = fgsm(net, x, eps=eps, target=target, norm=norm)
    b = pgd(net, x, eps=eps, steps=1, step_size=eps, target=target, norm=norm, early_stop=False)
    if norm == "inf":
        assert torch.equal(a.x_adv, b.x_adv)
    else:
        assert torch.allclose(a.x_adv, b.x_adv, atol=1e-6)
    assert torch.equal(a.classes, b.classes)
    # with early stop, the samples not yet at their goal take the same single step
    c = pgd(net, x, eps=eps, steps=1, step_size=eps, target=target, norm=norm)
    moving = c.steps == 1
    assert moving.sum() >= 8
    assert torch.allclose(c.x_adv[moving], a.x_adv[moving], atol=1e-6)
    assert torch.equal(c.x_adv[~moving], x[~moving])


def test_pgd_succeeds_at_least_as_often_as_fgsm(untouched):
    net = untouched(TinyGapNet(seed=5))
    x = rand_images(64, seed=9)
    for eps in [0.03, 0.1, 0.3]:
        f = fgsm(net, x, eps=eps, target=None)
        # first step = the FGSM step; early stop keeps a success, so success ⊇ FGSM's per sample
        p1 = pgd(net, x, eps=eps, steps=10, step_size=eps, target=None)
        assert (p1.success | ~f.success).all()
        p = pgd(net, x, eps=eps, steps=20, target=None)
        assert int(p.success.sum()) >= int(f.success.sum())
    assert int(p.success.sum()) > int(f.success.sum())  # strictly stronger somewhere


def test_targeted_pgd_reaches_the_target(untouched):
    net = untouched(TinyGapNet(k=4, seed=1))
    x = rand_images(12, seed=10)
    for target in [3, "second", [0, 2, 3] * 4]:
        r = pgd(net, x, eps=0.5, steps=60, step_size=0.02, target=target)
        assert r.targeted
        assert r.success.all()
        assert torch.equal(r.pred_after, r.classes)
        # early stop: each sample stopped at its first success, so one step less would not have reached it
        assert (r.steps <= 60).all()
    second = r.logits_before.topk(2, 1).indices[:, 1]
    r2 = pgd(net, x, eps=0.5, steps=60, step_size=0.02)  # default target: the second most likely class
    assert torch.equal(r2.classes, second) and torch.equal(r2.pred_after, second)


def test_pgd_early_stop_uses_the_fewest_steps(untouched):
    net = untouched(TinyGapNet(k=4, seed=1))
    x = rand_images(12, seed=10)
    r = pgd(net, x, eps=0.5, steps=60, step_size=0.02, target="second")
    for k in [1, 3]:  # a few samples: rerun with one step fewer than used → not yet there
        i = int(torch.nonzero(r.steps > 1)[k])
        s = int(r.steps[i])
        short = pgd(net, x[i : i + 1], eps=0.5, steps=s - 1, step_size=0.02, target=int(r.classes[i]))
        assert not bool(short.success[0])
        exact = pgd(net, x[i : i + 1], eps=0.5, steps=s, step_size=0.02, target=int(r.classes[i]))
        assert bool(exact.success[0]) and torch.allclose(exact.x_adv, r.x_adv[i : i + 1])


def test_random_start_is_seeded(untouched):
    net = untouched(TinyGapNet())
    x = rand_images(8)
    a = pgd(net, x, eps=0.05, random_start=True, seed=1, target=None, early_stop=False, steps=2)
    b = pgd(net, x, eps=0.05, random_start=True, seed=1, target=None, early_stop=False, steps=2)
    c = pgd(net, x, eps=0.05, random_start=True, seed=2, target=None, early_stop=False, steps=2)
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)


# ----------------------------------------------------------------------------- the model is untouched
def test_attacks_leave_a_batchnorm_model_in_train_mode_untouched(untouched):
    net = TinyBNNet()
    net.train()  # the user left it in train mode, with gradients from a previous backward
    net(torch.rand(4, 1, 4, 4)).sum().backward()
    net.fc.weight.requires_grad_(False)
    untouched(net)
    x = rand_images(6, (1, 4, 4), seed=11)
    eval_logits = None
    r1 = fgsm(net, x, eps=0.1)
    r2 = pgd(net, x, eps=0.1, steps=5, random_start=True)
    r3 = minimal_eps(net, x, steps=3, max_iter=3)
    assert net.training and net.bn.training
    # the attacks saw the model in eval mode: their clean logits are the eval-mode logits
    net.eval()
    with torch.no_grad():
        eval_logits = net(x)
    net.train()
    for r in (r1, r2, r3):
        assert torch.allclose(r.logits_before, eval_logits, atol=1e-6)


def test_errors_name_cause_and_fix_and_leave_the_model_untouched(untouched):
    net = untouched(TinyGapNet())
    x = rand_images(4)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        fgsm(net, x * 2 - 1, eps=0.1)
    for attack in (fgsm, pgd, minimal_eps):
        with pytest.raises(ValueError, match="no image"):
            attack(net, x[:0], **({} if attack is minimal_eps else {"eps": 0.1}))
    with pytest.raises(ValueError, match="norm"):
        pgd(net, x, eps=0.1, norm="1")
    with pytest.raises(ValueError, match="≥ 0"):
        pgd(net, x, eps=-0.1)
    with pytest.raises(ValueError, match="class target"):
        pgd(net, x, eps=0.1, target=cnnlens_channel())
    with pytest.raises(ValueError, match="out of range"):
        pgd(net, x, eps=0.1, target=7)
    with pytest.raises(ValueError, match="labels"):
        fgsm(net, x, torch.tensor([0, 1]), eps=0.1)
    with pytest.raises(ValueError, match="steps"):
        pgd(net, x, eps=0.1, steps=0)
    # a float64 image attacks a float32 model: the model gets its own dtype, the image keeps its own
    r64, r32 = fgsm(net, x.double(), eps=0.1), fgsm(net, x, eps=0.1)
    assert r64.x_adv.dtype == torch.float64 and torch.allclose(r64.x_adv.float(), r32.x_adv, atol=1e-6)
    with pytest.raises(TypeError, match="nn.Module"):
        fgsm(lambda v: v, x, eps=0.1)

    class TupleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = TinyGapNet()

        def forward(self, x):
            return self.net(x), None

    tn = untouched(TupleNet())
    with pytest.raises(TypeError, match="logits"):
        pgd(tn, x, eps=0.1)


def cnnlens_channel():
    from cnnlens import Target

    return Target.channel("features.0", 1)


# ----------------------------------------------------------------------------- minimal ε
@pytest.mark.parametrize("start", ["linear", "number"])
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_minimal_eps_matches_the_analytic_value_on_a_linear_model(untouched, norm, start):
    # binary linear model, images in the middle of the cube so clipping never binds:
    # the smallest ε that flips x is margin / ||w_y − w_t||_q (q = 1 for L∞, 2 for L2)
    g = torch.Generator().manual_seed(12)
    w = torch.randn(2, 16, generator=g, dtype=torch.float64)
    net = untouched(linear_net(w, torch.zeros(2, dtype=torch.float64)))
    x = rand_images(10, (1, 4, 4), seed=13, lo=0.45, hi=0.55, dtype=torch.float64)
    z = x.flatten(1) @ w.T
    pred = z.argmax(1)
    other = 1 - pred
    margin = (z.gather(1, pred[:, None]) - z.gather(1, other[:, None])).squeeze(1)
    dual = 1 if norm == "inf" else 2
    exact = margin / (w[pred] - w[other]).norm(p=dual, dim=1)
    u = (w[other] - w[pred]) / (w[pred] - w[other]).norm(p=dual, dim=1, keepdim=True)
    largest_move = exact * (1 if norm == "inf" else u.abs().amax(1))
    assert float(largest_move.max()) < 0.45  # the optimal perturbation needs no clipping
    first = "linear" if start == "linear" else (0.01 if norm == "inf" else 0.05)
    r = minimal_eps(net, x, norm=norm, steps=5, rtol=0.01, start=first)
    assert r.success.all() and torch.equal(r.pred_after, other)
    lower = r.extras["eps_lower"]
    assert (lower <= exact + 1e-9).all() and (r.eps >= exact - 1e-9).all()
    assert (r.eps - lower <= 0.01 * r.eps + 1e-12).all()
    if start == "linear":  # the first-order start is exact for a linear model: few PGD runs are needed
        assert torch.allclose(r.extras["eps_linear"], exact)
        assert r.settings["pgd_runs"] <= 10
    # the returned ε works and the lower bound does not, when rerun
    ok = pgd(net, x, eps=r.eps, steps=5, norm=norm)
    bad = pgd(net, x, eps=lower, steps=5, norm=norm)
    assert ok.success.all() and not bad.success.any()


def test_minimal_eps_success_is_monotone_and_unreachable_is_inf(untouched):
    net = untouched(TinyGapNet(seed=4))
    x = rand_images(8, seed=14)
    r = minimal_eps(net, x, steps=10, rtol=0.1)
    found = torch.isfinite(r.eps)
    assert found.any()
    assert torch.equal(r.success, found)
    assert (r.linf()[found] <= r.eps[found] + 1e-6).all()
    # a tiny max_eps: nothing flips, ε is inf and x_adv is x
    r0 = minimal_eps(net, x, steps=2, start=1e-6, max_eps=1e-6)
    assert torch.isinf(r0.eps).all() and not r0.success.any() and torch.equal(r0.x_adv, x)
    # already at the goal (target = predicted class): ε = 0
    rp = minimal_eps(net, x, target="predicted", steps=2)
    assert torch.equal(rp.eps, torch.zeros(8)) and rp.success.all()


def test_efficientnet_goes_to_the_second_class_and_its_batchnorm_is_untouched(effnet):
    """The real model (BatchNorm everywhere): chelsea (tiger cat, 282) → the runner-up, Egyptian cat (285)."""
    import skimage.data

    from cnnlens import load_images

    x = load_images(skimage.data.chelsea(), effnet)
    r = pgd(effnet, x, eps=1 / 255, steps=3)
    assert int(r.pred_before[0]) == 282 and int(r.classes[0]) == 285
    assert bool(r.success[0]) and int(r.pred_after[0]) == 285
    assert float(r.linf()[0]) <= 1 / 255 + 1e-6
    named = dict(effnet.named_modules())
    assert not any(m.training for m in named.values())  # still in eval mode (the fixture checks buffers and grads)


def test_attack_result_figure_shows_the_original_and_the_adversarial_image(untouched):
    import numpy as np

    net = untouched(TinyGapNet().eval())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    r = pgd(net, x, eps=0.1, steps=3, target="second")
    fig = r.figure(x, names=["a", "b"], class_names=["zero", "one", "two"])
    rows = [fig.axes[3 * i : 3 * i + 3] for i in range(2)]
    p0, p1 = r.logits_before.softmax(1), r.logits_after.softmax(1)
    for i, (orig, adv, pert) in enumerate(rows):
        np.testing.assert_allclose(orig.get_images()[0].get_array(), x[i].permute(1, 2, 0).numpy(), atol=1e-6)
        np.testing.assert_allclose(adv.get_images()[0].get_array(), r.x_adv[i].permute(1, 2, 0).numpy(), atol=1e-6)
        c0, c1 = int(r.pred_before[i]), int(r.pred_after[i])
        assert orig.get_title() == f"{'ab'[i]}: {['zero', 'one', 'two'][c0]} ({float(p0[i, c0]):.2f})"
        assert adv.get_title().startswith(f"→ {['zero', 'one', 'two'][c1]} ({float(p1[i, c1]):.2f})")
        assert pert.get_title().startswith("perturbation, ε=25.5/255")
    with pytest.raises(ValueError, match="pass the x you attacked"):
        r.figure(x[:1])


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_the_batch_size_does_not_change_an_attack(untouched, attack):
    """Chunks slice labels, per-sample targets and budgets with the images; PGD's random start is drawn
    once for the whole batch, so 5 images in chunks of 2 are attacked exactly as all at once."""
    net = untouched(TinyGapNet().eval())
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([2, 0, 1, 1, 0])
    eps = torch.tensor([0.0, 0.02, 0.05, 0.1, 0.2])
    kw = [dict(target=None, y=y), dict(target=[1, 2, 0, 0, 2])]
    if attack == "pgd":
        kw = [dict(k, steps=4, random_start=True, seed=7) for k in kw] + [dict(target="second", steps=3, norm="2")]
    fn = {"fgsm": fgsm, "pgd": pgd}[attack]
    for k in kw:
        whole = fn(net, x, eps=eps, batch_size=5, **k)
        parts = fn(net, x, eps=eps, batch_size=2, **k)
        for f in ("success", "pred_after", "steps", "classes"):
            assert torch.equal(getattr(whole, f), getattr(parts, f)), (attack, k, f)
        # L∞ steps are signs (exact); an L2 step divides by the gradient's norm (float rounding)
        assert torch.allclose(whole.x_adv, parts.x_adv, atol=0 if k.get("norm") != "2" else 1e-6), (attack, k)
        assert torch.allclose(whole.logits_after, parts.logits_after, atol=1e-5)
        assert torch.equal(whole.x_adv[0], x[0])  # ε = 0 stays put
