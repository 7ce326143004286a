"""DeepFool and Carlini–Wagner L2: exact answers on a linear model, agreement with torchattacks on digits-cnn."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TinyGapNet
from test_attacks import linear_net, rand_images

from cnnlens.attacks import cw, deepfool

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(4, 16, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(4, generator=g, dtype=torch.float64) * 0.1
    return linear_net(w, b), w, b


def test_deepfool_on_a_linear_model_steps_to_the_closest_boundary_in_one_iteration(untouched):
    net, w, b = _linear()
    untouched(net)
    x = 0.4 + 0.2 * rand_images(6, (1, 4, 4), dtype=torch.float64)  # far from the box's faces
    z = x.flatten(1) @ w.T + b
    a = z.argmax(1)
    # the closest boundary by hand: min_k |z_k − z_a| / ||w_k − w_a||
    dist = torch.stack(
        [
            torch.stack(
                [
                    ((z[i, k] - z[i, a[i]]).abs() / (w[k] - w[a[i]]).norm())
                    if k != a[i]
                    else torch.tensor(float("inf"), dtype=torch.float64)
                    for k in range(4)
                ]
            )
            for i in range(6)
        ]
    )
    r = deepfool(net, x, overshoot=0.0)
    assert r.success.all() and (r.steps == 1).all()
    k = dist.argmin(1)
    assert torch.equal(r.pred_after, k)
    # the step is (|f| + 1e-4)/||w||² · w: its length is the distance plus 1e-4/||w||
    wn = torch.stack([(w[k[i]] - w[a[i]]).norm() for i in range(6)])
    assert torch.allclose(r.l2(), dist.min(1).values + 1e-4 / wn, rtol=1e-9, atol=1e-12)
    assert torch.allclose(r.eps, r.l2())
    # along w_k − w_a, i.e. perpendicular to the boundary
    for i in range(6):
        d = r.perturbation[i].flatten()
        assert torch.allclose(d / d.norm(), (w[k[i]] - w[a[i]]) / wn[i], atol=1e-9)
    # overshoot scales the whole step
    o = deepfool(net, x, overshoot=0.02)
    assert torch.allclose(o.l2(), 1.02 * r.l2(), rtol=1e-9)
    # targeted: the boundary to that class only
    t = deepfool(net, x, target=[int((a[i] + 1) % 4) for i in range(6)], overshoot=0.0)
    assert t.success.all() and t.targeted
    assert torch.equal(t.pred_after, (a + 1) % 4)


def test_deepfool_batch_and_box(untouched):
    net = untouched(TinyGapNet())
    x = rand_images(5, lo=0.3, hi=0.7)  # inside the box: clipping does not stall a step onto a tie
    whole = deepfool(net, x)
    parts = deepfool(net, x, batch_size=2)
    assert torch.allclose(whole.x_adv, parts.x_adv, atol=1e-6) and torch.equal(whole.steps, parts.steps)
    assert whole.x_adv.min() >= 0 and whole.x_adv.max() <= 1
    assert torch.equal(whole.success, whole.pred_after != whole.pred_before)
    assert torch.equal(torch.isinf(whole.eps), ~whole.success)
    # an image already misclassified needs no step
    y = whole.pred_before.clone()
    y[0] = (y[0] + 1) % 3
    r = deepfool(net, x, y)
    assert r.steps[0] == 0 and r.eps[0] == 0 and torch.equal(r.x_adv[0], x[0])
    with pytest.raises(ValueError, match="overshoot"):
        deepfool(net, x, overshoot=-1)
    with pytest.raises(ValueError, match="candidates"):
        deepfool(net, x, candidates=0)


def test_cw_reaches_its_goal_inside_the_box_and_keeps_the_smallest(untouched):
    net = untouched(TinyGapNet())
    x = rand_images(4)
    kw = {"steps": 40, "lr": 0.05}
    r = cw(net, x, c=50.0, **kw)
    assert r.success.all() and not r.targeted
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert torch.equal(r.success, r.pred_after != r.pred_before)
    assert torch.allclose(r.eps, r.l2())
    # a larger c trades distance for success: the same successes, each further away
    big = cw(net, x, c=500.0, **kw)
    assert big.success.all() and (big.l2() > r.l2()).all()
    # too small a c: nothing reached, x itself returned, ε = inf
    small = cw(net, x, c=5.0, **kw)
    assert not small.success.any() and torch.equal(small.x_adv, x) and torch.isinf(small.eps).all()
    # the paper's binary search: c grows ×10 from 5 until it succeeds, then bisects
    s = cw(net, x, c=5.0, search_steps=3, **kw)
    assert s.success.all() and set(s.extras["c"].tolist()) <= {50.0, 27.5}
    assert (s.l2() <= r.l2() + 1e-6).all()  # the c = 50 run is one of its three, so it is never worse
    # per image: the batch does not matter
    parts = cw(net, x, c=50.0, batch_size=1, **kw)
    assert torch.allclose(parts.x_adv, r.x_adv, atol=1e-5)
    # targeted toward the runner-up
    t = cw(net, x, target="second", c=50.0, **kw)
    assert t.targeted and torch.equal(t.success, t.pred_after == t.classes) and t.success.any()
    with pytest.raises(ValueError, match="c must be"):
        cw(net, x, c=0)


@pytest.fixture(scope="module")
def digits20():
    from cnnlens.models.digits import digits_split

    d = digits_split("test")
    return d.x[:20], d.y[:20]


def _within(a: float, b: float, rel: float = 0.10) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


@pytest.mark.slow
def test_deepfool_agrees_with_torchattacks_on_digits(digits_model, digits20):
    import torchattacks

    x, y = digits20
    ours = deepfool(digits_model, x, y, steps=50, overshoot=0.02)
    theirs = torchattacks.DeepFool(copy.deepcopy(digits_model), steps=50, overshoot=0.02)
    xa, reached = theirs.forward_return_target_labels(x, y)
    # torchattacks applies the overshoot to each step, not to the total as the paper does, so its last steps
    # shrink onto the boundary: it reports success (its returned label differs) for points whose logits tie.
    # Compare its own success rate and median distance with ours; ours also clears the boundary.
    ta_rate = float((reached != y).float().mean())
    ta_med = float((xa - x).flatten(1).norm(dim=1).median())
    assert _within(ours.success_rate, ta_rate), (ours.success_rate, ta_rate)
    assert _within(float(ours.l2().median()), ta_med), (float(ours.l2().median()), ta_med)
    with torch.no_grad():
        ta_argmax = float((digits_model(xa).argmax(1) != y).float().mean())
    assert ours.success_rate >= ta_argmax


@pytest.mark.slow
def test_cw_agrees_with_torchattacks_on_digits(digits_model, digits20):
    import torchattacks

    x, y = digits20
    ours = cw(digits_model, x, y, c=1.0, kappa=0.0, steps=50, lr=0.01)
    xa = torchattacks.CW(copy.deepcopy(digits_model), c=1.0, kappa=0.0, steps=50, lr=0.01)(x, y)
    with torch.no_grad():
        ok = digits_model(xa).argmax(1) != y
    l2 = (xa - x).flatten(1).norm(dim=1)
    assert _within(ours.success_rate, float(ok.float().mean()))
    assert _within(float(ours.l2()[ours.success].median()), float(l2[ok].median()))


def test_robustness_curves_of_the_minimum_norm_attacks_are_their_norms(digits_model):
    from torch.utils.data import TensorDataset

    from cnnlens.attacks import robustness
    from cnnlens.models.digits import digits_split

    d = digits_split("test")
    x, y = d.x[:12], d.y[:12]
    eps = [0.0, 0.5, 1.0, 2.0]
    res = robustness(
        digits_model,
        TensorDataset(x, y),
        eps=eps,
        attacks=["deepfool", "cw"],
        norm="2",
        deepfool_steps=20,
        cw_steps=30,
        cw_c=1.0,
        gallery=2,
        batch_size=5,
    )
    clean = digits_model(x).argmax(1) == y
    for name, r in (
        ("deepfool", deepfool(digits_model, x, y, steps=20)),
        ("cw", cw(digits_model, x, y, c=1.0, steps=30)),
    ):
        # correct at ε: clean-correct and no adversarial image within ε (the batch does not matter)
        expected = [float((clean & ~(r.success & (r.l2() <= e))).float().mean()) for e in eps]
        assert res.accuracy[name].tolist() == pytest.approx(expected), name
    assert res.accuracy["deepfool"][0] == pytest.approx(res.clean_accuracy)
    assert res.settings["cw_c"] == 1.0 and res.settings["deepfool_steps"] == 20
    g = res.gallery[0]
    assert g["attack"] == "deepfool" and (g["x_adv"] - g["x"]).norm() <= g["eps"] + 1e-6


def test_cli_attack_deepfool_and_cw_write_the_library_result(tmp_path, digits_model, run_cli):
    import json

    from test_attacks_cli import _write_digits

    from cnnlens.data import read_images

    paths = _write_digits(tmp_path / "img", per_class=1, flat=True)[:2]
    x = read_images([str(p) for p in paths], digits_model).images
    for method, ref in (
        ("deepfool", deepfool(digits_model, x, steps=50)),
        ("cw", cw(digits_model, x, c=2.0, steps=20)),
    ):
        extra = ["--c", "2", "--steps", "20"] if method == "cw" else []
        code, cap = run_cli(
            "attack",
            *map(str, paths),
            "--model",
            "digits-cnn",
            "--method",
            method,
            "--target",
            "untargeted",
            *extra,
            "--out",
            str(tmp_path / method),
        )
        assert code == 0, cap.err
        assert torch.equal(torch.load(tmp_path / method / "x_adv.pt")["x_adv"], ref.x_adv)
        got = json.loads((tmp_path / method / "attack.json").read_text())
        assert got["settings"]["method"] == method
        assert [v["l2"] for v in got["images"].values()] == pytest.approx(ref.l2().tolist())
        assert ("DeepFool" if method == "deepfool" else "Carlini") in (tmp_path / method / "index.html").read_text()
