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
from . import METHODS
from .faithfulness import Faithfulness, faithfulness, randomization_check

log = logging.getLogger(__name__)

TITLES = {
    "saliency": "Saliency", "smoothgrad": "SmoothGrad", "gradient_x_input": "Gradient × input",
    "integrated_gradients": "Integrated Gradients", "occlusion": "Occlusion", "cam": "CAM", "gradcam": "Grad-CAM",
    "gradcam_pp": "Grad-CAM++", "guided_backprop": "Guided backprop", "guided_gradcam": "Guided Grad-CAM",
    "augmented_gradcam": "Augmented Grad-CAM", "ablation_cam": "Ablation-CAM", "score_cam": "Score-CAM",
}

#: maps whose sign means something (drawn with a diverging colour map centred at 0)
SIGNED = {"cam", "occlusion", "integrated_gradients", "gradient_x_input"}
#: pixel-level gradient maps: a few extreme pixels would wash out the rest, so their display is clipped
#: at the 99.5th percentile of |value| (the numbers in results.json are not)
CLIPPED = {"saliency", "smoothgrad", "gradient_x_input", "integrated_gradients", "guided_backprop", "guided_gradcam"}

#: a short lesson per method (lectures 001–004), shown above its maps
INTROS = {
    "ablation_cam": (
        "<b>Ablation-CAM</b> (Desai &amp; Ramaswamy 2020): weigh each channel A<sub>k</sub> of the layer by how much "
        "the class score drops when the channel is set to zero, w<sub>k</sub> = (S<sub>c</sub> − "
        "S<sub>c</sub><sup>(k)</sup>)/S<sub>c</sub>, and draw ReLU(Σ<sub>k</sub> w<sub>k</sub> A<sub>k</sub>). No "
        "gradient. Before a global-average-pool + linear head the drop is exactly w<sub>k</sub><sup>c</sup> · "
        "mean(A<sub>k</sub>); elsewhere only the layers after the tapped one run again."),
    "score_cam": (
        "<b>Score-CAM</b> (Wang et al. 2020): mask the image with each channel's activation map (upsampled, scaled "
        "to [0, 1]), score each masked image, and weigh the channels by the softmax of those scores. No gradient; "
        "one forward per channel."),
    "saliency": (
        "<b>Saliency</b> (Simonyan et al. 2014): back-propagate the class score <i>before</i> the softmax, "
        "S<sub>c</sub>, to the pixels: M(i, j) = max<sub>channel</sub> |∂S<sub>c</sub>/∂x<sub>i,j</sub>|. "
        "Large values are pixels whose small change moves the score most. The pre-softmax score matters: the "
        "probability can also be raised by lowering the <i>other</i> classes' scores, which says nothing about "
        "this class. One forward and one backward pass: the quick check that the model looks at the object."),
    "smoothgrad": (
        "<b>SmoothGrad</b> (Smilkov et al. 2017): the saliency map averaged over noisy copies x + ε, "
        "ε ~ N(0, σ²) in pixel units. The gradient of a ReLU network jumps from pixel to pixel; averaging over a "
        "small neighbourhood keeps what is stable."),
    "gradient_x_input": (
        "<b>Gradient × input</b>: x ⊙ ∂S<sub>c</sub>/∂x, summed over colour channels. For a linear model it is "
        "each pixel's exact share of the score (relative to a black image)."),
    "integrated_gradients": (
        "<b>Integrated Gradients</b> (Sundararajan et al. 2017): the gradient averaged along the straight path "
        "from a baseline x' (here black) to x, times (x − x'). The attributions add up to S(x) − S(x') "
        "(completeness); what the numerical integral misses is reported as the completeness gap."),
    "occlusion": (
        "<b>Occlusion sensitivity</b> (Zeiler &amp; Fergus 2014): slide a grey square over the image and re-score "
        "at every position. Shown: the drop of the class score when the square covers each pixel (red = hiding it "
        "hurts the class). The lecture's <i>probability map</i> — the class probability for each position of the "
        "square, low where the square hides what the model needs — is drawn next to it. Slow (one forward per "
        "position) but model-agnostic: no gradient at all."),
    "cam": (
        "<b>Class activation map</b> (Zhou et al. 2016). With a global-average-pool + linear head, "
        "S<sub>c</sub> = Σ<sub>k</sub> w<sub>k</sub><sup>c</sup> F<sub>k</sub> + b<sub>c</sub> with "
        "F<sub>k</sub> = mean<sub>x,y</sub> f<sub>k</sub>(x, y), so "
        "S<sub>c</sub> − b<sub>c</sub> = mean<sub>x,y</sub> M<sub>c</sub>(x, y) with "
        "M<sub>c</sub>(x, y) = Σ<sub>k</sub> w<sub>k</sub><sup>c</sup> f<sub>k</sub>(x, y): the score is exactly "
        "the average of the map (the lecture's Σ<sub>x,y</sub> M<sub>c</sub> = S<sub>c</sub>, with the sum that "
        "a sum-pool would take). Global average pooling keeps where each feature fired; the map is upsampled "
        "from the last layer's grid."),
    "gradcam": (
        "<b>Grad-CAM</b> (Selvaraju et al. 2017) works for any head and any layer A: the importance of channel k "
        "for class c is α<sub>k</sub><sup>c</sup> = (1/#pixels) Σ<sub>ij</sub> ∂y<sub>c</sub>/∂A<sup>k</sup><sub>ij</sub>, "
        "and the map is ReLU(Σ<sub>k</sub> α<sub>k</sub><sup>c</sup> A<sup>k</sup>). On a GAP + linear head "
        "α<sub>k</sub><sup>c</sup> = w<sub>k</sub><sup>c</sup>/(H·W): Grad-CAM is then CAM/(H·W) before the ReLU. "
        "Only the backward from the score to that layer runs, so it costs about one forward pass."),
    "gradcam_pp": (
        "<b>Grad-CAM++</b> (Chattopadhay et al. 2018) weights each position's positive gradient, "
        "w<sub>k</sub> = Σ<sub>ij</sub> a<sub>ij</sub><sup>k</sup> ReLU(∂y<sub>c</sub>/∂A<sub>ij</sub><sup>k</sup>), "
        "so several instances of a class each count."),
    "guided_backprop": (
        "<b>Guided backprop</b> (Springenberg et al. 2015) changes the backward rule of every ReLU: the signal "
        "passes only where the forward input was positive <i>and</i> the gradient is positive (the deconvnet's "
        "'un-ReLU' combined with the ordinary one). Sharp, image-like maps — but the sanity check below shows "
        "they barely depend on the weights of the top layers."),
    "guided_gradcam": (
        "<b>Guided Grad-CAM</b>: guided backprop ⊙ the upsampled Grad-CAM — fine detail, restricted to the "
        "class-discriminative region."),
    "augmented_gradcam": (
        "<b>Augmented Grad-CAM</b> (Morbidelli et al. 2020): Grad-CAM is coarse (7×7 for this network). Show the "
        "network L randomly rotated and shifted copies of the image; each gives a low-resolution map g<sub>l</sub>, "
        "modelled as the same high-resolution map h, moved by the known augmentation A<sub>l</sub> and "
        "down-sampled by D. Recover h from the inverse problem "
        "argmin<sub>h</sub> ½ Σ<sub>l</sub> ‖D(A<sub>l</sub>(h)) − g<sub>l</sub>‖² + λ TV<sub>ℓ1</sub>(h) + "
        "(μ/2)‖h‖², solved by (sub)gradient descent; the anisotropic total variation keeps edges."),
}

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
        fn = METHODS[name]
        kw = dict((settings or {}).get(name, {}))
        if layer is not None and name in ("cam", "gradcam", "gradcam_pp", "guided_gradcam", "augmented_gradcam"):
            kw.setdefault("layer", layer)
        if progress:
            progress(name, i, len(methods))
        t0 = time.perf_counter()
        try:
            out[name] = fn(model, x, target=target, **kw)
        except ValueError as e:
            log.warning("%s does not apply: %s", name, e)
            out[name] = e
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


def _heat(e: Explanation, i: int, shared: bool) -> tuple[torch.Tensor, bool]:
    m = e.maps[i].float()
    signed = e.method in SIGNED and bool((m < 0).any())
    if e.method in CLIPPED and m.numel() > 1:
        q = float(torch.quantile(m.abs().flatten(), 0.995))
        if q > 0:
            m = m.clamp(-q, q)
    if shared:
        scale = float(m.abs().max())
        m = m / scale if scale > 0 else m
    return m, signed


def overlay_figure(image: torch.Tensor, e: Explanation, i: int, *, title: str = "", shared: bool = False):
    """One map over its image with a colour bar (values in the method's units, or [0, 1]/[−1, 1] if shared)."""
    from ..viz import _mpl, overlay

    plt = _mpl()
    fig, ax = plt.subplots(figsize=(3.4, 3.0))
    m, signed = _heat(e, i, shared)
    kw = {"vmin": 0.0, "vmax": 1.0} if shared and not signed else {}
    overlay(ax, image, m, title=title or TITLES.get(e.method, e.method), diverging=signed, **kw)
    fig.tight_layout()
    return fig


def grid_figure(image: torch.Tensor, name: str, expls: dict, i: int, faith: dict | None = None, *,
                shared: bool = False, caption_top: str = ""):
    """The original and every map side by side, each with its colour bar and deletion/insertion AUC."""
    from ..viz import _mpl, overlay, show_image

    plt = _mpl()
    ok = [(k, e) for k, e in expls.items() if isinstance(e, Explanation)]
    n = len(ok) + 1
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.2 * rows), squeeze=False)
    show_image(axes[0, 0], image, f"{name}\n{caption_top}" if caption_top else name)
    for j, (k, e) in enumerate(ok, start=1):
        ax = axes.flat[j]
        m, signed = _heat(e, i, shared)
        t = TITLES.get(k, k)
        if faith and k in faith:
            f = faith[k]
            t += f"\ndel {float(f.deletion_auc[i]):.3f} · ins {float(f.insertion_auc[i]):.3f}"
        kw = {"vmin": 0.0, "vmax": 1.0} if shared and not signed else {}
        overlay(ax, image, m, title=t, diverging=signed, **kw)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def method_figure(images: torch.Tensor, names: Sequence[str], e: Explanation, faith: Faithfulness | None = None,
                  class_names: Sequence[str] | None = None, extra: str | None = None):
    """One method across several images: overlay + colour bar, the class and the AUCs in each title.

    ``extra="probability"`` adds a row with the occlusion probability map.
    """
    from ..viz import _mpl, overlay

    plt = _mpl()
    n = len(names)
    rows = 2 if extra else 1
    fig, axes = plt.subplots(rows, n, figsize=(2.6 * n, 2.6 * rows), squeeze=False)
    for i in range(n):
        m, signed = _heat(e, i, False)
        c = int(e.classes[i])
        cname = class_names[c] if class_names and 0 <= c < len(class_names) else str(c)
        t = f"{names[i]}: {_short(cname)}"
        if faith is not None:
            t += f"\ndel {float(faith.deletion_auc[i]):.3f} · ins {float(faith.insertion_auc[i]):.3f}"
        overlay(axes[0, i], images[i], m, title=t, diverging=signed)
        if extra == "probability":
            prob = e.extras["probability"][i]
            ax = axes[1, i]
            im = ax.imshow(prob.numpy(), cmap="viridis", vmin=0, vmax=max(1e-6, float(prob.max())))
            ax.set_title("P(class) with the square here", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            plt.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    return fig


def curves_figure(faith: dict, i: int, name: str):
    """Deletion and insertion curves of every method for image i."""
    from ..viz import _mpl

    plt = _mpl()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for k, f in faith.items():
        a.plot(f.deletion.fractions, f.deletion.scores[i], label=f"{TITLES.get(k, k)} ({float(f.deletion_auc[i]):.3f})")
        b.plot(f.insertion.fractions, f.insertion.scores[i], label=f"{TITLES.get(k, k)} ({float(f.insertion_auc[i]):.3f})")
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
    from ..viz import _mpl, overlay

    plt = _mpl()
    rows = len(results)
    cols = 1 + max(len(r.layers) for r in results.values())
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.5 * rows), squeeze=False)
    for r_i, (k, r) in enumerate(results.items()):
        overlay(axes[r_i, 0], image, r.original[i], title=f"{TITLES.get(k, k)}\ntrained", colorbar=False)
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
        rows.append([TITLES.get(k, k)] + cells + [round(float(f.deletion_auc.mean()), 4),
                                                   round(float(f.insertion_auc.mean()), 4)])
    return rows, header


def summary(e: Explanation, f: Faithfulness | None, i: int) -> dict:
    d = {"method": e.method, "class": int(e.classes[i]), "layer": e.layer, "settings": e.settings}
    if f is not None:
        d["deletion_auc"] = float(f.deletion_auc[i])
        d["insertion_auc"] = float(f.insertion_auc[i])
    if "completeness_gap" in e.extras:
        d["completeness_gap"] = float(e.extras["completeness_gap"][i])
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
        "methods": ", ".join(TITLES[m] for m in methods), "target": "the predicted class",
        "faithfulness": f"deletion/insertion, {steps} steps, {'blurred' if baseline == 'blur' else baseline} "
                        "baseline, softmax probability",
        **{TITLES[k]: ", ".join(f"{a}={b}" for a, b in v.items()) for k, v in shown.items() if v},
        "seconds (maps and faithfulness)": round(time.perf_counter() - t0, 1)})
    for m in methods:
        e = expls[m]
        sec.text(f"<h3>{TITLES[m]}</h3><p>{INTROS[m]}</p>")
        if not isinstance(e, Explanation):
            sec.text(f"<p><i>Does not apply to this model: {html.escape(str(e))}</i></p>")
            continue
        extra = "probability" if m == "occlusion" and "probability" in e.extras else None
        sec.figure(method_figure(x, names, e, faith.get(m), class_names, extra=extra),
                   f"{TITLES[m]} on {what} — under each map: deletion AUC (↓) · insertion AUC (↑).",
                   name=f"attribution-{what}-{m}")
        note = _method_note(m, e)
        if note:
            sec.text(note)
        sec.data(m, {n: summary(e, faith.get(m), i) for i, n in enumerate(names)})
    rows, header = faith_table(faith, names)
    sec.text(f"<h3>Faithfulness</h3><p>{FAITH_INTRO}</p>")
    sec.table(rows, header=header, caption="Area under the deletion / insertion curve per image; "
                                           "deletion: lower is better, insertion: higher is better.")
    if curves_for is not None and faith:
        sec.figure(curves_figure(faith, curves_for, names[curves_for]), f"Deletion and insertion curves, {names[curves_for]}.",
                   name=f"attribution-{what}-curves")
    return sec, expls, faith


def _method_note(m: str, e: Explanation) -> str:
    if m == "integrated_gradients":
        gap = e.extras["completeness_gap"].abs()
        tot = (e.extras["score"] - e.extras["baseline_score"]).abs()
        return (f"<p>Completeness: Σ attributions − (S(x) − S(x')) is at most {float(gap.max()):.3g} "
                f"(|S(x) − S(x')| up to {float(tot.max()):.3g}) with {e.settings['steps']} steps.</p>")
    if m == "cam" and e.raw is not None:
        return (f"<p>Check: the mean of each raw {e.raw.shape[-2]}×{e.raw.shape[-1]} map equals its score minus "
                f"the bias to within {float((e.raw.mean((1, 2)) - (e.extras['score'] - e.extras['bias'])).abs().max()):.2g}.</p>")
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
        # the lectures' methods here; SmoothGrad and Integrated Gradients run on the digits below
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
    # model randomisation on one or two photos
    k = 1 if quick else 2
    rnd = {}
    for m in (["gradcam", "saliency"] if quick else ["saliency", "gradcam", "guided_backprop"]):
        ctx.progress("attribution: sanity check", len(rnd), 3)
        rnd[m] = randomization_check(model, x[:k], m, stages=2 if quick else 4, keep_maps=True)
    ctx.progress("attribution: sanity check", 1, 1)
    rows = []
    for m, r in rnd.items():
        for j, layer in enumerate(r.layers):
            rows.append([TITLES[m], f"{layer} and above"] + [
                "undefined (constant map)" if v != v else round(v, 3) for v in r.correlations[j].tolist()])
    sec.text("<h3>Sanity check: model randomisation</h3><p>The layers of a copy of the network are re-initialised "
             "from the classifier down (cumulatively); each row gives the Spearman rank correlation between the map "
             "of the partly random network and the trained network's map. Near 1: the map did not notice that the "
             "weights are gone.</p>")
    sec.table(rows, header=["method", "re-initialised"] + names[:k], caption="Spearman ρ with the trained model's map.")
    sec.figure(randomization_figure(x[0], rnd, 0), f"Cascading randomisation on {names[0]}.",
               name="attribution-randomization")
    sec.data("randomization", {m: {"layers": r.layers, "spearman": r.correlations} for m, r in rnd.items()})
    _digits_section(report, ctx)


def _augmented_figure(x, names, e: Explanation):
    from ..viz import _mpl, overlay

    plt = _mpl()
    n = len(names)
    fig, axes = plt.subplots(1, 2 * n + 1, figsize=(2.3 * (2 * n + 1), 2.5), squeeze=False)
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
