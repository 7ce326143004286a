"""Occlusion sensitivity: invariants, a brute-force loop, and Captum."""

from __future__ import annotations

import pytest
import torch
from attribution_nets import LeftHalfNet, LinearNet

from cnnlens.attribution import occlusion
from cnnlens.attribution.occlusion import window_starts

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force(model, x, cls, window, stride, fill):
    """Slide the patch by hand: per-pixel mean drop and the probability grid."""
    n, c, H, W = x.shape
    rows, cols = window_starts(H, window, stride), window_starts(W, window, stride)
    with torch.no_grad():
        base = model(x)
        s0 = base[torch.arange(n), cls]
        total = torch.zeros(n, H, W)
        count = torch.zeros(H, W)
        raw = torch.zeros(n, len(rows), len(cols))
        prob = torch.zeros(n, len(rows), len(cols))
        for a, r in enumerate(rows):
            for b, q in enumerate(cols):
                xo = x.clone()
                xo[:, :, r : r + window, q : q + window] = fill
                out = model(xo)
                d = s0 - out[torch.arange(n), cls]
                raw[:, a, b] = d
                prob[:, a, b] = out.softmax(1)[torch.arange(n), cls]
                total[:, r : r + window, q : q + window] += d.view(n, 1, 1)
                count[r : r + window, q : q + window] += 1
    return total / count, raw, prob


def test_window_starts_cover_every_pixel():
    for size in range(1, 23):
        for win in range(1, 8):
            for stride in range(1, win + 1):
                starts = window_starts(size, win, stride)
                w = min(win, size)
                covered = set()
                for s in starts:
                    assert 0 <= s <= size - w
                    covered |= set(range(s, s + w))
                assert covered == set(range(size))
                assert starts == sorted(set(starts))


def test_a_stride_larger_than_the_window_is_refused(tiny_gap_net):
    with pytest.raises(ValueError, match="stride"):
        occlusion(tiny_gap_net, torch.rand(1, 3, 8, 8), window=2, stride=3)


def test_occlusion_matches_a_brute_force_loop(tiny_gap_net):
    x = torch.rand(2, 3, 11, 10)  # window 4, stride 3 does not tile: a last window flush with the border
    e = occlusion(tiny_gap_net, x, window=4, stride=3, fill=0.25, batch_size=5)
    maps, raw, prob = brute_force(tiny_gap_net, x, e.classes, 4, 3, 0.25)
    assert e.extras["rows"].tolist() == [0, 3, 6, 7] and e.extras["cols"].tolist() == [0, 3, 6]
    assert torch.allclose(e.maps, maps, atol=1e-6)
    assert torch.allclose(e.raw, raw, atol=1e-6)
    assert torch.allclose(e.extras["probability"], prob, atol=1e-6)


def test_occlusion_of_a_linear_model_with_one_pixel_window_is_w_times_x_minus_fill(untouched):
    net = untouched(LinearNet(c=3, h=5, w=6, k=4))
    x = torch.rand(2, 3, 5, 6)
    for fill, value in [("grey", 0.5), ("black", 0.0), (0.8, 0.8)]:
        e = occlusion(net, x, target=[1, 3], window=1, stride=1, fill=fill)
        for i, c in enumerate([1, 3]):
            expected = (net.weight_map(c) * (x[i] - value)).sum(0)
            assert torch.allclose(e.maps[i], expected, atol=1e-5)
            assert torch.allclose(e.raw[i], expected, atol=1e-5)


def test_occluding_what_the_model_ignores_changes_nothing(untouched):
    net = untouched(LeftHalfNet())
    x = torch.rand(2, 3, 8, 8)
    e = occlusion(net, x, window=2, stride=2, fill="black")
    # windows entirely in the right half (columns 4..7) do not move the score
    # (up to the rounding of a convolution run at another batch size)
    assert e.raw[:, :, 2:].abs().max() < 1e-6
    assert e.maps[:, :, 4:].abs().max() < 1e-6
    assert e.maps[:, :, :4].abs().amax() > 1e-3
    p0 = e.extras["clean_probability"].view(-1, 1, 1)
    assert torch.allclose(e.extras["probability"][:, :, 2:], p0.expand(-1, 4, 2), atol=1e-6)


def test_a_fill_equal_to_the_input_gives_zero(tiny_gap_net):
    x = torch.rand(2, 3, 8, 8)
    e = occlusion(tiny_gap_net, x, window=3, stride=2, fill=x.clone())
    assert torch.equal(e.maps, torch.zeros_like(e.maps))
    assert e.extras["empty"].all() and torch.isfinite(e.maps).all()
    assert torch.allclose(e.extras["probability"], e.extras["clean_probability"].view(-1, 1, 1).expand_as(e.raw))
    # a constant image occluded by its own colour
    g = torch.full((1, 3, 8, 8), 0.5)
    assert torch.equal(occlusion(tiny_gap_net, g, window=4).maps, torch.zeros(1, 8, 8))


def test_occlusion_does_not_depend_on_the_batch_size(tiny_gap_net):
    x = torch.rand(3, 3, 9, 9)
    ref = occlusion(tiny_gap_net, x, window=3, stride=2, batch_size=1)
    for bs in (2, 7, 64, 1000):
        e = occlusion(tiny_gap_net, x, window=3, stride=2, batch_size=bs)
        assert torch.allclose(e.maps, ref.maps, atol=1e-6)
        assert torch.allclose(e.extras["probability"], ref.extras["probability"], atol=1e-7)


def test_blur_fill_uses_a_blurred_copy(tiny_gap_net):
    from cnnlens.attribution.common import gaussian_blur

    x = torch.rand(2, 3, 8, 8)
    e = occlusion(tiny_gap_net, x, window=8, fill="blur", blur_sigma=1.5)  # one window: the whole image
    blurred = gaussian_blur(x, 1.5)
    with torch.no_grad():
        y, yb = tiny_gap_net(x), tiny_gap_net(blurred)
    c = e.classes
    assert torch.allclose(e.raw.view(-1), (y - yb)[torch.arange(2), c], atol=1e-6)
    with pytest.raises(ValueError, match="fill"):
        occlusion(tiny_gap_net, x, fill="purple")


def test_captum_occlusion_agrees(tiny_gap_net):
    captum = pytest.importorskip("captum.attr")
    x = torch.rand(2, 3, 12, 12)
    cls = [1, 2]
    e = occlusion(tiny_gap_net, x, target=cls, window=4, stride=2, fill=0.5)
    a = captum.Occlusion(tiny_gap_net).attribute(
        x, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=0.5, target=cls, perturbations_per_eval=8
    )
    assert torch.allclose(a[:, 0], a[:, 2])
    assert torch.allclose(e.maps, a[:, 0], atol=1e-5)
