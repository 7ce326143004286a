"""Report sections for attacks and robustness, shared by the CLI and ``cnnlens demo``.

:func:`add_attack_section` renders an :class:`AttackResult` (original, adversarial
image, amplified perturbation, top-5 before and after), :func:`add_robustness_section`
robustness curves of one or several models, and :func:`demo_section` the demo's
part: EfficientNet-Lite0 pushed to the second class on the photos with the ε each
needed, the three digits models (plain, adversarially trained, gradient penalty)
side by side, and the concentration figure.
"""

from __future__ import annotations

import html
import logging
import time
from typing import Sequence

import torch

from ..figures.attacks import attack_figure, class_name, fmt_eps, topk_figure
from .result import AttackResult

log = logging.getLogger(__name__)

#: short introductions, shown above each section (the attack's and robustness's are built from the settings)
_ADVERSARIAL = (
    "<b>Adversarial examples.</b> The gradient that explains a prediction also breaks it. "
    "∂p(class)/∂x is the sensitivity of the prediction to every pixel; moving the image a little along the "
    "gradient of another class changes the prediction completely while the image barely changes "
    "(Szegedy et al. 2014). ")
_PIXELS = ("cnnlens works in pixel space, [0, 1], with ε in pixel units (1/255 = one grey level), clips to [0, 1] "
           "at every step, and differentiates the logits' cross-entropy, never probabilities.")


def attack_intro(settings: dict) -> str:
    """The attack section's introduction, saying only what ran (method, goal, norm, minimal-ε search or not)."""
    method = str(settings.get("method", ""))
    norm = "L∞" if settings.get("norm", "inf") == "inf" else "L2"
    target = str(settings.get("target", ""))
    out = _ADVERSARIAL
    if method == "deepfool":
        out += ("<b>DeepFool</b> (Moosavi-Dezfooli et al. 2016) pushes the image over the decision boundary to the "
                "closest class geometrically: linearise the network at the image, step straight to the nearest "
                "linearised boundary (distance |z<sub>k</sub> − z<sub>a</sub>| / ‖∇(z<sub>k</sub> − z<sub>a</sub>)‖₂), "
                "repeat until the class changes, then go 2 % further. No budget: the ε column is the L2 norm of the "
                "perturbation it found. ")
    elif method == "cw":
        out += ("<b>Carlini–Wagner L2</b> (Carlini &amp; Wagner 2017) minimises ‖δ‖₂² + c·max(z<sub>a</sub> − "
                "max<sub>j≠a</sub> z<sub>j</sub>, −κ) with Adam, writing the image as (tanh w + 1)/2 so it stays in "
                "[0, 1]; the smallest image that changes the class is kept. No budget: the ε column is the L2 norm "
                "found. ")
    elif method == "fgsm":
        step = "ε·sign(∇ₓ CE)" if norm == "L∞" else "ε·∇ₓ CE/‖∇ₓ CE‖₂"
        out += (f"The <b>fast gradient (sign) method</b> (Goodfellow et al. 2015) takes one step of {step}: a single "
                f"linear step of size ε in the {norm} norm. ")
    else:
        out += (f"<b>Projected gradient descent</b> (Kurakin et al. 2017; Madry et al. 2018) takes "
                f"{settings.get('steps', 'several')} small steps along the gradient's "
                f"{'sign' if norm == 'L∞' else 'direction'} and projects back onto the {norm} ball of radius ε after "
                "each one. ")
    if method in ("deepfool", "cw"):
        pass
    elif method.startswith("minimal"):
        out += ("Here each image gets <b>the smallest ε that reaches the goal</b>: a first-order guess "
                "margin/‖∇margin‖ (exact for a linear model), then doubling until PGD succeeds and bisection between "
                "the last failure and the first success. ")
    else:
        out += "Every image gets the same budget ε; the table says whether it was enough. "
    if target.startswith("untargeted"):
        out += "The attack is <b>untargeted</b>: it raises the loss of the predicted class until another wins. "
    elif "second" in target:
        out += ("The goal is the <b>second most likely class</b>: each image is pushed over the nearest decision "
                "boundary, to its runner-up. ")
    elif target:
        out += f"The goal is <b>{html.escape(target)}</b>. "
    return f"<p>{out}{_PIXELS}</p><p>The perturbation is drawn amplified: grey is no change.</p>"


def robust_intro(results: dict, robustified: bool = False) -> str:
    """The robustness section's introduction: the attacks that ran; robust training only when robust variants are
    compared (``robustified``)."""
    first = next(iter(results.values()))
    attacks = list(first.attacks)
    parts = ["<p><b>Robustness</b> is the accuracy that survives an attack of budget ε, plotted against ε"]
    if attacks == ["fgsm"]:
        parts.append(": here FGSM, one step of size ε.")
    elif attacks == ["pgd"]:
        parts.append(f": here PGD with {first.settings.get('pgd_steps', 10)} steps.")
    else:
        parts.append(f": FGSM is one step, PGD {first.settings.get('pgd_steps', 10)}; the gap between them shows how "
                     "much a single linear step underestimates the danger.")
    if "deepfool" in attacks or "cw" in attacks:
        parts.append(" The minimum-norm attacks (" + ", ".join(n for a, n in (("deepfool", "DeepFool"), ("cw", "C&amp;W L2"))
                                                          if a in attacks)
                     + ") run once per image; an image counts as broken at ε when the perturbation they found is "
                       "no larger than ε.")
    if len(results) > 1:
        parts.append(f" {len(results)} models side by side: {', '.join(map(html.escape, results))}.")
    if robustified:
        parts.append(" <b>Robustifying</b> has two recipes, both trained here on the same data, seed and schedule: "
                     "<i>adversarial training</i> (Goodfellow et al. 2015; Madry et al. 2018) — train on x ↦ l and "
                     "also on the attacked x + δx ↦ l, the attack recomputed against the current weights at every "
                     "step; and a <i>smooth function</i> (Drucker &amp; LeCun 1992; Ross &amp; Doshi-Velez 2018) — ask "
                     "for ∂F/∂x ≈ 0 by adding λ·‖∂L/∂x‖² to the loss (double backpropagation). Robust models are "
                     "reported to have more interpretable input gradients; the saliency maps below show what comes "
                     "out here.")
    parts.append("</p>")
    return "".join(parts)


INTROS = {
    "concentration": (
        "<p><b>Why do adversarial examples exist?</b> Because of the dimension of the data space. In high "
        "dimension there is no dense sampling (it would need 10^d samples), and <b>all points are on the "
        "boundary</b>: for the uniform distribution in the unit ball, the share of points within ε of the "
        "surface is 1 − (1 − ε)^d, which tends to 1 as d grows — measure concentration. A digit here has "
        "d = 1,024 pixels, an ImageNet photo 150,528 values: every image is close to a decision boundary, and a "
        "perturbation far below one grey level per pixel adds up to a large move. The left panel checks the "
        "formula by sampling the ball uniformly (direction = normal/‖normal‖, radius = U^(1/d)); the right one "
        "shows the ε each image really needed, for the two models.</p>"
    ),
}


#: how each attack is named in tables and titles
ATTACK_TITLES = {"fgsm": "FGSM", "pgd": "PGD", "deepfool": "DeepFool", "cw": "C&W L2", "minimal": "Minimal-ε PGD"}


def eps_text(e: float, norm: str = "inf") -> str:
    """ε for tables: pixel units beside grey levels (×255), and the norm for L2.

    >>> eps_text(2 / 255), eps_text(0.5, "2")
    ('0.00784 (2/255)', '0.5 (127/255, L2)')
    """
    if e != e or e == float("inf"):
        return "not reached"
    return f"{e:.3g} ({e * 255:.3g}/255)" if norm == "inf" else f"{e:.3g} ({e * 255:.3g}/255, L2)"


def topk_rows(r: AttackResult, i: int, class_names=None, k: int = 5) -> dict:
    """``{"before": [{index, name, probability}], "after": [...]}`` for image ``i``."""
    out = {}
    for key, after in (("before", False), ("after", True)):
        v, idx = r.topk(k, after=after)
        out[key] = [{"index": int(c), "name": class_name(class_names, int(c)), "probability": float(p)}
                    for p, c in zip(v[i], idx[i])]
    return out


def quantized_predictions(model, r: AttackResult) -> torch.Tensor:
    """The prediction on ``x_adv`` rounded to 8 bits (as a saved PNG would hold it)."""
    from ..tap import LayerTap

    xq = (r.x_adv * 255).round() / 255
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    with LayerTap(model) as tap, torch.no_grad():
        return tap.run(xq.to(dev)).argmax(1).cpu()


def add_attack_section(report, model, x: torch.Tensor, names: Sequence[str], r: AttackResult, *,
                       title: str = "Adversarial examples", intro: str | None = None,
                       settings: dict | None = None, topk: bool = True):
    """A section with each image, its adversarial version, the perturbation, a table and top-5 bars."""
    class_names = getattr(getattr(model, "spec", None), "class_names", None)
    sec = report.section(title, intro=attack_intro(r.settings) if intro is None else intro,
                         settings={**r.settings, **(settings or {})})
    qpred = quantized_predictions(model, r)
    norm = r.settings.get("norm", "inf")
    rows, data = [], {}
    p0 = r.logits_before.float().softmax(1)
    p1 = r.logits_after.float().softmax(1)
    for i, nm in enumerate(names):
        c0, c1, goal = int(r.pred_before[i]), int(r.pred_after[i]), int(r.classes[i])
        rows.append([nm, f"{class_name(class_names, c0)} ({float(p0[i, c0]):.3f})",
                     ("→ " if r.targeted else "away from ") + class_name(class_names, goal),
                     f"{class_name(class_names, c1)} ({float(p1[i, c1]):.3f})", "yes" if bool(r.success[i]) else "no",
                     eps_text(float(r.eps[i]), norm), f"{float(r.linf()[i]) * 255:.3g}/255", f"{float(r.l2()[i]):.3g}",
                     int(r.steps[i]), class_name(class_names, int(qpred[i]))])
        data[nm] = {"before": c0, "after": c1, "goal": goal, "success": bool(r.success[i]), "eps": float(r.eps[i]),
                    "linf": float(r.linf()[i]), "l2": float(r.l2()[i]), "steps": int(r.steps[i]),
                    "after_8bit_rounding": int(qpred[i]), "top5": topk_rows(r, i, class_names)}
    sec.figure(attack_figure(x, r, names, class_names), "Original, adversarial image, and the perturbation (amplified; grey = 0)")
    sec.table(rows, header=["image", "before (p)", "goal", "after (p)", "reached",
                            f"ε budget ({'L∞' if norm == 'inf' else 'L2'}, pixel units)", "‖δ‖∞", "‖δ‖₂", "steps",
                            "after 8-bit rounding"],
              caption="‖δ‖∞ in grey levels (1/255). The last column re-classifies the adversarial image rounded to 8 bits, "
                      "as a saved PNG would hold it: a perturbation below half a grey level is rounded away.")
    if topk:
        sec.gallery([(topk_figure(r, i, class_names, title=nm), nm) for i, nm in enumerate(names)],
                    caption="Top-5 probabilities before (blue) and after (red) the attack.", width=520)
    sec.data("attack", data)
    return sec


def add_robustness_section(report, results: dict, *, title: str = "Robustness", intro: str | None = None,
                           settings: dict | None = None, gallery_of: str | None = None, robustified: bool = False):
    """Curves of several models (``{name: RobustnessResult}``), a side-by-side table, per-class accuracy, a gallery."""
    from ..figures.attacks import curves_figure

    first = next(iter(results.values()))
    norm = first.settings.get("norm", "inf")
    shown = dict(first.settings)
    if isinstance(shown.get("eps"), (list, tuple)):  # budgets as a person reads them: pixel units and grey levels
        shown["eps"] = ", ".join(eps_text(float(e), norm) for e in shown["eps"])
    sec = report.section(title, intro=robust_intro(results, robustified) if intro is None else intro,
                         settings={**shown, **(settings or {})})
    shown_attacks = ["pgd", "fgsm"] + [a for r in results.values() for a in r.attacks if a not in ("pgd", "fgsm")]
    shown_attacks = [a for a in dict.fromkeys(shown_attacks) if any(a in r.attacks for r in results.values())]
    styles = {"pgd": "solid", "fgsm": "dashed", "deepfool": "dotted", "cw": "dash-dot"}
    legend = ", ".join(f"{styles.get(a, 'solid')}: {ATTACK_TITLES.get(a, a.upper())}" for a in shown_attacks)
    sec.figure(curves_figure(results), f"Accuracy under attack against ε ({legend})")
    header = ["model", "clean"] + [f"{ATTACK_TITLES.get(a, a.upper())} ε={eps_text(e, norm)}"
                                   for a in shown_attacks for e in first.eps if e > 0]
    rows = []
    for name, r in results.items():
        cols = [f"{float(r.accuracy[a][j]):.3f}" if a in r.attacks else "–"
                for a in shown_attacks for j, e in enumerate(r.eps) if e > 0]
        rows.append([name, f"{r.clean_accuracy:.3f}"] + cols)
        sec.data(name, r.to_dict())
    sec.table(rows, header=header, caption=f"Accuracy on {first.n} images, clean and under attack.")
    strongest = "pgd" if "pgd" in first.attacks else first.attacks[0]
    j = len(first.eps) - 1
    cn = first.class_names or [str(c) for c in range(len(first.support))]
    pc_rows = [[cn[c], int(first.support[c])] + [f"{float(r.per_class[strongest][c, j]):.2f}" for r in results.values()]
               for c in range(len(first.support))]
    sec.table(pc_rows, header=["class", "support"] + [f"{name}: {strongest.upper()} ε={eps_text(first.eps[j], norm)}"
                                                      for name in results],
              caption="Robust accuracy per class at the largest ε.")
    g = results.get(gallery_of) if gallery_of else first
    if g is not None and g.gallery:
        sec.figure(g.gallery_figure(), f"{gallery_of or next(iter(results))}: images flipped by {g.settings.get('gallery_attack', 'PGD').upper()} "
                   "at the smallest ε of the list, the perturbation (amplified), and the saliency |∂z/∂x| of the "
                   "true class before and of the new class after")
    return sec


def stroke_share(saliency_maps: torch.Tensor, x: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Share of each saliency map's mass on the digit's strokes (pixels with x > threshold), per image."""
    mask = (x[:, 0] > threshold).float()
    m = saliency_maps.abs()
    return (m * mask).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-12)


def saliency_comparison(models: dict, x: torch.Tensor, y: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor):
    """(figure, stroke shares): saliency |∂z_y/∂x| of each model on the same digits, and the mean share on strokes."""
    from ..attribution.gradients import saliency
    from ..viz import show_image, subplots

    n = len(x)
    fig, axes = subplots(len(models) + 1, n, figsize=(1.5 * n, 1.6 * (len(models) + 1)), squeeze=False)
    for c in range(n):
        show_image(axes[0, c], x[c], f"digit {int(y[c])}")
    shares = {}
    for r, (name, m) in enumerate(models.items(), start=1):
        maps = saliency(m, x, target=y.tolist()).maps
        for c in range(n):
            axes[r, c].imshow(maps[c].numpy(), cmap="inferno")
            axes[r, c].set_axis_off()
        axes[r, 0].text(-0.1, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=8)
        all_maps = saliency(m, x_all, target=y_all.tolist()).maps
        shares[name] = float(stroke_share(all_maps, x_all).mean())
    base = float((x_all[:, 0] > 0.25).float().mean())
    fig.tight_layout()
    return fig, shares, base


# --------------------------------------------------------------------------------------------- demo
def demo_section(report, ctx) -> None:
    """The demo's attack part (budget ≈ 90 s on 2 cores; ``ctx.quick``: a few seconds)."""
    from ..models.digits import digits_split
    from ..figures.attacks import concentration_figure
    from .concentration import concentration_table
    from .curves import robustness
    from .gradient import minimal_eps
    from .robust import ADV_EPS, GP_LAMBDA, load_digits

    quick = bool(getattr(ctx, "quick", False))
    t_start = time.perf_counter()

    # 1. efficientnet-lite0 pushed to the second class, with the ε each photo needed
    names, photos = ctx.photos
    if quick:
        names, photos = names[:2], photos[:2]
    me_kw = dict(steps=2, rtol=0.5, max_iter=1) if quick else dict(steps=4, rtol=0.25, max_iter=4)
    what = "attacks: efficientnet-lite0 → second class"
    r_eff = minimal_eps(ctx.effnet, photos, target="second", **me_kw, progress=lambda d, t: ctx.progress(what, d, t))
    add_attack_section(report, ctx.effnet, photos, names, r_eff, title="Adversarial examples: to the second class",
                       settings={"model": "efficientnet-lite0", "photos": ", ".join(names)}, topk=not quick)
    sec = report.sections[-1]
    found = [i for i in range(len(names)) if torch.isfinite(r_eff.eps[i]) and float(r_eff.eps[i]) > 0]
    if found:
        p = r_eff.logits_before.float().softmax(1)
        top2 = p.topk(2, dim=1).values
        lo_i = min(found, key=lambda i: float(r_eff.eps[i]))
        hi_i = max(found, key=lambda i: float(r_eff.eps[i]))
        eps255 = sorted(float(r_eff.eps[i]) * 255 for i in found)
        sec.text(f"<p>{len(found)} of {len(names)} photos reached their runner-up class with at most "
                 f"<b>{eps255[-1]:.2g}/255</b> per pixel (median {eps255[len(eps255) // 2]:.2g}/255): below one grey "
                 "level, invisible, and sometimes rounded away when the image is stored in 8 bits (last column). "
                 f"{names[lo_i]} needed the least ({float(r_eff.eps[lo_i]) * 255:.2g}/255; its top two classes had "
                 f"p = {float(top2[lo_i, 0]):.2f} and {float(top2[lo_i, 1]):.2f}), {names[hi_i]} the most "
                 f"({float(r_eff.eps[hi_i]) * 255:.2g}/255; p = {float(top2[hi_i, 0]):.2f} and {float(top2[hi_i, 1]):.2f}).</p>")

    # 2. the three digits models: clean and robust accuracy, curves, saliency
    models = {"plain": ctx.digits_model, "adversarial training": load_digits("adversarial").to(ctx.device),
              "gradient penalty": load_digits("gradient-penalty").to(ctx.device)}
    test = digits_split("test")
    data = ctx.digits_data
    if quick:
        data = torch.utils.data.Subset(test, list(range(0, len(test), 12)))
        eps, steps = [0.0, 16 / 255], 3
    else:
        eps, steps = [0.0, 4 / 255, 8 / 255, 16 / 255, 24 / 255, 32 / 255], 7
    results = {}
    for k, (name, m) in enumerate(models.items()):
        what = f"attacks: robustness of {name}"
        results[name] = robustness(m, data, eps=eps, attacks=("fgsm", "pgd"), steps=steps, gallery=0 if k else 6,
                                   batch_size=512, device=ctx.device, progress=lambda d, t, w=what: ctx.progress(w, d, t))
    sec = add_robustness_section(
        report, results, title="Robustness of the digits CNN, plain and robustified", gallery_of="plain",
        robustified=True,
        settings={"models": "digits-cnn: plain (shipped), adversarial training, gradient penalty (shipped weights)",
                  "data": f"digits held-out split ({results['plain'].n} images)",
                  "adversarial training": f"50 % clean + 50 % FGSM with random start, ε = {ADV_EPS} (≈ {ADV_EPS * 255:.0f}/255), step 1.25·ε",
                  "gradient penalty": f"CE + λ·‖∂CE/∂x‖², λ = {GP_LAMBDA}",
                  "training": "seed 0, 20 epochs, Adam one-cycle; reproduce with `cnnlens train digits --robust adversarial|gradient-penalty`"})
    pick = torch.tensor([int((test.y == c).nonzero()[0]) for c in range(10)][: (4 if quick else 8)])
    sub = slice(None) if not quick else slice(0, 60)
    fig, shares, base = saliency_comparison(models, test.x[pick], test.y[pick], test.x[sub], test.y[sub])
    sec.figure(fig, "Saliency |∂z_y/∂x| of the true class, same digits, each model")
    sec.table([[name, f"{s:.3f}"] for name, s in shares.items()] + [["(share of stroke pixels)", f"{base:.3f}"]],
              header=["model", "share of saliency on the digit's strokes"],
              caption="Mean over the held-out digits of Σ_strokes |∂z_y/∂x| / Σ |∂z_y/∂x|, strokes = pixels brighter than 0.25.")
    best = max(shares, key=shares.get)
    budgets = [j for j, e in enumerate(eps) if e > 0][-2:]
    parts = []
    for j in budgets:
        accs = ", ".join(f"{name} {float(r.accuracy['pgd'][j]):.1%}" for name, r in results.items())
        parts.append(f"at ε = {fmt_eps(eps[j])} PGD leaves {accs}")
    clean = ", ".join(f"{name} {r.clean_accuracy:.1%}" for name, r in results.items())
    sec.text(f"<p>Clean accuracy: {clean}; {'; '.join(parts)}. Share of the saliency mass on the strokes "
             f"(strokes are {base:.2f} of the pixels): " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items()) +
             f" — highest for <b>{best}</b>.</p>")
    sec.data("saliency_stroke_share", {**shares, "stroke_pixels": base})

    # 3. measure concentration, and the measured minimal ε against input dimension
    what = "attacks: minimal ε of digits-cnn"
    nd = 4 if quick else 48
    xd = test.x[torch.linspace(0, len(test) - 1, nd).long()].to(ctx.device)
    r_dig = minimal_eps(ctx.digits_model, xd, target="second", **me_kw, progress=lambda d, t: ctx.progress(what, d, t))
    table = concentration_table(dims=(1, 10, 100, 1000) if quick else (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
                                eps=(0.01, 0.05, 0.1), n=400 if quick else 4000)
    d_dig = int(xd[0].numel())
    d_eff = int(photos[0].numel())
    measured = {"digits-cnn": (d_dig, r_dig.eps), "efficientnet-lite0": (d_eff, r_eff.eps)}
    sec = report.section("Why adversarial examples exist: measure concentration", intro=INTROS["concentration"],
                         settings={"Monte Carlo samples per point": 400 if quick else 4000, "ε (ball)": [0.01, 0.05, 0.1],
                                   "minimal ε": "L∞, toward the second class, " + ", ".join(f"{k}={v}" for k, v in me_kw.items()),
                                   "digits measured": f"{nd} held-out digits", "photos measured": ", ".join(names)})
    sec.figure(concentration_figure(table, measured), "Left: 1 − (1 − ε)^d and Monte Carlo estimates (±2 s.e.). "
               "Right: minimal ε per image (dots) and median (diamond) against the input dimension.")
    med = {k: float(torch.as_tensor(v[1])[torch.isfinite(torch.as_tensor(v[1]))].quantile(0.5)) * 255
           for k, v in measured.items() if torch.isfinite(torch.as_tensor(v[1])).any()}
    if len(med) == 2:
        sec.text(f"<p>digits-cnn (d = {d_dig:,}) needed a median of {med['digits-cnn']:.2g}/255 to reach its second "
                 f"class; efficientnet-lite0 (d = {d_eff:,}) {med['efficientnet-lite0']:.2g}/255. In d = "
                 f"{table[0.01]['d'][-1]:,} dimensions, 1 − 0.99^d = {table[0.01]['formula'][-1]:.5f} of the unit ball lies "
                 "within 0.01 of its surface.</p>")
    sec.data("concentration", {str(k): v for k, v in table.items()})
    sec.data("minimal_eps", {k: {"d": d, "eps": torch.as_tensor(e).tolist()} for k, (d, e) in measured.items()})
    log.info("demo attacks: %.1f s", time.perf_counter() - t_start)
