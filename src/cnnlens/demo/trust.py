"""The demo's “How far to trust each map” section: the leaderboard on cluttered digits and the sanity check."""

from __future__ import annotations

import time

from ..attribution import METHODS
from ..data import cluttered_digits
from ..figures.attribution import randomization_figure
from ..figures.metrics import cascade_figure, examples_figure
from ..metrics.benchmark import benchmark
from ..metrics.report import SANITY_INTRO, leaderboard_section, sanity_rows
from ..metrics.sanity import SANITY_METHODS, sanity_check


def demo_section(report, ctx) -> None:
    """The demo's "How far to trust each map": the leaderboard on cluttered digits, then the sanity check on
    EfficientNet-Lite0 and the photos."""
    sec = _leaderboard_part(report, ctx)
    _sanity_part(sec, ctx)


def _leaderboard_part(report, ctx):
    """The leaderboard on the first held-out cluttered digits, in a section of its own (returned)."""
    quick = ctx.quick
    t0 = time.perf_counter()
    model = ctx.cluttered_model
    ds = cluttered_digits("test")
    n = 3 if quick else 6
    methods = ["saliency", "gradcam", "guided_backprop"] if quick else list(METHODS)
    small = (
        {
            "faithfulness_correlation": {"runs": 10},
            "road_morf": {"percentages": (20, 60)},
            "road_lerf": {"percentages": (20, 60)},
            "max_sensitivity": {"samples": 2},
            "deletion_auc": {"steps": 8},
            "insertion_auc": {"steps": 8},
        }
        if quick
        else {"faithfulness_correlation": {"runs": 20}, "max_sensitivity": {"samples": 3}}
    )
    lb = benchmark(
        model,
        ds.x[:n].to(ctx.device),
        y=ds.y[:n].to(ctx.device),
        boxes=ds.boxes[:n],
        objects=ds.ink[:n],
        methods=methods,
        metric_settings=small,
        progress=lambda d, t: ctx.progress("trust: leaderboard", d, t),
    )
    fig = examples_figure(lb, ds.x[:4], ds.boxes[:4])
    settings = {
        "model": "cluttered-digits-cnn (97.5 % on the held-out cluttered digits)",
        "images": f"the first {n} held-out cluttered digits",
        "target": "the true digit",
        "metric settings": "; ".join(
            f"{k}: {', '.join(f'{a}={b}' for a, b in v.items())}" for k, v in lb.settings["metrics"].items() if v
        ),
        "seconds (leaderboard)": round(time.perf_counter() - t0, 1),
    }
    sec = leaderboard_section(
        report,
        lb,
        settings=settings,
        figures=[
            (
                fig,
                "Each method's map (|value|) on four held-out cluttered digits; the "
                "digit's box in white, the box cut from the map dashed yellow, the "
                "GrabCut mask's outline cyan. The clutter is fragments of other "
                "digits.",
            )
        ],
    )
    sec.text(
        "<p>The test bed: <code>cnnlens.data.cluttered_digits()</code> puts one of scikit-learn's digits "
        "(upsampled to 24×24) at a random place on a 64×64 canvas among fragments of other digits and noise; "
        "the label is that digit and its box is known, so a map can be scored against where the evidence "
        "is. <code>cnnlens benchmark</code> runs this table (and on any ImageFolder with a boxes CSV).</p>"
    )
    return sec


def _sanity_part(sec, ctx) -> None:
    """The sanity check (model randomisation cascade) on EfficientNet-Lite0 and the photos."""
    quick = ctx.quick
    names, x = ctx.photos
    k = 1 if quick else 2
    layers = ["classifier", "blocks.6"] if quick else ["classifier", "conv_head", "blocks.6", "blocks.4"]
    t1 = time.perf_counter()
    s = sanity_check(
        ctx.effnet,
        x[:k],
        SANITY_METHODS[:3] if quick else SANITY_METHODS,
        layers=layers,
        progress=lambda d, t: ctx.progress("trust: sanity check", d, t),
    )
    sec.text(SANITY_INTRO)
    header, rows = sanity_rows(s)
    sec.table(
        rows,
        header=header,
        caption=f"Mean Spearman ρ over {k} photo(s) ({', '.join(names[:k])}) after "
        "re-initialising every layer from the top down to the one named "
        f"({round(time.perf_counter() - t1, 1)} s).",
    )
    sec.figure(
        cascade_figure(s, names[:k]),
        "ρ per cascade step: the line is the mean, dots are the photos.",
        name="trust-cascade",
    )
    sec.figure(
        randomization_figure(x[0], s.results, 0),
        f"The maps along the cascade on {names[0]}.",
        name="trust-cascade-maps",
    )
    sec.data("sanity_check", s.to_dict())
