"""The demo's inside-the-network section: filters, feature maps, receptive fields, dataset search, statistics,
influence, activation maximisation, deconvnet and Deep Dream on the bundled models.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ..data import data_input_size
from ..inside.deconv import deconvnet
from ..inside.dream import deep_dream
from ..inside.filters import feature_maps, filters
from ..inside.influence import InfluenceAccumulator
from ..inside.maximize import maximize, objectives
from ..inside.receptive import receptive_field
from ..inside.report import (
    INTROS,
    add_deconv,
    add_dream,
    add_feature_maps,
    add_filters,
    add_influence,
    add_receptive_fields,
    add_search,
    add_stats,
    add_visualizations,
)
from ..inside.search import SearchAccumulator
from ..inside.stats import StatsAccumulator, default_edges
from ..scanning import scan

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
def demo_section(report, ctx) -> None:
    """The demo's inside-the-network part (see the module docstring); ``ctx.quick`` for a smoke run."""
    prog = ctx.progress
    t0 = time.perf_counter()
    prog("inside: efficientnet-lite0", 0, 3)
    _filters_section(report, ctx)
    prog("inside: efficientnet-lite0", 1, 3)
    _maximize_section(report, ctx)
    prog("inside: efficientnet-lite0", 2, 3)
    _dream_section(report, ctx)
    prog("inside: efficientnet-lite0", 3, 3)
    inf = _digits_scan_sections(report, ctx)
    _deconv_section(report, ctx, inf)
    log.info("inside demo section: %.1f s", time.perf_counter() - t0)


def _filters_section(report, ctx) -> None:
    """EfficientNet-Lite0's first filters and feature maps, and digits-cnn's second conv layer."""
    eff = ctx.effnet
    names, photos = ctx.photos
    sec = report.section(
        "Inside: filters and feature maps",
        INTROS["filters"],
        {"model": "efficientnet-lite0", "layers": "conv_stem (first layer), blocks.1", "photo": names[0]},
    )
    add_filters(sec, filters(eff, "conv_stem"))
    add_feature_maps(
        sec,
        feature_maps(eff, photos[:1], "blocks.1"),
        image=photos[0],
        caption=f"feature maps of blocks.1 for the {names[0]} photo (16 of 24 channels)",
    )
    add_filters(
        sec,
        filters(ctx.digits_model, "features.3"),
        max_filters=8,
        caption="digits-cnn's second conv layer: one grey tile per input channel (8 of 32 filters, 16 of 16 inputs)",
    )


def _maximize_section(report, ctx) -> None:
    """Class model visualisation: EfficientNet-Lite0's classes, digits-cnn's digits and a target response."""
    q = ctx.quick
    prog = ctx.progress
    eff = ctx.effnet
    cls_names = list(eff.spec.class_names)
    classes = [130, 949, 980, 1] if not q else [130]
    steps = 2 if q else 96
    size = 96 if q else 160
    mx_settings: dict[str, Any] = dict(
        steps=steps, lr=0.05, param="fourier", size=size, jitter=8, scale=0.1, rotate=5, seed=0
    )
    sec = report.section(
        "Inside: activation maximisation",
        INTROS["maximize"],
        {
            "model": "efficientnet-lite0 and digits-cnn",
            **{k: str(v) for k, v in mx_settings.items()},
            "objective": "pre-softmax class score",
            "optimiser": "Adam",
        },
    )
    v = maximize(
        eff,
        objectives.class_score(classes),
        **mx_settings,
        progress=lambda d, t: prog("inside: class visualisation", d, t),
    )
    with torch.no_grad():
        p = eff(v.images).softmax(1)
    titles = [f"{cls_names[c].split(',')[0]} (p={float(p[i, c]):.2f})" for i, c in enumerate(classes)]
    add_visualizations(
        sec,
        v,
        titles,
        f"efficientnet-lite0: images that maximise a class score ({steps} steps at "
        f"{size}×{size}, Fourier parameterisation with decorrelated colour, jitter ±8 px, scale ±10 %, "
        "rotation ±5°); p = the model's softmax probability for that class on the image",
    )
    _digit_visualisations(sec, ctx)


def _digit_visualisations(sec, ctx) -> None:
    """digits-cnn: the image that maximises each digit's score, and one that matches a target response."""
    dm = ctx.digits_model
    dsteps = 3 if ctx.quick else 200
    dJ = objectives.class_score(list(range(10))) - 5 * objectives.tv() - 20 * objectives.l2(center=0.0)
    dv = maximize(
        dm,
        dJ,
        steps=dsteps,
        lr=0.05,
        param="pixel",
        jitter=2,
        blur_every=10,
        blur_sigma=0.5,
        seed=0,
        progress=lambda d, t: ctx.progress("inside: digit visualisation", d, t),
    )
    add_visualizations(
        sec,
        dv,
        [f"digit {c}" for c in range(10)],
        f"digits-cnn: images that maximise each digit's score − 5·TV − 20·‖x‖² (dark background; "
        f"{dsteps} steps, pixel parameterisation, jitter ±2 px, blur σ 0.5 every 10 steps). The network "
        "averages its evidence over positions (global average pooling), so the best image repeats the "
        "strokes that say “3” or “5” all over, rather than drawing one digit",
    )
    mse_target = torch.zeros(1, 10)
    mse_target[0, 3] = 15.0
    mv = maximize(
        dm,
        objectives.mse(mse_target) - 5 * objectives.tv() - 20 * objectives.l2(center=0.0),
        steps=dsteps,
        lr=0.05,
        param="pixel",
        jitter=2,
        seed=1,
    )
    add_visualizations(
        sec,
        mv,
        ["MSE to target 15·e₃"],
        "a target response instead of a score (Mahendran & Vedaldi 2016), with the same regularisers: "
        "minimise ‖f(x) − t‖² for the target response t = 15 on digit 3 and 0 elsewhere "
        f"(J: {float(mv.start[0]):.1f} → {float(mv.final[0]):.2f})",
    )


def _dream_section(report, ctx) -> None:
    """Deep Dream on the first photo with EfficientNet-Lite0's ``blocks.4``."""
    q = ctx.quick
    names, photos = ctx.photos
    dream_cfg: dict[str, Any] = dict(octaves=2 if q else 3, steps=1 if q else 6, step_size=0.02, jitter=16, seed=0)
    sec = report.section(
        "Inside: Deep Dream",
        INTROS["dream"],
        {
            "model": "efficientnet-lite0",
            "photo": names[0],
            "layer": "blocks.4",
            **dream_cfg,
            "objective": "mean(a²) of blocks.4",
        },
    )
    img = photos[:1] if not q else torch.nn.functional.interpolate(photos[:1], size=(112, 112), mode="bilinear")
    d = deep_dream(
        ctx.effnet, img, "blocks.4", **dream_cfg, progress=lambda d_, t: ctx.progress("inside: deep dream", d_, t)
    )
    add_dream(
        sec,
        img,
        d,
        f"Deep Dream on {names[0]}: {d.settings['octaves']} octaves "
        f"{', '.join(f'{h}×{w}' for h, w in d.settings['sizes'])}, {dream_cfg['steps']} steps each; "
        f"blocks.4 energy {float(d.start[0]):.3g} → {float(d.final[0]):.3g}",
    )


def _digits_scan_sections(report, ctx):
    """digits-cnn's receptive fields, then one scan for dataset search and statistics and one for channel
    influence, each in its section; the influence result (the deconvnet section picks its channels)."""
    q = ctx.quick
    prog = ctx.progress
    dm = ctx.digits_model
    data = ctx.digits_data
    if q:
        data = torch.utils.data.Subset(data, range(48))
    layers = ["features.1", "features.4", "features.7"]
    rfs = [
        receptive_field(dm, l, probe=True)
        for l in ["features.0", "features.2", "features.3", "features.5", "features.6", "features.7"]
    ]
    sec = report.section(
        "Inside: receptive fields",
        INTROS["receptive"],
        {"model": "digits-cnn", "input": "1×32×32", "probe": "2 random inputs, sum over channels"},
    )
    add_receptive_fields(sec, rfs)

    k = 9 if not q else 4
    hw = data_input_size(data, dm)
    searches = [SearchAccumulator(dm, l, k=k, input_size=hw) for l in layers]
    stats = [StatsAccumulator(f"net.{l}", default_edges(dm, data, f"net.{l}", 30), num_classes=10) for l in layers]
    inf_data = torch.utils.data.Subset(data, range(min(len(data), 120 if not q else 16)))
    results = scan(
        dm, data, [*searches, *stats], batch_size=64, progress=lambda d_, t: prog("inside: digits scan", d_, t)
    )
    (inf,) = scan(
        dm,
        inf_data,
        [InfluenceAccumulator(dm, "features.7", "true")],
        batch_size=40,
        progress=lambda d_, t: prog("inside: digits influence", d_, t),
    )
    _search_stats_influence(report, ctx, data, layers, k, results[:3], results[3:], inf)
    return inf


def _search_stats_influence(report, ctx, data, layers, k, sres, sts, inf) -> None:
    """The sections of the digits scan's results: dataset search, neuron statistics, channel influence."""
    q = ctx.quick
    names10 = list(ctx.digits_model.spec.class_names)
    sec = report.section(
        "Inside: dataset search (maximally activating patches)",
        INTROS["search"],
        {
            "model": "digits-cnn",
            "data": f"digits held-out split ({len(data)} images)",
            "k": k,
            "layers": ", ".join(layers),
            "shown": "the first 8 channels of each layer (all in results.json)",
        },
    )
    for r in sres:
        add_search(sec, r, names10, channels=list(r.channels)[: 8 if not q else 2])
    sec = report.section(
        "Inside: neuron statistics",
        INTROS["stats"],
        {
            "model": "digits-cnn",
            "data": f"digits held-out split ({len(data)} images)",
            "bins": 30,
            "histogram range": "from a first look at 64 images",
            "zero": "a ≤ 0",
        },
    )
    for st in sts[1:]:
        add_stats(sec, st, names10, channels=list(range(8 if not q else 2)))
    sec = report.section(
        "Inside: channel influence",
        INTROS["influence"],
        {
            "model": "digits-cnn",
            "layer": "features.7 (before global average pooling)",
            "target": "true class",
            "images": inf.count,
        },
    )
    add_influence(sec, inf)


def _deconv_section(report, ctx, inf) -> None:
    """Deconvnet next to guided backprop for digits-cnn's most influential ``features.7`` channels."""
    q = ctx.quick
    dm = ctx.digits_model
    xs = torch.stack([ctx.digits_data[i][0] for i in range(6 if not q else 2)]).to(next(dm.parameters()).device)
    ys = [int(ctx.digits_data[i][1]) for i in range(xs.shape[0])]
    chans = [int(c) for c in torch.argsort(inf.taylor, descending=True)[: 3 if not q else 1]]
    projs = [deconvnet(dm, xs, "features.7", c) for c in chans]
    sec = report.section(
        "Inside: deconvnet and guided backprop",
        INTROS["deconv"],
        {
            "model": "digits-cnn",
            "layer": "features.7",
            "channels": chans,
            "unit": "the strongest of the channel in each image",
            "images": len(ys),
        },
    )
    add_deconv(sec, dm, xs, projs, labels=[f"digit {y}" for y in ys])
