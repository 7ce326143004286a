"""Report sections for attacks and robustness, shared by the CLI and ``cnnlens demo``.

:func:`add_attack_section` renders an :class:`AttackResult` (original, adversarial
image, amplified perturbation, top-5 before and after), :func:`add_robustness_section`
robustness curves of one or several models; the demo's part is :mod:`cnnlens.demo.attacks`,
the figures :mod:`cnnlens.figures.attacks`.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
from collections.abc import Sequence

import torch

from ..figures.attacks import attack_figure, class_name, curves_figure, topk_figure
from ..report import png_bytes
from ..tap import LayerTap
from ..viz import to_pil
from .images import AttackRun
from .result import AttackResult

log = logging.getLogger(__name__)

#: short introductions, shown above each section (the attack's and robustness's are built from the settings)
_ADVERSARIAL = (
    "<b>Adversarial examples.</b> The gradient that explains a prediction also breaks it. "
    "∂p(class)/∂x is the sensitivity of the prediction to every pixel; moving the image a little along the "
    "gradient of another class changes the prediction completely while the image barely changes "
    "(Szegedy et al. 2014). "
)
_PIXELS = (
    "cnnlens works in pixel space, [0, 1], with ε in pixel units (1/255 = one grey level), clips to [0, 1] "
    "at every step, and differentiates the logits' cross-entropy, never probabilities."
)


def attack_intro(settings: dict) -> str:
    """The attack section's introduction, saying only what ran (method, goal, norm, minimal-ε search or not)."""
    method = str(settings.get("method", ""))
    norm = "L∞" if settings.get("norm", "inf") == "inf" else "L2"
    target = str(settings.get("target", ""))
    out = _ADVERSARIAL
    if method == "deepfool":
        out += (
            "<b>DeepFool</b> (Moosavi-Dezfooli et al. 2016) pushes the image over the decision boundary to the "
            "closest class geometrically: linearise the network at the image, step straight to the nearest "
            "linearised boundary (distance |z<sub>k</sub> − z<sub>a</sub>| / ‖∇(z<sub>k</sub> − z<sub>a</sub>)‖₂), "
            "repeat until the class changes, then go 2 % further. No budget: the ε column is the L2 norm of the "
            "perturbation it found. "
        )
    elif method == "cw":
        out += (
            "<b>Carlini–Wagner L2</b> (Carlini &amp; Wagner 2017) minimises ‖δ‖₂² + c·max(z<sub>a</sub> − "
            "max<sub>j≠a</sub> z<sub>j</sub>, −κ) with Adam, writing the image as (tanh w + 1)/2 so it stays in "
            "[0, 1]; the smallest image that changes the class is kept. No budget: the ε column is the L2 norm "
            "found. "
        )
    elif method == "fgsm":
        step = "ε·sign(∇ₓ CE)" if norm == "L∞" else "ε·∇ₓ CE/‖∇ₓ CE‖₂"
        out += (
            f"The <b>fast gradient (sign) method</b> (Goodfellow et al. 2015) takes one step of {step}: a single "
            f"linear step of size ε in the {norm} norm. "
        )
    else:
        out += (
            f"<b>Projected gradient descent</b> (Kurakin et al. 2017; Madry et al. 2018) takes "
            f"{settings.get('steps', 'several')} small steps along the gradient's "
            f"{'sign' if norm == 'L∞' else 'direction'} and projects back onto the {norm} ball of radius ε after "
            "each one. "
        )
    if method in ("deepfool", "cw"):
        pass
    elif method.startswith("minimal"):
        out += (
            "Here each image gets <b>the smallest ε that reaches the goal</b>: a first-order guess "
            "margin/‖∇margin‖ (exact for a linear model), then doubling until PGD succeeds and bisection between "
            "the last failure and the first success. "
        )
    else:
        out += "Every image gets the same budget ε; the table says whether it was enough. "
    if target.startswith("untargeted"):
        out += "The attack is <b>untargeted</b>: it raises the loss of the predicted class until another wins. "
    elif "second" in target:
        out += (
            "The goal is the <b>second most likely class</b>: each image is pushed over the nearest decision "
            "boundary, to its runner-up. "
        )
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
        parts.append(
            f": FGSM is one step, PGD {first.settings.get('pgd_steps', 10)}; the gap between them shows how "
            "much a single linear step underestimates the danger."
        )
    if "deepfool" in attacks or "cw" in attacks:
        parts.append(
            " The minimum-norm attacks ("
            + ", ".join(n for a, n in (("deepfool", "DeepFool"), ("cw", "C&amp;W L2")) if a in attacks)
            + ") run once per image; an image counts as broken at ε when the perturbation they found is "
            "no larger than ε."
        )
    if len(results) > 1:
        parts.append(f" {len(results)} models side by side: {', '.join(map(html.escape, results))}.")
    if robustified:
        parts.append(
            " <b>Robustifying</b> has two recipes, both trained here on the same data, seed and schedule: "
            "<i>adversarial training</i> (Goodfellow et al. 2015; Madry et al. 2018) — train on x ↦ l and "
            "also on the attacked x + δx ↦ l, the attack recomputed against the current weights at every "
            "step; and a <i>smooth function</i> (Drucker &amp; LeCun 1992; Ross &amp; Doshi-Velez 2018) — ask "
            "for ∂F/∂x ≈ 0 by adding λ·‖∂L/∂x‖² to the loss (double backpropagation). Robust models are "
            "reported to have more interpretable input gradients; the saliency maps below show what comes "
            "out here."
        )
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
        out[key] = [
            {"index": int(c), "name": class_name(class_names, int(c)), "probability": float(p)}
            for p, c in zip(v[i], idx[i], strict=True)
        ]
    return out


def quantized_predictions(model, r: AttackResult) -> torch.Tensor:
    """The prediction on ``x_adv`` rounded to 8 bits (as a saved PNG would hold it)."""
    xq = (r.x_adv * 255).round() / 255
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    with LayerTap(model) as tap, torch.no_grad():
        return tap.run(xq.to(dev)).argmax(1).cpu()


def add_attack_section(
    report,
    model,
    x: torch.Tensor,
    names: Sequence[str],
    r: AttackResult,
    *,
    title: str = "Adversarial examples",
    intro: str | None = None,
    settings: dict | None = None,
    topk: bool = True,
):
    """A section with each image, its adversarial version, the perturbation, a table and top-5 bars."""
    class_names = getattr(getattr(model, "spec", None), "class_names", None)
    sec = report.section(
        title, intro=attack_intro(r.settings) if intro is None else intro, settings={**r.settings, **(settings or {})}
    )
    qpred = quantized_predictions(model, r)
    norm = r.settings.get("norm", "inf")
    rows, data = [], {}
    p0 = r.probabilities(after=False)
    p1 = r.probabilities(after=True)
    assert r.classes is not None  # cnnlens's attacks record each image's goal class
    for i, nm in enumerate(names):
        c0, c1, goal = int(r.pred_before[i]), int(r.pred_after[i]), int(r.classes[i])
        rows.append(
            [
                nm,
                f"{class_name(class_names, c0)} ({float(p0[i, c0]):.3f})",
                ("→ " if r.targeted else "away from ") + class_name(class_names, goal),
                f"{class_name(class_names, c1)} ({float(p1[i, c1]):.3f})",
                "yes" if bool(r.success[i]) else "no",
                eps_text(float(r.eps[i]), norm),
                f"{float(r.linf()[i]) * 255:.3g}/255",
                f"{float(r.l2()[i]):.3g}",
                int(r.steps[i]),
                class_name(class_names, int(qpred[i])),
            ]
        )
        data[nm] = {
            "before": c0,
            "after": c1,
            "goal": goal,
            "success": bool(r.success[i]),
            "eps": float(r.eps[i]),
            "linf": float(r.linf()[i]),
            "l2": float(r.l2()[i]),
            "steps": int(r.steps[i]),
            "after_8bit_rounding": int(qpred[i]),
            "top5": topk_rows(r, i, class_names),
        }
    sec.figure(
        attack_figure(x, r, names, class_names),
        "Original, adversarial image, and the perturbation (amplified; grey = 0)",
    )
    sec.table(
        rows,
        header=[
            "image",
            "before (p)",
            "goal",
            "after (p)",
            "reached",
            f"ε budget ({'L∞' if norm == 'inf' else 'L2'}, pixel units)",
            "‖δ‖∞",
            "‖δ‖₂",
            "steps",
            "after 8-bit rounding",
        ],
        caption="‖δ‖∞ in grey levels (1/255). The last column re-classifies the adversarial image rounded to 8 bits, "
        "as a saved PNG would hold it: a perturbation below half a grey level is rounded away.",
    )
    if topk:
        sec.gallery(
            [(topk_figure(r, i, class_names, title=nm), nm) for i, nm in enumerate(names)],
            caption="Top-5 probabilities before (blue) and after (red) the attack.",
            width=520,
        )
    sec.data("attack", data)
    return sec


def add_attack_run_section(report, model, run: AttackRun, *, settings: dict | None = None):
    """``cnnlens attack``'s report: :func:`add_attack_section` for an :class:`AttackRun`, and its files —
    per image <name>/original.png, adversarial.png, perturbation.png (amplified), top5.json; attack.json (all
    numbers) and x_adv.pt (the exact adversarial images: a PNG rounds to 8 bits, which can undo a perturbation
    below half a grey level). ``model``: the model attacked (for the 8-bit re-classification)."""

    def png(img) -> bytes:
        buf = io.BytesIO()
        to_pil(img).save(buf, format="PNG")
        return buf.getvalue()

    r, names, x = run.result, run.names, run.images
    sec = add_attack_section(report, model, x, names, r, title=f"{ATTACK_TITLES[run.method]} attack", settings=settings)
    q = quantized_predictions(model, r)
    assert r.classes is not None  # cnnlens's attacks record each image's goal class
    summary = {}
    for i, nm in enumerate(names):
        report.file(f"{nm}/original.png", png(x[i]))
        report.file(f"{nm}/adversarial.png", png(r.x_adv[i]))
        report.file(f"{nm}/perturbation.png", png(r.amplified()[i]))
        top = topk_rows(r, i, run.class_names)
        report.file(f"{nm}/top5.json", json.dumps(top, indent=2))
        summary[nm] = {
            "success": bool(r.success[i]),
            "goal": int(r.classes[i]),
            "targeted": r.targeted,
            "eps": float(r.eps[i]),
            "linf": float(r.linf()[i]),
            "l2": float(r.l2()[i]),
            "steps": int(r.steps[i]),
            "after_8bit_rounding": int(q[i]),
            **top,
        }
    report.file("attack.json", json.dumps({"settings": r.settings, "images": summary}, indent=2, default=str))
    buf = io.BytesIO()
    torch.save({"names": list(names), "x": x, "x_adv": r.x_adv, "eps": r.eps}, buf)
    report.file("x_adv.pt", buf.getvalue())
    return sec


def add_robustness_run(report, name: str, r, *, settings: dict | None = None, figure_title: str | None = None):
    """``cnnlens robustness``'s report for one model's :class:`RobustnessResult` ``r`` (``name``: the model):
    :func:`add_robustness_section` and the files curves.png, robustness.json and robustness.csv. Returns the
    section."""
    sec = add_robustness_section(report, {name: r}, title="Robustness", settings=settings, gallery_of=name)
    report.file("curves.png", png_bytes(r.figure(title=figure_title or name)))
    report.file("robustness.json", json.dumps(r.to_dict(), indent=2))
    header, rows = r.table()
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    report.file("robustness.csv", buf.getvalue())
    return sec


def add_robustness_section(
    report,
    results: dict,
    *,
    title: str = "Robustness",
    intro: str | None = None,
    settings: dict | None = None,
    gallery_of: str | None = None,
    robustified: bool = False,
):
    """Curves of several models (``{name: RobustnessResult}``), a side-by-side table, per-class accuracy, a gallery."""
    first = next(iter(results.values()))
    norm = first.settings.get("norm", "inf")
    shown = dict(first.settings)
    if isinstance(shown.get("eps"), (list, tuple)):  # budgets as a person reads them: pixel units and grey levels
        shown["eps"] = ", ".join(eps_text(float(e), norm) for e in shown["eps"])
    sec = report.section(
        title,
        intro=robust_intro(results, robustified) if intro is None else intro,
        settings={**shown, **(settings or {})},
    )
    shown_attacks = ["pgd", "fgsm"] + [a for r in results.values() for a in r.attacks if a not in ("pgd", "fgsm")]
    shown_attacks = [a for a in dict.fromkeys(shown_attacks) if any(a in r.attacks for r in results.values())]
    styles = {"pgd": "solid", "fgsm": "dashed", "deepfool": "dotted", "cw": "dash-dot"}
    legend = ", ".join(f"{styles.get(a, 'solid')}: {ATTACK_TITLES.get(a, a.upper())}" for a in shown_attacks)
    sec.figure(curves_figure(results), f"Accuracy under attack against ε ({legend})")
    header = ["model", "clean"] + [
        f"{ATTACK_TITLES.get(a, a.upper())} ε={eps_text(e, norm)}" for a in shown_attacks for e in first.eps if e > 0
    ]
    rows = []
    for name, r in results.items():
        cols = [
            f"{float(r.accuracy[a][j]):.3f}" if a in r.attacks else "–"
            for a in shown_attacks
            for j, e in enumerate(r.eps)
            if e > 0
        ]
        rows.append([name, f"{r.clean_accuracy:.3f}"] + cols)
        sec.data(name, r.to_dict())
    sec.table(rows, header=header, caption=f"Accuracy on {first.n} images, clean and under attack.")
    strongest = "pgd" if "pgd" in first.attacks else first.attacks[0]
    j = len(first.eps) - 1
    cn = first.class_names or [str(c) for c in range(len(first.support))]
    pc_rows = [
        [cn[c], int(first.support[c])] + [f"{float(r.per_class[strongest][c, j]):.2f}" for r in results.values()]
        for c in range(len(first.support))
    ]
    sec.table(
        pc_rows,
        header=["class", "support"]
        + [f"{name}: {strongest.upper()} ε={eps_text(first.eps[j], norm)}" for name in results],
        caption="Robust accuracy per class at the largest ε.",
    )
    g = results.get(gallery_of) if gallery_of else first
    if g is not None and g.gallery:
        sec.figure(
            g.gallery_figure(),
            f"{gallery_of or next(iter(results))}: images flipped by {g.settings.get('gallery_attack', 'PGD').upper()} "
            "at the smallest ε of the list, the perturbation (amplified), and the saliency |∂z/∂x| of the "
            "true class before and of the new class after",
        )
    return sec
