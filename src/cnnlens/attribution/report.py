"""Report sections and the demo section for attribution (the figures: :mod:`cnnlens.figures.attribution`).

Shared by ``cnnlens explain`` (one section per image) and ``cnnlens demo``
(every method on EfficientNet-Lite0 and the digits CNN, with a short lesson per
method and the faithfulness numbers next to each map).
"""

from __future__ import annotations

import html
import logging
import time
from typing import Any, Callable, Sequence

import torch

from ..figures.attribution import GUIDED, augmented_figure, curves_figure, method_figure
from ..registry import intro_of, method_info, title_of
from ..results import Explanation
from .faithfulness import Faithfulness, faithfulness

log = logging.getLogger(__name__)


FAITH_INTRO = (
    "<b>How faithful is a map?</b> <i>Deletion</i> (Petsiuk et al. 2018): replace the pixels by a blurred copy in "
    "order of importance and re-score; a map that found what the model uses makes the class probability fall fast "
    "(low area under the curve). <i>Insertion</i>: start from the blurred image and put the pixels back in the same "
    "order (high area = faithful). <i>Model randomisation</i> (Adebayo et al. 2018): re-initialise the layers of a "
    "copy of the model from the top down and rank-correlate (Spearman) each map with the trained model's: a map "
    "that explains the model must change when its weights do.")


def run_methods(model, x: torch.Tensor, methods: Sequence[str], target: Any = "predicted", *,
                layer: Any = None, settings: dict | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> dict[str, Explanation | Exception]:
    """Run each method on the batch; a method that does not apply (ValueError) is kept as its error."""
    out: dict[str, Explanation | Exception] = {}
    for i, name in enumerate(methods):
        info = method_info(name)
        fn = info.fn
        kw = dict((settings or {}).get(name, {}))
        if layer is not None and info.layered:
            kw.setdefault("layer", layer)
        if progress:
            progress(name, i, len(methods))
        t0 = time.perf_counter()
        try:
            out[name] = fn(model, x, target=target, **kw)
        except ValueError as e:
            log.warning("%s does not apply: %s", name, e)
            out[name] = e
        except (TypeError, AssertionError, NotImplementedError) as e:
            if not name.startswith("captum:"):
                raise
            log.warning("%s does not apply: %s", name, e)  # Captum refuses a layer type, an argument, ...
            out[name] = ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__)
        else:
            out[name].extras["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def score_all(model, x: torch.Tensor, expls: dict, *, steps: int = 16, baseline: Any = "blur",
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, Faithfulness]:
    """Deletion and insertion curves of every explanation that ran."""
    out = {}
    ok = [(k, e) for k, e in expls.items() if isinstance(e, Explanation)]
    for i, (name, e) in enumerate(ok):
        if progress:
            progress(name, i, len(ok))
        out[name] = faithfulness(model, x, e, steps=steps, baseline=baseline)
    return out


GUIDED_NOTE = (
    "<p class=\"note\"><b>⚠ Sanity check.</b> Guided backprop barely changes when the network's top layers are "
    "re-initialised (Adebayo et al. 2018, “Sanity checks for saliency maps”; reproduced on EfficientNet-Lite0 in "
    "“How far to trust each map”, ρ ≈ 1 with the trained map): much of what it shows is image structure — edges "
    "passed through the ReLU masks — rather than what the model uses. Guided Grad-CAM inherits that detail; only "
    "its envelope, the Grad-CAM factor, depends on the model. Read the fine structure of both as a sharpened "
    "picture of the input, not as evidence for the class.</p>")


def faith_table(faith: dict, names: Sequence[str]) -> tuple[list[list[Any]], list[str]]:
    header = ["method"] + [f"{n} del / ins" for n in names] + ["mean deletion AUC ↓", "mean insertion AUC ↑"]
    rows = []
    for k, f in faith.items():
        cells = [f"{float(f.deletion_auc[i]):.3f} / {float(f.insertion_auc[i]):.3f}" for i in range(len(names))]
        rows.append([title_of(k)] + cells + [round(float(f.deletion_auc.mean()), 4),
                                                   round(float(f.insertion_auc.mean()), 4)])
    return rows, header


def summary(e: Explanation, f: Faithfulness | None, i: int) -> dict:
    d = {"method": e.method, "class": int(e.classes[i]), "layer": e.layer, "settings": e.settings}
    if f is not None:
        d["deletion_auc"] = float(f.deletion_auc[i])
        d["insertion_auc"] = float(f.insertion_auc[i])
    if "completeness_gap" in e.extras:
        d["completeness_gap"] = float(e.extras["completeness_gap"][i])
    if e.extras.get("completeness_note"):
        d["completeness"] = e.extras["completeness_note"]
    return d


# -- the demo -------------------------------------------------------------------------------------


def _section_methods(report, title: str, intro: str, model, x: torch.Tensor, names: list[str], methods: list[str],
                     settings: dict, ctx, steps: int, what: str, class_names=None, curves_for: int | None = 0,
                     baseline: str = "blur"):
    t0 = time.perf_counter()
    expls = run_methods(model, x, methods, settings=settings,
                        progress=lambda m, d, t: ctx.progress(f"attribution: {what}", d, 2 * t))
    faith = score_all(model, x, expls, steps=steps, baseline=baseline,
                      progress=lambda m, d, t: ctx.progress(f"attribution: {what}", t + d, 2 * t))
    ctx.progress(f"attribution: {what}", 1, 1)
    shown = {k: (v if isinstance(v, dict) else {}) for k, v in settings.items()}
    sec = report.section(title, intro=intro, settings={
        "methods": ", ".join(title_of(m) for m in methods), "target": "the predicted class",
        "faithfulness": f"deletion/insertion, {steps} steps, {'blurred' if baseline == 'blur' else baseline} "
                        "baseline, softmax probability",
        **{title_of(k): ", ".join(f"{a}={b}" for a, b in v.items()) for k, v in shown.items() if v},
        "seconds (maps and faithfulness)": round(time.perf_counter() - t0, 1)})
    for m in methods:
        e = expls[m]
        sec.text(f"<h3>{title_of(m)}</h3><p>{intro_of(m)}</p>")
        if not isinstance(e, Explanation):
            sec.text(f"<p><i>Does not apply to this model: {html.escape(str(e))}</i></p>")
            continue
        extra = "probability" if m == "occlusion" and "probability" in e.extras else None
        sec.figure(method_figure(x, names, e, faith.get(m), class_names, extra=extra),
                   f"{title_of(m)} on {what} — under each map: deletion AUC (↓) · insertion AUC (↑).",
                   name=f"attribution-{what}-{m}")
        note = method_note(m, e)
        if note:
            sec.text(note)
        if m in GUIDED:
            sec.text(GUIDED_NOTE)
        sec.data(m, {n: summary(e, faith.get(m), i) for i, n in enumerate(names)})
    rows, header = faith_table(faith, names)
    sec.text(f"<h3>Faithfulness</h3><p>{FAITH_INTRO}</p>")
    sec.table(rows, header=header, caption="Area under the deletion / insertion curve per image; "
                                           "deletion: lower is better, insertion: higher is better.")
    if curves_for is not None and faith:
        sec.figure(curves_figure(faith, curves_for, names[curves_for]), f"Deletion and insertion curves, {names[curves_for]}.",
                   name=f"attribution-{what}-curves")
    return sec, expls, faith


def method_note(m: str, e: Explanation) -> str:
    """The paragraph under a method's maps: the completeness warning, if any, and what the method ran with."""
    return completeness_html(e) + _method_note(m, e)


def completeness_html(e: Explanation) -> str:
    """The completeness warning as a paragraph (empty when the attributions add up or were not checked)."""
    from .completeness import incomplete_note

    warn = incomplete_note(e.extras)
    if not warn:
        return ""
    gap = e.extras["completeness_gap"]
    worst = float(gap.max())
    return (f"<p class=\"warning\"><b>⚠ {html.escape(warn)}</b>: Σ attributions misses what the method promises "
            f"by {'an unbounded amount' if worst == float('inf') else f'{worst:.1%}'} "
            f"(tolerance {e.extras['completeness_tolerance']:.0%}).</p>")


def _method_note(m: str, e: Explanation) -> str:
    if m == "integrated_gradients":
        gap = e.extras["completeness_gap"].abs()
        tot = (e.extras["score"] - e.extras["baseline_score"]).abs()
        return (f"<p>Completeness: Σ attributions − (S(x) − S(x')) is at most {float(gap.max()):.3g} "
                f"(|S(x) − S(x')| up to {float(tot.max()):.3g}) with {e.settings['steps']} steps.</p>")
    if m == "cam" and e.raw is not None:
        return (f"<p>Check: the mean of each raw {e.raw.shape[-2]}×{e.raw.shape[-1]} map equals its score minus "
                f"the bias to within {float((e.raw.mean((1, 2)) - (e.extras['score'] - e.extras['bias'])).abs().max()):.2g}.</p>")
    if m == "occlusion":
        s = e.settings
        how = ("recomputing only each layer's region the square reaches (incremental inference; the same values as "
               "running the whole model per position)" if s.get("path") == "incremental" else
               f"running the whole model per position ({html.escape(str(s.get('full_reason') or 'full re-inference'))})")
        return (f"<p>{s['positions'][0]}×{s['positions'][1]} positions of a square of {s['window'][0]}×{s['window'][1]} "
                f"pixels, stride {s['stride'][0]}, fill {html.escape(str(s['fill']))}: computed by {how}.</p>")
    if m == "augmented_gradcam":
        s = e.settings
        return (f"<p>Solved on a {s['size'][0]}×{s['size'][1]} grid from {s['augmentations']} augmentations "
                f"(±{s['max_angle']}°, ±{s['max_shift']:.0%} shifts) of the {s['grid'][0]}×{s['grid'][1]} Grad-CAM; "
                f"λ = {s['lam']:.3g}, μ = {s['mu']:.3g}, {s['steps']} Adam steps.</p>")
    return ""


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
        methods = ["saliency", "occlusion", "cam", "gradcam", "gradcam_pp", "guided_backprop", "guided_gradcam",
                   "augmented_gradcam"]
        settings = {"occlusion": {"window": 56, "stride": 28},
                    "augmented_gradcam": {"augmentations": 24, "steps": 100, "size": 56}}
        steps = 8
    intro = ("Why did the network predict this class? Each method below turns one prediction into a map over the "
             "pixels. They answer different questions — how sensitive the score is to each pixel (gradients), what "
             "happens when a region is hidden (occlusion), which part of the last feature map the class reads "
             "(CAM family) — and they are not equally trustworthy, so each map carries two faithfulness numbers "
             "(explained at the end of the section). Settings are reduced for the demo's time budget; they are "
             "listed below and in results.json.")
    sec, expls, faith = _section_methods(report, "Explaining a prediction: EfficientNet-Lite0", intro, model, x, names,
                                         methods, settings, ctx, steps, "photos", classes)
    # augmented vs plain Grad-CAM, side by side
    e = expls.get("augmented_gradcam")
    if isinstance(e, Explanation):
        sec.figure(augmented_figure(x, names, e), "Grad-CAM (left of each pair) and augmented Grad-CAM (right), "
                                                   "with the objective per step.", name="attribution-augmented")
    # the model-randomisation check (Adebayo et al.) runs in "How far to trust each map" (cnnlens.metrics.report)
    sec.text("<p>How far each of these maps can be trusted — a leaderboard on a data set where the evidence is "
             "known, and the model-randomisation sanity check on this network — is the next section, "
             "“How far to trust each map”.</p>")
    _digits_section(report, ctx)


def _digits_section(report, ctx) -> None:
    model = ctx.digits_model
    ds = ctx.digits_data
    k = 3 if ctx.quick else 6
    idx = list(range(0, len(ds), max(1, len(ds) // k)))[:k]
    x = torch.stack([torch.as_tensor(ds[i][0]) for i in idx]).to(ctx.device)
    labels = [int(ds[i][1]) for i in idx]
    names = [f"#{i} (label {y})" for i, y in zip(idx, labels)]
    methods = ["saliency", "occlusion", "cam", "gradcam", "guided_backprop"]
    if not ctx.quick:
        methods[1:1] = ["smoothgrad", "integrated_gradients"]
        methods.append("augmented_gradcam")
    settings = {"smoothgrad": {"n": 16, "sigma": 0.15}, "occlusion": {"window": 8, "stride": 4, "fill": "black"},
                "integrated_gradients": {"steps": 32}, "augmented_gradcam": {"augmentations": 32, "steps": 100}}
    intro = ("The same methods on the small digits CNN (conv + ReLU + max-pool blocks, then global average pooling "
             "and a linear layer, so CAM applies exactly). Its last feature map is 8×8 for a 32×32 input. The digits "
             "are white strokes on black, so here occlusion and the faithfulness curves remove ink: the patch and "
             "the deleted pixels are black.")
    _section_methods(report, "Explaining a prediction: digits CNN", intro, model, x, names, methods,
                     {m: settings[m] for m in methods if m in settings}, ctx, 8 if ctx.quick else 16, "digits",
                     getattr(model.spec, "class_names", None), baseline="black")
