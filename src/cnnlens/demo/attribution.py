"""The demo's attribution section: every method on EfficientNet-Lite0's photos and the digits CNN, with a short
lesson per method and the faithfulness numbers next to each map.
"""

from __future__ import annotations

import html
import time

import torch

from ..attribution.explain import run_methods, score_all
from ..attribution.report import FAITH_INTRO, GUIDED_NOTE, faith_table, method_note, summary
from ..figures.attribution import GUIDED, augmented_figure, curves_figure, method_figure
from ..registry import intro_of, title_of
from ..results import Explanation


def _section_methods(
    report,
    title: str,
    intro: str,
    model,
    x: torch.Tensor,
    names: list[str],
    methods: list[str],
    settings: dict,
    ctx,
    steps: int,
    what: str,
    class_names=None,
    curves_for: int | None = 0,
    baseline: str = "blur",
):
    t0 = time.perf_counter()
    expls = run_methods(
        model, x, methods, settings=settings, progress=lambda m, d, t: ctx.progress(f"attribution: {what}", d, 2 * t)
    )
    faith = score_all(
        model,
        x,
        expls,
        steps=steps,
        baseline=baseline,
        progress=lambda m, d, t: ctx.progress(f"attribution: {what}", t + d, 2 * t),
    )
    ctx.progress(f"attribution: {what}", 1, 1)
    shown = {k: (v if isinstance(v, dict) else {}) for k, v in settings.items()}
    sec = report.section(
        title,
        intro=intro,
        settings={
            "methods": ", ".join(title_of(m) for m in methods),
            "target": "the predicted class",
            "faithfulness": f"deletion/insertion, {steps} steps, {'blurred' if baseline == 'blur' else baseline} "
            "baseline, softmax probability",
            **{title_of(k): ", ".join(f"{a}={b}" for a, b in v.items()) for k, v in shown.items() if v},
            "seconds (maps and faithfulness)": round(time.perf_counter() - t0, 1),
        },
    )
    for m in methods:
        e = expls[m]
        sec.text(f"<h3>{title_of(m)}</h3><p>{intro_of(m)}</p>")
        if not isinstance(e, Explanation):
            sec.text(f"<p><i>Does not apply to this model: {html.escape(str(e))}</i></p>")
            continue
        extra = "probability" if m == "occlusion" and "probability" in e.extras else None
        sec.figure(
            method_figure(x, names, e, faith.get(m), class_names, extra=extra),
            f"{title_of(m)} on {what} — under each map: deletion AUC (↓) · insertion AUC (↑).",
            name=f"attribution-{what}-{m}",
        )
        note = method_note(m, e)
        if note:
            sec.text(note)
        if m in GUIDED:
            sec.text(GUIDED_NOTE)
        sec.data(m, {n: summary(e, faith.get(m), i) for i, n in enumerate(names)})
    rows, header = faith_table(faith, names)
    sec.text(f"<h3>Faithfulness</h3><p>{FAITH_INTRO}</p>")
    sec.table(
        rows,
        header=header,
        caption="Area under the deletion / insertion curve per image; "
        "deletion: lower is better, insertion: higher is better.",
    )
    if curves_for is not None and faith:
        sec.figure(
            curves_figure(faith, curves_for, names[curves_for]),
            f"Deletion and insertion curves, {names[curves_for]}.",
            name=f"attribution-{what}-curves",
        )
    return sec, expls, faith


def demo_section(report, ctx) -> None:
    """Attribution in the demo: every method on EfficientNet-Lite0 (photos) and the digits CNN, with faithfulness."""
    quick = ctx.quick
    names, x = ctx.photos
    if quick:
        names, x = names[:2], x[:2]
    model = ctx.effnet
    classes = getattr(model.spec, "class_names", None)
    if quick:
        methods = ["saliency", "occlusion", "cam", "gradcam", "augmented_gradcam"]
        settings = {"occlusion": {"window": 56, "stride": 56}, "augmented_gradcam": {"augmentations": 4, "steps": 10}}
        steps = 4
    else:
        # SmoothGrad and Integrated Gradients run on the digits below
        methods = [
            "saliency",
            "occlusion",
            "cam",
            "gradcam",
            "gradcam_pp",
            "guided_backprop",
            "guided_gradcam",
            "augmented_gradcam",
        ]
        settings = {
            "occlusion": {"window": 56, "stride": 28},
            "augmented_gradcam": {"augmentations": 24, "steps": 100, "size": 56},
        }
        steps = 8
    intro = (
        "Why did the network predict this class? Each method below turns one prediction into a map over the "
        "pixels. They answer different questions — how sensitive the score is to each pixel (gradients), what "
        "happens when a region is hidden (occlusion), which part of the last feature map the class reads "
        "(CAM family) — and they are not equally trustworthy, so each map carries two faithfulness numbers "
        "(explained at the end of the section). Settings are reduced for the demo's time budget; they are "
        "listed below and in results.json."
    )
    sec, expls, faith = _section_methods(
        report,
        "Explaining a prediction: EfficientNet-Lite0",
        intro,
        model,
        x,
        names,
        methods,
        settings,
        ctx,
        steps,
        "photos",
        classes,
    )
    # augmented vs plain Grad-CAM, side by side
    e = expls.get("augmented_gradcam")
    if isinstance(e, Explanation):
        sec.figure(
            augmented_figure(x, names, e),
            "Grad-CAM (left of each pair) and augmented Grad-CAM (right), with the objective per step.",
            name="attribution-augmented",
        )
    # the model-randomisation check (Adebayo et al.) runs in "How far to trust each map" (cnnlens.metrics.report)
    sec.text(
        "<p>How far each of these maps can be trusted — a leaderboard on a data set where the evidence is "
        "known, and the model-randomisation sanity check on this network — is the next section, "
        "“How far to trust each map”.</p>"
    )
    _digits_section(report, ctx)


def _digits_section(report, ctx) -> None:
    model = ctx.digits_model
    ds = ctx.digits_data
    k = 3 if ctx.quick else 6
    idx = list(range(0, len(ds), max(1, len(ds) // k)))[:k]
    x = torch.stack([torch.as_tensor(ds[i][0]) for i in idx]).to(ctx.device)
    labels = [int(ds[i][1]) for i in idx]
    names = [f"#{i} (label {y})" for i, y in zip(idx, labels, strict=True)]
    methods = ["saliency", "occlusion", "cam", "gradcam", "guided_backprop"]
    if not ctx.quick:
        methods[1:1] = ["smoothgrad", "integrated_gradients"]
        methods.append("augmented_gradcam")
    settings = {
        "smoothgrad": {"n": 16, "sigma": 0.15},
        "occlusion": {"window": 8, "stride": 4, "fill": "black"},
        "integrated_gradients": {"steps": 32},
        "augmented_gradcam": {"augmentations": 32, "steps": 100},
    }
    intro = (
        "The same methods on the small digits CNN (conv + ReLU + max-pool blocks, then global average pooling "
        "and a linear layer, so CAM applies exactly). Its last feature map is 8×8 for a 32×32 input. The digits "
        "are white strokes on black, so here occlusion and the faithfulness curves remove ink: the patch and "
        "the deleted pixels are black."
    )
    _section_methods(
        report,
        "Explaining a prediction: digits CNN",
        intro,
        model,
        x,
        names,
        methods,
        {m: settings[m] for m in methods if m in settings},
        ctx,
        8 if ctx.quick else 16,
        "digits",
        getattr(model.spec, "class_names", None),
        baseline="black",
    )
