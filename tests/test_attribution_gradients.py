"""Gradient attributions: saliency, SmoothGrad, gradient × input, Integrated Gradients."""

from __future__ import annotations

import pytest
import torch
from attribution_nets import LinearNet, SmoothGapNet
from conftest import TinyGapNet

from cnnlens import Target
from cnnlens.attribution import gradient_x_input, integrated_gradients, saliency, smoothgrad

pytestmark = pytest.mark.usefixtures("one_thread")


def test_saliency_of_a_linear_model_is_its_weight_row(untouched):
    net = untouched(LinearNet(c=1, h=4, w=5, k=3))
    x = torch.rand(2, 1, 4, 5)
    e = saliency(net, x, target=[2, 0], reduce="signed")
    assert torch.equal(e.classes, torch.tensor([2, 0]))
    assert torch.allclose(e.maps[0], net.weight_map(2)[0])
    assert torch.allclose(e.maps[1], net.weight_map(0)[0])
    # the paper's reduction: max over channels of |g|
    net3 = untouched(LinearNet(c=3, h=4, w=5, k=3, seed=1))
    e3 = saliency(net3, torch.rand(1, 3, 4, 5), target=1)
    assert torch.allclose(e3.maps[0], net3.weight_map(1).abs().amax(0))
    e2 = saliency(net3, torch.rand(1, 3, 4, 5), target=1, reduce="l2")
    assert torch.allclose(e2.maps[0], net3.weight_map(1).norm(dim=0))


def test_saliency_equals_autograd_for_any_target(tiny_gap_net):
    x = torch.rand(3, 3, 6, 7)
    logits = tiny_gap_net(x)
    for target, cls in [
        ("predicted", logits.argmax(1)),
        ("second", logits.topk(2).indices[:, 1]),
        ([0, 2, 1], torch.tensor([0, 2, 1])),
        (1, torch.tensor([1, 1, 1])),
    ]:
        xr = x.clone().requires_grad_(True)
        y = tiny_gap_net(xr)
        (g,) = torch.autograd.grad(y.gather(1, cls.view(-1, 1)).sum(), xr)
        e = saliency(tiny_gap_net, x, target=target, reduce="none")
        assert torch.equal(e.classes, cls)
        assert torch.allclose(e.raw, g, atol=1e-7)
        assert torch.allclose(e.maps, g.sum(1), atol=1e-6)
        assert torch.allclose(saliency(tiny_gap_net, x, target=target).maps, g.abs().amax(1), atol=1e-7)
    assert all(p.grad is None for p in tiny_gap_net.parameters())


def test_saliency_of_a_channel_target_is_the_gradient_of_its_mean(tiny_gap_net):
    x = torch.rand(2, 3, 6, 6)
    xr = x.clone().requires_grad_(True)
    a = tiny_gap_net.features[:2](xr)
    (g,) = torch.autograd.grad(a[:, 3].mean((1, 2)).sum(), xr)
    e = saliency(tiny_gap_net, x, target=Target.channel("features.1", 3), reduce="signed")
    assert torch.allclose(e.maps, g.sum(1), atol=1e-7)
    assert e.classes.tolist() == [3, 3]


def test_gradient_x_input_of_a_linear_model_sums_to_score_minus_bias(untouched):
    net = untouched(LinearNet(c=2, h=3, w=3, k=4))
    x = torch.rand(2, 2, 3, 3)
    e = gradient_x_input(net, x, target=3, reduce="none")
    assert torch.allclose(e.raw, net.weight_map(3) * x)
    y = net(x)[:, 3] - net.fc.bias[3]
    assert torch.allclose(e.maps.flatten(1).sum(1), y.detach(), atol=1e-6)


def test_integrated_gradients_is_exact_on_a_linear_model(untouched):
    net = untouched(LinearNet(c=3, h=4, w=4, k=2))
    x = torch.rand(2, 3, 4, 4)
    for method in ("trapezoid", "midpoint", "gausslegendre"):
        e = integrated_gradients(net, x, target=1, baseline="grey", steps=3, method=method, reduce="none")
        assert torch.allclose(e.raw, (x - 0.5) * net.weight_map(1), atol=1e-6)
        assert e.extras["completeness_gap"].abs().max() < 1e-5


def test_integrated_gradients_completeness_gap_shrinks(tiny_gap_net, untouched):
    x = torch.rand(2, 3, 8, 8)
    smooth = untouched(SmoothGapNet())
    for method in ("trapezoid", "midpoint"):
        gaps = []
        for steps in (3, 9, 33, 129):
            e = integrated_gradients(smooth, x, steps=steps, baseline="black", method=method)
            # completeness: Σ attributions − gap = f(x) − f(x')
            total = e.extras["score"] - e.extras["baseline_score"]
            assert torch.allclose(e.maps.flatten(1).sum(1) - total, e.extras["completeness_gap"], atol=1e-4)
            gaps.append(float(e.extras["completeness_gap"].abs().max()))
        assert gaps[0] > gaps[1] > gaps[2] > gaps[3], (method, gaps)
        assert gaps[-1] < 1e-3 * float(total.abs().max())  # O(1/n²) on a smooth path
    # on a ReLU net the integrand jumps, so the gap falls unevenly, but it falls
    g = [float(integrated_gradients(tiny_gap_net, x, steps=s).extras["completeness_gap"].abs().max()) for s in (3, 257)]
    assert g[1] < 0.1 * g[0]


def test_integrated_gradients_batching_and_baselines(tiny_gap_net):
    x = torch.rand(2, 3, 6, 6)
    a = integrated_gradients(tiny_gap_net, x, steps=8, batch_size=1)
    b = integrated_gradients(tiny_gap_net, x, steps=8, batch_size=100)
    assert torch.allclose(a.maps, b.maps, atol=1e-6)
    # a baseline equal to the input attributes nothing
    z = integrated_gradients(tiny_gap_net, x, steps=4, baseline=x.clone())
    assert torch.equal(z.maps, torch.zeros_like(z.maps)) and z.extras["empty"].all()
    with pytest.raises(ValueError, match="method"):
        integrated_gradients(tiny_gap_net, x, method="simpson")


def test_smoothgrad_properties(tiny_gap_net, untouched):
    x = torch.rand(3, 3, 6, 6)
    # σ = 0: every noisy copy is the input
    assert torch.allclose(smoothgrad(tiny_gap_net, x, sigma=0.0, n=3).maps, saliency(tiny_gap_net, x).maps, atol=1e-7)
    # a linear model has the same gradient everywhere, so any noise gives the saliency map
    lin = untouched(LinearNet(c=3, h=6, w=6, k=3))
    assert torch.allclose(smoothgrad(lin, x, sigma=0.5, n=4).maps, saliency(lin, x).maps, atol=1e-6)
    # seeded; the seed matters; batch size does not
    a = smoothgrad(tiny_gap_net, x, sigma=0.3, n=6, seed=1, batch_size=4)
    b = smoothgrad(tiny_gap_net, x, sigma=0.3, n=6, seed=1, batch_size=18)
    c = smoothgrad(tiny_gap_net, x, sigma=0.3, n=6, seed=2)
    assert torch.allclose(a.maps, b.maps, atol=1e-6)
    assert not torch.allclose(a.maps, c.maps, atol=1e-4)
    # the mean of the per-copy maps, not the map of the mean gradient
    s = smoothgrad(tiny_gap_net, x, sigma=0.3, n=6, seed=1, reduce="none")
    assert torch.allclose(s.maps, smoothgrad(tiny_gap_net, x, sigma=0.3, n=6, seed=1, reduce="signed").maps, atol=1e-6)
    # mean_k max_c |g_k| ≥ max_c |mean_k g_k|, strictly somewhere
    assert (a.maps + 1e-6 >= s.raw.abs().amax(1)).all()
    assert (a.maps > s.raw.abs().amax(1) + 1e-4).any()


def test_captum_agrees_on_saliency_and_integrated_gradients(tiny_gap_net):
    captum = pytest.importorskip("captum.attr")
    x = torch.rand(2, 3, 6, 6)
    cls = [2, 0]
    ours = saliency(tiny_gap_net, x, target=cls, reduce="none").raw
    theirs = captum.Saliency(tiny_gap_net).attribute(x, target=cls, abs=False)
    assert torch.allclose(ours, theirs, atol=1e-7)
    ig = captum.IntegratedGradients(tiny_gap_net)
    e = integrated_gradients(tiny_gap_net, x, target=cls, steps=16, method="midpoint", reduce="none")
    a, delta = ig.attribute(
        x, baselines=0.0, target=cls, n_steps=16, method="riemann_middle", return_convergence_delta=True
    )
    assert torch.allclose(e.raw, a.float(), atol=1e-6)
    assert torch.allclose(e.extras["completeness_gap"], delta.float(), atol=1e-5)
    # Captum's "riemann_trapezoid" puts n points on [0, 1] but weights them 1/n (ends 1/2n), so its
    # weights sum to (n−1)/n; ours sum to 1 — the same nodes, scaled by n/(n−1)
    e = integrated_gradients(tiny_gap_net, x, target=cls, steps=16, method="trapezoid", reduce="none")
    a = ig.attribute(x, baselines=0.0, target=cls, n_steps=16, method="riemann_trapezoid")
    assert torch.allclose(e.raw, a.float() * 16 / 15, atol=1e-6)


class ViewNet(TinyGapNet):
    """Flattens with .view, which a channels-last tensor refuses."""

    def forward(self, x):
        a = self.features(x)
        return self.fc(a.view(a.shape[0], a.shape[1], -1).mean(2))


def test_channels_last_gives_the_same_values_and_falls_back(untouched):
    net = untouched(TinyGapNet(seed=7))
    x = torch.rand(2, 3, 64, 64)  # large enough for the automatic channels-last layout
    xr = x.clone().requires_grad_(True)
    y = net(xr)
    (g,) = torch.autograd.grad(y.max(1).values.sum(), xr)
    for cl in (None, True, False):
        e = saliency(net, x, reduce="none", channels_last=cl)
        assert torch.allclose(e.raw, g, atol=1e-6, rtol=1e-5)
    view = untouched(ViewNet(seed=7))
    e = saliency(view, x, reduce="none", channels_last=True)  # the model raises once, then runs contiguous
    assert torch.allclose(e.raw, g, atol=1e-6, rtol=1e-5)
    a = integrated_gradients(view, x, steps=4, channels_last=True, batch_size=3)
    b = integrated_gradients(net, x, steps=4, channels_last=False, batch_size=3)
    assert torch.allclose(a.maps, b.maps, atol=1e-6, rtol=1e-5)


def test_ig_and_smoothgrad_default_to_the_contiguous_layout_and_stay_as_exact_as_plain_float32(untouched):
    """Issue 20 defect 5: channels-last IG on ResNet-18 (64², the size where channels-last turns on) was 5.0e-3 away
    from float64 autograd on this image, plain contiguous float32 6.3e-7. The default is now contiguous for IG and
    SmoothGrad."""
    import zoo

    p = zoo.prepared("tv.resnet18")
    g = torch.Generator().manual_seed(0)
    torch.rand(8, 3, 64, 64, generator=g)
    model, x = untouched(p.model), torch.rand(2, 3, 64, 64, generator=g)[1:]
    e = integrated_gradients(model, x, steps=8)
    ref = zoo.ig_reference(p.twin64, x, e.classes, 8)
    plain = zoo.rel(zoo.ig_reference(p.twin32, x, e.classes, 8), ref)
    assert zoo.rel(e.maps, ref) <= 10 * plain + 1e-6
    small = untouched(SmoothGapNet())
    xs = torch.rand(1, 3, 64, 64)
    assert torch.equal(smoothgrad(small, xs, n=2).maps, smoothgrad(small, xs, n=2, channels_last=False).maps)
