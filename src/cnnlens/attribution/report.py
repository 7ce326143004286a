"""Attribution in the report: :func:`add_explain_section` (an :class:`~cnnlens.attribution.explain.ExplainRun`
as a section and per-image files), the lessons, notes and tables of a section.

Shared by ``cnnlens explain`` and the demo (:mod:`cnnlens.demo.attribution`); the figures are
:mod:`cnnlens.figures.attribution`; running and scoring the methods is :mod:`cnnlens.attribution.explain`.
"""

from __future__ import annotations

import html
import io
import json
import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..figures.attribution import GUIDED, class_means_figure, grid_figure, images_by_methods_figure, overlay_figure
from ..figures.evaluation import topk_figure
from ..registry import intro_of, lookup, title_of
from ..report import png_bytes, show_setting
from ..results import Explanation
from ..viz import show_image, subplots
from .completeness import incomplete_note
from .explain import ExplainRun
from .faithfulness import Faithfulness

log = logging.getLogger(__name__)


FAITH_INTRO = (
    "<b>How faithful is a map?</b> <i>Deletion</i> (Petsiuk et al. 2018): replace the pixels by a blurred copy in "
    "order of importance and re-score; a map that found what the model uses makes the class probability fall fast "
    "(low area under the curve). <i>Insertion</i>: start from the blurred image and put the pixels back in the same "
    "order (high area = faithful). <i>Model randomisation</i> (Adebayo et al. 2018): re-initialise the layers of a "
    "copy of the model from the top down and rank-correlate (Spearman) each map with the trained model's: a map "
    "that explains the model must change when its weights do."
)


GUIDED_NOTE = (
    '<p class="note"><b>⚠ Sanity check.</b> Guided backprop barely changes when the network\'s top layers are '
    "re-initialised (Adebayo et al. 2018, “Sanity checks for saliency maps”; reproduced on EfficientNet-Lite0 in "
    "“How far to trust each map”, ρ ≈ 1 with the trained map): much of what it shows is image structure — edges "
    "passed through the ReLU masks — rather than what the model uses. Guided Grad-CAM inherits that detail; only "
    "its envelope, the Grad-CAM factor, depends on the model. Read the fine structure of both as a sharpened "
    "picture of the input, not as evidence for the class.</p>"
)


def faith_table(faith: dict, names: Sequence[str]) -> tuple[list[list[Any]], list[str]]:
    header = ["method"] + [f"{n} del / ins" for n in names] + ["mean deletion AUC ↓", "mean insertion AUC ↑"]
    rows = []
    for k, f in faith.items():
        cells = [f"{float(f.deletion_auc[i]):.3f} / {float(f.insertion_auc[i]):.3f}" for i in range(len(names))]
        rows.append(
            [title_of(k)] + cells + [round(float(f.deletion_auc.mean()), 4), round(float(f.insertion_auc.mean()), 4)]
        )
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


def method_note(m: str, e: Explanation) -> str:
    """The paragraph under a method's maps: the completeness warning, if any, and what the method ran with."""
    return completeness_html(e) + _method_note(m, e)


def completeness_html(e: Explanation) -> str:
    """The completeness warning as a paragraph (empty when the attributions add up or were not checked)."""
    warn = incomplete_note(e.extras)
    if not warn:
        return ""
    gap = e.extras["completeness_gap"]
    worst = float(gap.max())
    return (
        f'<p class="warning"><b>⚠ {html.escape(warn)}</b>: Σ attributions misses what the method promises '
        f"by {'an unbounded amount' if worst == float('inf') else f'{worst:.1%}'} "
        f"(tolerance {e.extras['completeness_tolerance']:.0%}).</p>"
    )


def _method_note(m: str, e: Explanation) -> str:
    if m == "integrated_gradients":
        gap = e.extras["completeness_gap"].abs()
        tot = (e.extras["score"] - e.extras["baseline_score"]).abs()
        return (
            f"<p>Completeness: Σ attributions − (S(x) − S(x')) is at most {float(gap.max()):.3g} "
            f"(|S(x) − S(x')| up to {float(tot.max()):.3g}) with {e.settings['steps']} steps.</p>"
        )
    if m == "cam" and e.raw is not None:
        return (
            f"<p>Check: the mean of each raw {e.raw.shape[-2]}×{e.raw.shape[-1]} map equals its score minus "
            "the bias to within "
            f"{float((e.raw.mean((1, 2)) - (e.extras['score'] - e.extras['bias'])).abs().max()):.2g}.</p>"
        )
    if m == "occlusion":
        s = e.settings
        how = (
            "recomputing only each layer's region the square reaches (incremental inference; the same values as "
            "running the whole model per position)"
            if s.get("path") == "incremental"
            else "running the whole model per position "
            f"({html.escape(str(s.get('full_reason') or 'full re-inference'))})"
        )
        return (
            f"<p>{s['positions'][0]}×{s['positions'][1]} positions of a square of {s['window'][0]}×{s['window'][1]} "
            f"pixels, stride {s['stride'][0]}, fill {html.escape(str(s['fill']))}: computed by {how}.</p>"
        )
    if m == "augmented_gradcam":
        s = e.settings
        return (
            f"<p>Solved on a {s['size'][0]}×{s['size'][1]} grid from {s['augmentations']} augmentations "
            f"(±{s['max_angle']}°, ±{s['max_shift']:.0%} shifts) of the {s['grid'][0]}×{s['grid'][1]} Grad-CAM; "
            f"λ = {s['lam']:.3g}, μ = {s['mu']:.3g}, {s['steps']} Adam steps.</p>"
        )
    return ""


def explain_intro(ok: dict, faithfulness: bool, n: int, baseline: str = "blur") -> str:
    """What the page shows, then one paragraph per method that ran (never a method that did not)."""
    head = (
        f"<p>Why did the model predict what it did? Each method below turns the prediction for each of the {n} "
        "image(s) into a map over the pixels; they answer different questions, so they are shown side by side.</p>"
    )
    body = "".join(f"<p>{intro_of(k)}</p>" + method_note(k, e) for k, e in ok.items())
    what = {"blur": "a blurred copy", "grey": "grey", "gray": "grey", "black": "black", "white": "white"}.get(
        str(baseline).strip().lower(), f"the value {baseline}"
    )
    text = (
        FAITH_INTRO.split(" <i>Model randomisation</i>")[0]
        .replace("by a blurred copy", f"by {what}")
        .replace("start from the blurred image", "start from the image with every pixel removed")
    )
    faith = f"<p>{text}</p>" if faithfulness else ""
    return head + body + faith


def explain_settings(
    model: str, target: str | None, chosen: list, ok: dict, layer, shared: bool, steps: int, baseline: str, n: int
) -> dict:
    """The settings that ran: the layer each CAM-family method read (named, also when chosen automatically),
    each method's own settings as it ran, the faithfulness curves."""
    out = {"model": model, "images": n, "target": target, "methods": ", ".join(title_of(k) for k in chosen)}
    layers = {k: e.layer for k, e in ok.items() if (m := lookup(k)) is not None and m.layered and e.layer}
    if layers:
        used = sorted(set(layers.values()))
        how = "given with --layer" if layer else "chosen automatically: the last spatial layer"
        out["layer"] = (
            used[0] if len(used) == 1 else ", ".join(f"{title_of(k)}: {v}" for k, v in layers.items())
        ) + f" ({how})"
    for k, e in ok.items():
        shown = {a: b for a, b in e.settings.items() if a not in ("layer",)}
        if shown:
            out[title_of(k)] = ", ".join(f"{a}={show_setting(b)}" for a, b in shown.items())
    out["scale"] = "shared (each map divided by its largest |value|)" if shared else "each map in its own units"
    out["faithfulness"] = f"deletion/insertion, {steps} steps, baseline {baseline}" if steps > 0 else "not computed"
    return out


def add_explain_section(
    report,
    run: ExplainRun,
    *,
    model: str = "model",
    shared: bool = False,
    sources: Sequence[str] | None = None,
    per_figure: int = 4,
):
    """``cnnlens explain``'s page for ``run``: one section (lessons, settings, the images × methods grids, class
    means, the deletion/insertion table, top-5 bars) and, per image, ``<name>/original.png``, ``<method>.png``,
    ``top5.png``, ``grid.png``, ``maps.pt`` and ``explanation.json``. Returns the section.

    >>> add_explain_section(cnnlens.report.Report("explain"), explain_images(model, x))   # doctest: +SKIP
    """
    st, ok, faith, x, names, n = run.settings, run.explanations, run.faithfulness, run.images, run.names, len(run)
    steps, baseline = st.get("faithfulness_steps", 0), st.get("baseline", "blur")
    class_names = run.class_names
    sec = report.section(
        "Explanations",
        intro=explain_intro(ok, steps > 0, n, baseline),
        settings=explain_settings(
            model, st.get("target"), st.get("methods", list(ok)), ok, st.get("layer"), shared, steps, baseline, n
        ),
    )
    for k, e in run.failures.items():
        sec.text(f"<p><i>{title_of(k)} skipped: {html.escape(str(e))}</i></p>")
    for part in range(0, n, per_figure):
        rows = list(range(part, min(n, part + per_figure)))
        fig = images_by_methods_figure(x, names, ok, faith, rows=rows, shared=shared, class_names=class_names)
        label = f"images {rows[0] + 1}–{rows[-1] + 1} of {n}" if n > per_figure else f"{n} image(s)"
        sec.figure(
            png_bytes(fig),
            f"One row per image ({label}), one column per method: each map over its image "
            "with its colour bar (signed maps: blue–white–red centred on 0; non-negative maps: one "
            "dark-to-bright scale)"
            + ("; under each title the deletion AUC (↓) and insertion AUC (↑)" if faith else "")
            + (". The last column is occlusion's probability map." if "occlusion" in ok else "."),
            name=f"explain-grid-{part // per_figure}",
        )
    if any(k in GUIDED for k in ok):
        sec.text(GUIDED_NOTE)
    if n > 1:
        fig, counts = class_means_figure(ok, class_names)
        sec.figure(
            png_bytes(fig),
            "Mean map per explained class (rows; the number of images in brackets) and "
            "method (columns): where the model looks on average for each class among these images.",
            name="explain-class-means",
        )
        sec.data("class_means", counts)
    if faith:
        _faithfulness_table(sec, run)
    sec.gallery(
        [(topk_figure(x[i], run.top.labels(i), name), name) for i, name in enumerate(names)],
        caption="Top-5 predictions of each image.",
        width=420,
    )
    for i in range(len(names)):
        _image_files(report, sec, run, i, shared, sources)
    return sec


def _faithfulness_table(sec, run: ExplainRun) -> None:
    """Deletion / insertion AUC per image and method, and their means, as a table of the section."""
    ok, faith, names, class_names, n = run.explanations, run.faithfulness, run.names, run.class_names, len(run)
    header = ["image", "explained class"] + [f"{title_of(k)} del / ins" for k in faith]
    table = []
    for i, name in enumerate(names):
        cls = int(next(iter(ok.values())).classes[i])
        table.append(
            [name, class_names[cls] if class_names and cls < len(class_names) else str(cls)]
            + [f"{float(f.deletion_auc[i]):.3f} / {float(f.insertion_auc[i]):.3f}" for f in faith.values()]
        )
    table.append(
        [f"mean over {n} image(s)", ""]
        + [f"{float(f.deletion_auc.mean()):.3f} / {float(f.insertion_auc.mean()):.3f}" for f in faith.values()]
    )
    sec.table(
        table,
        header=header,
        caption="Deletion AUC (lower is better) / insertion AUC (higher is better) "
        "per image and method; the last row is the mean over the images.",
    )


def _image_files(report, sec, run: ExplainRun, i: int, shared: bool, sources: Sequence[str] | None) -> None:
    """Image i's files (``<name>/``: grid, original, a map per method, top-5, maps.pt, explanation.json)
    and its data in the section."""
    ok, faith, x, name, class_names = run.explanations, run.faithfulness, run.images, run.names[i], run.class_names
    cls0 = int(next(iter(ok.values())).classes[i])
    cname = class_names[cls0] if class_names and cls0 < len(class_names) else str(cls0)
    grid = grid_figure(x[i], name, ok, i, faith, shared=shared, caption_top=f"explained: {cname}")
    report.file(f"{name}/grid.png", png_bytes(grid))
    fig, ax = subplots(figsize=(3, 3))
    show_image(ax, x[i], name)
    report.file(f"{name}/original.png", png_bytes(fig))
    for k, e in ok.items():
        report.file(f"{name}/{k.replace('_', '-')}.png", png_bytes(overlay_figure(x[i], e, i, shared=shared)))
    report.file(f"{name}/top5.png", png_bytes(topk_figure(x[i], run.top.labels(i), name)))
    buf = io.BytesIO()
    torch.save({k: e.maps[i].clone() for k, e in ok.items()}, buf)
    report.file(f"{name}/maps.pt", buf.getvalue())
    info = {
        "image": name,
        "source": sources[i] if sources is not None else name,
        "top5": [{"class": c, "probability": p} for c, p in run.top.labels(i)],
        "methods": {k: summary(e, faith.get(k), i) for k, e in ok.items()},
        "skipped": dict(run.failures),
    }
    report.file(f"{name}/explanation.json", json.dumps(info, indent=2, default=str))
    sec.data(name, info)
