"""Figures, report sections and the demo section for attribution.

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

from ..results import Explanation
from .faithfulness import Faithfulness, faithfulness
from ..registry import lookup, method_info

log = logging.getLogger(__name__)


def title_of(method: str) -> str:
    """The display name of a method (``captum:DeepLift`` → ``DeepLift (Captum)``)."""
    m = lookup(method)
    return m.title if m else method


def intro_of(method: str) -> str:
    """The lesson shown above a method's maps (a short line for a bridged Captum class)."""
    m = lookup(method)
    return m.intro if m else ""


def is_signed(method: str) -> bool:
    """Whether a map's sign means something (a diverging colour map centred at 0)."""
    m = lookup(method)
    return bool(m and m.signed)


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


#: the methods that fail Adebayo et al.'s sanity check; every map of theirs in a report carries a note
GUIDED = ("guided_backprop", "guided_gradcam")
GUIDED_MARK = "⚠ fails the sanity check"
GUIDED_NOTE = (
    "<p class=\"note\"><b>⚠ Sanity check.</b> Guided backprop barely changes when the network's top layers are "
    "re-initialised (Adebayo et al. 2018, “Sanity checks for saliency maps”; reproduced on EfficientNet-Lite0 in "
    "“How far to trust each map”, ρ ≈ 1 with the trained map): much of what it shows is image structure — edges "
    "passed through the ReLU masks — rather than what the model uses. Guided Grad-CAM inherits that detail; only "
    "its envelope, the Grad-CAM factor, depends on the model. Read the fine structure of both as a sharpened "
    "picture of the input, not as evidence for the class.</p>")


def guided_mark(ax, method: str) -> None:
    """Write the sanity-check warning under a guided map's axes (nothing for other methods)."""
    if method in GUIDED:
        ax.text(0.5, -0.04, GUIDED_MARK, transform=ax.transAxes, ha="center", va="top", fontsize=7,
                color="#b35900")


def completeness_mark(ax, e: Explanation) -> None:
    """Add the completeness warning to the title of a map whose attributions do not add up to the score."""
    from .completeness import MARK, incomplete_note

    if incomplete_note(e.extras):
        ax.set_title(f"{ax.get_title()}\n{MARK}".lstrip("\n"), fontsize=ax.title.get_fontsize(), color="#b00020")


def _heat(e: Explanation, i: int, shared: bool) -> tuple[torch.Tensor, bool]:
    m = e.maps[i].float()
    signed = is_signed(e.method)  # by the kind of map, never per image
    info = lookup(e.method)
    if info and info.clipped and m.numel() > 1:
        q = float(torch.quantile(m.abs().flatten(), 0.995))
        if q > 0:
            m = m.clamp(-q, q)
    if shared:
        scale = float(m.abs().max())
        m = m / scale if scale > 0 else m
    return m, signed


def overlay_figure(image: torch.Tensor, e: Explanation, i: int, *, title: str = "", shared: bool = False):
    """One map over its image with a colour bar (values in the method's units, or [0, 1]/[−1, 1] if shared)."""
    from ..viz import overlay, subplots

    fig, ax = subplots(figsize=(3.4, 3.0))
    m, signed = _heat(e, i, shared)
    kw = {"vmin": 0.0, "vmax": 1.0} if shared and not signed else {}
    overlay(ax, image, m, title=title or title_of(e.method), diverging=signed, label=_unit(e, shared),
            **kw)
    guided_mark(ax, e.method)
    completeness_mark(ax, e)
    fig.tight_layout()
    return fig


def grid_figure(image: torch.Tensor, name: str, expls: dict, i: int, faith: dict | None = None, *,
                shared: bool = False, caption_top: str = ""):
    """The original and every map side by side, each with its colour bar and deletion/insertion AUC."""
    from ..viz import overlay, show_image, subplots

    ok = [(k, e) for k, e in expls.items() if isinstance(e, Explanation)]
    n = len(ok) + 1
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = subplots(rows, cols, figsize=(3.3 * cols, 3.2 * rows), squeeze=False)
    show_image(axes[0, 0], image, f"{name}\n{caption_top}" if caption_top else name)
    for j, (k, e) in enumerate(ok, start=1):
        ax = axes.flat[j]
        m, signed = _heat(e, i, shared)
        t = title_of(k)
        if faith and k in faith:
            f = faith[k]
            t += f"\ndel {float(f.deletion_auc[i]):.3f} · ins {float(f.insertion_auc[i]):.3f}"
        kw = {"vmin": 0.0, "vmax": 1.0} if shared and not signed else {}
        overlay(ax, image, m, title=t, diverging=signed, label=_unit(e, shared), **kw)
        guided_mark(ax, e.method)
        completeness_mark(ax, e)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def images_by_methods_figure(images: torch.Tensor, names: Sequence[str], expls: dict, faith: dict | None = None, *,
                             rows: Sequence[int] | None = None, shared: bool = False,
                             class_names: Sequence[str] | None = None):
    """A grid: one row per image (the image with its explained class), one column per method (the map over the
    image, its colour bar with units, deletion/insertion AUC); occlusion adds its probability map."""
    from ..viz import overlay, show_image, subplots

    ok = [(k, e) for k, e in expls.items() if isinstance(e, Explanation)]
    rows = list(range(len(names))) if rows is None else list(rows)
    cols = [("image", None)] + [(k, e) for k, e in ok]
    if any(k == "occlusion" and "probability" in e.extras for k, e in ok):
        cols.append(("probability", dict(ok)["occlusion"]))
    fig, axes = subplots(len(rows), len(cols), figsize=(3.1 * len(cols), 3.0 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        for c, (k, e) in enumerate(cols):
            ax = axes[r, c]
            if k == "image":
                cls = int(ok[0][1].classes[i]) if ok else -1
                cname = class_names[cls] if class_names and 0 <= cls < len(class_names) else str(cls)
                show_image(ax, images[i], f"{names[i]}\nexplained: {_short(cname, 24)}")
            elif k == "probability":
                probability_panel(ax, e, i)
            else:
                m, signed = _heat(e, i, shared)
                t = title_of(k)
                if faith and k in faith:
                    t += f"\ndel {float(faith[k].deletion_auc[i]):.3f} · ins {float(faith[k].insertion_auc[i]):.3f}"
                kw = {"vmin": 0.0, "vmax": 1.0} if shared and not signed else {}
                overlay(ax, images[i], m, title=t, diverging=signed, label=_unit(e, shared), **kw)
    fig.tight_layout()
    return fig


def method_figure(images: torch.Tensor, names: Sequence[str], e: Explanation, faith: Faithfulness | None = None,
                  class_names: Sequence[str] | None = None, extra: str | None = None):
    """One method across several images: overlay + colour bar, the class and the AUCs in each title.

    ``extra="probability"`` adds a row with the occlusion probability map.
    """
    from ..viz import overlay, subplots

    n = len(names)
    rows = 2 if extra else 1
    fig, axes = subplots(rows, n, figsize=(3.2 * n, 3.0 * rows), squeeze=False)
    for i in range(n):
        m, signed = _heat(e, i, False)
        c = int(e.classes[i])
        cname = class_names[c] if class_names and 0 <= c < len(class_names) else str(c)
        t = f"{names[i]}: {_short(cname)}"
        if faith is not None:
            t += f"\ndel {float(faith.deletion_auc[i]):.3f} · ins {float(faith.insertion_auc[i]):.3f}"
        overlay(axes[0, i], images[i], m, title=t, diverging=signed, label=_unit(e, False))
        guided_mark(axes[0, i], e.method)
        completeness_mark(axes[0, i], e)
        if extra == "probability":
            probability_panel(axes[1, i], e, i)
    fig.tight_layout()
    return fig


def _unit(e: Explanation, shared: bool) -> str:
    return "fraction of the largest |value|" if shared else (lookup(e.method).unit if lookup(e.method) else "attribution")


def probability_panel(ax, e: Explanation, i: int) -> None:
    """Occlusion's probability map: P(class) with the square at each position (sequential map, 0 to 1)."""
    from ..viz import SEQUENTIAL

    prob = e.extras["probability"][i].float()
    im = ax.imshow(prob.numpy(), cmap=SEQUENTIAL, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title("occlusion: P(class) with\nthe square at each position", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cb.set_label("probability", fontsize=7)
    cb.ax.tick_params(labelsize=7)


def curves_figure(faith: dict, i: int, name: str):
    """Deletion and insertion curves of every method for image i."""
    from ..viz import subplots

    fig, (a, b) = subplots(1, 2, figsize=(9, 3.2))
    for k, f in faith.items():
        a.plot(f.deletion.fractions, f.deletion.scores[i], label=f"{title_of(k)} ({float(f.deletion_auc[i]):.3f})")
        b.plot(f.insertion.fractions, f.insertion.scores[i], label=f"{title_of(k)} ({float(f.insertion_auc[i]):.3f})")
    for ax, t in ((a, "deletion (lower is better)"), (b, "insertion (higher is better)")):
        ax.set_title(f"{name}: {t}", fontsize=9)
        ax.set_xlabel("fraction of pixels removed" if ax is a else "fraction of pixels inserted", fontsize=8)
        ax.set_ylabel("class probability", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def randomization_figure(image: torch.Tensor, results: dict, i: int = 0):
    """Maps of each method as the layers are re-initialised from the top down (with ρ in each title)."""
    from ..viz import overlay, subplots

    rows = len(results)
    cols = 1 + max(len(r.layers) for r in results.values())
    fig, axes = subplots(rows, cols, figsize=(2.5 * cols, 2.5 * rows), squeeze=False)
    for r_i, (k, r) in enumerate(results.items()):
        overlay(axes[r_i, 0], image, r.original[i], title=f"{title_of(k)}\ntrained", colorbar=False)
        guided_mark(axes[r_i, 0], k)
        for j, layer in enumerate(r.layers):
            rho = float(r.correlations[j, i])
            overlay(axes[r_i, j + 1], image, r.maps[j, i], colorbar=False,
                    title=f"down to {_short(layer, 16)}\nρ = {rho:.2f}" if rho == rho else f"down to {_short(layer, 16)}\nρ undefined")
        for ax in axes[r_i, len(r.layers) + 1:]:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def _short(s: str, n: int = 18) -> str:
    s = str(s).split(",")[0]
    return s if len(s) <= n else s[: n - 1] + "…"


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
        sec.figure(_augmented_figure(x, names, e), "Grad-CAM (left of each pair) and augmented Grad-CAM (right), "
                                                   "with the objective per step.", name="attribution-augmented")
    # the model-randomisation check (Adebayo et al.) runs in "How far to trust each map" (cnnlens.metrics.report)
    sec.text("<p>How far each of these maps can be trusted — a leaderboard on a data set where the evidence is "
             "known, and the model-randomisation sanity check on this network — is the next section, "
             "“How far to trust each map”.</p>")
    _digits_section(report, ctx)


def _augmented_figure(x, names, e: Explanation):
    from ..viz import overlay, subplots

    n = len(names)
    fig, axes = subplots(1, 2 * n + 1, figsize=(2.3 * (2 * n + 1), 2.5), squeeze=False)
    for i in range(n):
        overlay(axes[0, 2 * i], x[i], e.extras["single"][i], title=f"{names[i]}\nGrad-CAM", colorbar=False)
        overlay(axes[0, 2 * i + 1], x[i], e.maps[i], title="augmented", colorbar=False)
    ax = axes[0, -1]
    for i in range(n):
        ax.plot(e.extras["objective"][i].numpy(), lw=1)
    ax.set_title("objective", fontsize=8)
    ax.set_xlabel("step", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


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
