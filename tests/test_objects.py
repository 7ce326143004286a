"""From maps to objects: the box cut from a map (Zhou et al. 2016), GrabCut seeded by a map (Simonyan et
al. 2014), mask IoU, and their leaderboard columns."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import cnnlens
from cnnlens import attribution, metrics
from cnnlens.data import cluttered_digits
from cnnlens.models.cluttered import boxes_to_masks


def test_a_map_that_is_the_true_mask_gives_iou_one():
    boxes = torch.tensor([[3, 5, 20, 17], [0, 0, 32, 32], [10, 2, 11, 30]])
    maps = boxes_to_masks(boxes, (32, 32)).float()
    assert torch.equal(metrics.box_from_map(maps), boxes)
    assert metrics.localisation_iou(maps, boxes).scores.tolist() == [1.0, 1.0, 1.0]
    assert metrics.localisation_accuracy(maps, boxes).scores.tolist() == [1.0, 1.0, 1.0]
    assert metrics.mask_iou(maps > 0, maps).tolist() == [1.0, 1.0, 1.0]


def test_two_blobs_give_the_larger_ones_box_and_the_threshold_is_a_share_of_the_max():
    m = torch.zeros(1, 40, 40)
    m[0, 2:6, 2:6] = 1.0  # small but brightest: 16 pixels
    m[0, 20:30, 10:35] = 0.5  # larger: 250 pixels, above 0.2 × 1
    m[0, 32:40, 0:40] = 0.15  # the largest of all, but below 0.2 × max: not a region
    assert metrics.box_from_map(m).tolist() == [[10, 20, 35, 30]]
    # at threshold 0.1 the faint band joins: it is now the largest region
    assert metrics.box_from_map(m, threshold=0.1).tolist() == [[0, 32, 40, 40]]
    # diagonal neighbours are one region (8-connectivity): two 3×3 squares touching at a corner
    d = torch.zeros(1, 10, 10)
    d[0, 0:3, 0:3] = 1
    d[0, 3:6, 3:6] = 1
    d[0, 8:10, 8:10] = 1
    assert metrics.box_from_map(d).tolist() == [[0, 0, 6, 6]]


def test_box_iou_and_mask_iou_by_hand_and_empty_cases():
    a = torch.tensor([[0, 0, 4, 4], [0, 0, 2, 2], [0, 0, 0, 0]])
    b = torch.tensor([[2, 0, 6, 4], [4, 4, 6, 6], [0, 0, 3, 3]])
    assert metrics.box_iou(a, b).tolist() == pytest.approx([8 / 24, 0.0, 0.0])
    # an all-zero map (nothing to localise) is the empty box: IoU 0, a miss, never NaN
    r = metrics.localisation_accuracy(torch.zeros(1, 8, 8), torch.tensor([[1, 1, 4, 4]]))
    assert r.extras["boxes"].tolist() == [[0, 0, 0, 0]] and r.scores.tolist() == [0.0]
    p = torch.zeros(2, 4, 4, dtype=torch.bool)
    p[0, :2] = True
    t = torch.zeros(2, 4, 4, dtype=torch.bool)
    t[0, 1:3] = True
    iou = metrics.mask_iou(p, t)
    assert iou[0].item() == pytest.approx(4 / 12) and torch.isnan(iou[1])
    with pytest.raises(ValueError, match="threshold must be in"):
        metrics.box_from_map(torch.ones(1, 4, 4), threshold=2)


def _synthetic(n=3, size=64, seed=0):
    """A bright disc on a dark, noisy background with a few bright specks; the map is the disc's blurred
    indicator plus noise (a rough saliency map)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    xs, truth, maps = [], [], []
    for i in range(n):
        cy, cx, r = 20 + 10 * i, 40 - 8 * i, 9 + 2 * i
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r
        img = 0.15 + 0.05 * torch.randn(3, size, size, generator=g)
        img[0, disc], img[1, disc], img[2, disc] = 0.9, 0.6, 0.2
        img[:, 2:4, 2:4] = 0.9  # a speck far from the object
        blur = torch.nn.functional.avg_pool2d(disc.float()[None, None], 7, 1, 3)[0, 0]
        xs.append(img.clamp(0, 1))
        truth.append(disc)
        maps.append(blur + 0.2 * torch.rand(size, size, generator=g))
    return torch.stack(xs), torch.stack(truth), torch.stack(maps)


def test_segment_recovers_a_clear_object_from_a_rough_map():
    x, truth, maps = _synthetic()
    seg = attribution.segment(maps, x)
    assert seg.dtype == torch.bool and seg.shape == truth.shape
    iou = metrics.mask_iou(seg, truth)
    assert (iou > 0.9).all(), iou
    # the seeds alone (the map's top 5 %) are further from the object: GrabCut did the work
    seeds = maps >= torch.quantile(maps.flatten(1), 0.95, dim=1).view(-1, 1, 1)
    alone = metrics.mask_iou(seeds, truth)
    assert (iou > alone).all() and float((iou - alone).mean()) > 0.2
    # a constant map has no seeds apart: an empty mask
    assert not attribution.segment(torch.ones(1, 64, 64), x[:1]).any()
    r = metrics.segmentation_iou(maps, x, truth)
    assert torch.allclose(r.scores, iou) and r.higher_is_better


def test_segment_without_opencv_is_one_line(monkeypatch):
    x, _, maps = _synthetic(n=1)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r"pip install 'cnnlens\[segment\]'"):
        attribution.segment(maps, x)
    with pytest.raises(ValueError, match="background < foreground"):
        attribution.segment(maps, x, foreground=0.2, background=0.5)
    with pytest.raises(ValueError, match="give the images the maps explain"):
        attribution.segment(maps, x[:, :, :32])


def test_leaderboard_columns_equal_the_metrics_and_masks_give_the_same_boxes(untouched):
    model = untouched(cnnlens.load_model("cluttered-digits-cnn"))
    ds = cluttered_digits("test")
    n = 6
    x, y = ds.x[:n], ds.y[:n]
    keys = ["localisation_iou", "localisation_accuracy", "segmentation_iou"]
    lb = metrics.benchmark(model, x, y=y, boxes=ds.boxes[:n], objects=ds.ink[:n], methods=["cam"], metrics=keys)
    e = attribution.cam(model, x, target="true", y=y)
    assert torch.allclose(lb.scores["cam"]["localisation_iou"], metrics.localisation_iou(e, ds.boxes[:n]).scores)
    assert torch.equal(
        lb.scores["cam"]["localisation_accuracy"], (metrics.localisation_iou(e, ds.boxes[:n]).scores >= 0.5).double()
    )
    seg = metrics.segmentation_iou(e, x, ds.ink[:n]).scores
    assert torch.allclose(lb.scores["cam"]["segmentation_iou"], seg, equal_nan=True)
    # on this test bed CAM's box is a fair localisation and its GrabCut mask overlaps the digit's ink
    assert lb.aggregates["cam"]["localisation_iou"].mean > 0.3 and np.nanmean(seg.numpy()) > 0.4
    # given as masks (the boxes' rectangles), the box cut is scored against the masks' tight boxes: the same
    lb2 = metrics.benchmark(model, x, y=y, masks=ds.masks[:n], methods=["cam"], metrics=keys[:2])
    assert torch.equal(lb2.scores["cam"]["localisation_iou"], lb.scores["cam"]["localisation_iou"])


def test_the_leaderboard_keeps_what_each_map_became_and_its_figure_draws_it():
    model = cnnlens.load_model("cluttered-digits-cnn")
    ds = cluttered_digits("test")
    n = 3
    lb = metrics.benchmark(
        model,
        ds.x[:n],
        y=ds.y[:n],
        boxes=ds.boxes[:n],
        objects=ds.ink[:n],
        methods=["gradcam"],
        metrics=["localisation_accuracy", "segmentation_iou"],
        keep=2,
    )
    e = attribution.gradcam(model, ds.x[:n], target="true", y=ds.y[:n])
    assert torch.equal(lb.objects["gradcam"]["boxes"], metrics.box_from_map(e)[:2])
    assert torch.equal(lb.objects["gradcam"]["masks"], attribution.segment(e, ds.x[:n])[:2])
    from cnnlens.figures.metrics import examples_figure

    fig = examples_figure(lb, ds.x[:2], ds.boxes[:2])
    ax = fig.axes[0]
    styles = [(p.get_edgecolor()[:3], p.get_linestyle()) for p in ax.patches]
    assert ((1.0, 1.0, 1.0), "solid") in styles and ((1.0, 1.0, 0.0), "--") in styles
    assert len(ax.collections) >= 1 or any("Contour" in type(a).__name__ for a in ax.get_children())
