"""Augmented Grad-CAM really solves its inverse problem."""

from __future__ import annotations

import pytest
import torch

from cnnlens.attribution import augmented_gradcam, gradcam, random_affines, superresolve
from cnnlens.attribution.augmented import Operator, objective, total_variation, warp
from cnnlens.attribution.common import upsample

pytestmark = pytest.mark.usefixtures("one_thread")


def _known_map(S: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(S).float(), torch.arange(S).float(), indexing="ij")
    h = torch.zeros(S, S)
    h[S // 4 : S // 2, S // 5 : S // 2 + 3] = 1.0  # a sharp-edged block
    h += 0.7 * torch.exp(-((yy - 0.7 * S) ** 2 + (xx - 0.7 * S) ** 2) / (2 * (S / 10) ** 2))  # and a blob
    return h.unsqueeze(0)


def test_the_operator_is_the_warp_then_area_downsampling():
    S, L = 16, 5
    th = random_affines(L, (S, S), seed=3)
    h = torch.rand(2, S, S)
    op = Operator(th, (S, S), (4, 4))
    got = op(h)  # N×L×4×4
    for l in range(L):
        w = warp(h.unsqueeze(1), th[l : l + 1].expand(2, 2, 3))  # the same warp the image gets
        expected = torch.nn.functional.avg_pool2d(w, 4).squeeze(1)  # 4×4 blocks of a 16×16 map
        assert torch.allclose(got[:, l], expected, atol=1e-6)
    assert torch.allclose(th[0], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))


def test_the_solution_recovers_a_known_map_better_than_one_upsampled_cam():
    S, L, grid = 24, 20, (3, 3)
    h_star = _known_map(S)
    th = random_affines(L, (S, S), seed=0)
    g = Operator(th, (S, S), grid)(h_star)  # g_l = D(A_l(h*)), exactly through the same operators
    single = upsample(g[:, 0], (S, S))
    h, hist = superresolve(g, th, (S, S), lam=2e-3, mu=1e-4, steps=150)
    err_single = float((single - h_star).norm())
    err = float((h - h_star).norm())
    assert err < 0.7 * err_single, (err, err_single)
    # the objective went down, below its value at h* (which pays for its edges in TV)
    assert hist[0, -1] < 0.2 * hist[0, 0]
    op = Operator(th, (S, S), grid)
    assert objective(h, g, op, 2e-3, 1e-4) <= objective(h_star, g, op, 2e-3, 1e-4) + 1e-6
    # a larger λ gives a flatter map
    tvs = []
    for lam in (1e-3, 1e-2, 1e-1):
        hl, _ = superresolve(g, th, (S, S), lam=lam, mu=1e-4, steps=75)
        tvs.append(float(total_variation(hl)))
    assert tvs[0] > tvs[1] > tvs[2]


def test_augmented_gradcam_uses_gradcams_of_the_warped_images(tiny_gap_net):
    x = torch.rand(2, 3, 12, 12)
    e = augmented_gradcam(
        tiny_gap_net, x, target=[0, 2], augmentations=6, steps=30, layer="features", max_angle=20, max_shift=0.2, seed=4
    )
    th = e.extras["thetas"]
    assert torch.allclose(th, random_affines(6, (12, 12), max_angle=20, max_shift=0.2, seed=4))
    single = gradcam(tiny_gap_net, x, target=[0, 2], layer="features")
    assert torch.allclose(e.extras["cams"][:, 0], single.raw, atol=1e-6)
    for l in range(1, 6):
        xw = warp(x, th[l : l + 1].expand(2, 2, 3))
        g = gradcam(tiny_gap_net, xw, target=[0, 2], layer="features")
        assert torch.allclose(e.extras["cams"][:, l], g.raw, atol=1e-6)
    obj = e.extras["objective"]
    assert (obj[:, -1] < obj[:, 0]).all()
    assert e.settings["size"] == (12, 12) and e.raw.shape == (2, 12, 12)  # 8× the 12×12 grid, capped at the input
    # the map solves the stated problem on the normalised CAMs
    scale = e.extras["scale"].view(-1, 1, 1)
    op = Operator(th, (12, 12), (12, 12))
    lam, mu = e.settings["lam"], e.settings["mu"]
    found = objective(e.raw / scale, e.extras["cams"] / scale.unsqueeze(1), op, lam, mu)
    start = objective(single.raw / scale, e.extras["cams"] / scale.unsqueeze(1), op, lam, mu)
    assert (found < start).all()
