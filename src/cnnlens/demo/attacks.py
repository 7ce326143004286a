"""The demo's attacks section: FGSM/PGD and minimal ε on the photos, robustness curves and robust training on the
digits, saliency before and after robust training, and measure concentration.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ..attacks.concentration import concentration_table
from ..attacks.curves import robustness
from ..attacks.gradient import minimal_eps
from ..attacks.report import INTROS, add_attack_section, add_robustness_section
from ..attacks.robust import ADV_EPS, GP_LAMBDA, load_digits
from ..attribution.gradients import saliency
from ..figures.attacks import concentration_figure, fmt_eps
from ..models.digits import digits_split
from ..viz import show_image, subplots

log = logging.getLogger(__name__)


def stroke_share(saliency_maps: torch.Tensor, x: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Share of each saliency map's mass on the digit's strokes (pixels with x > threshold), per image."""
    mask = (x[:, 0] > threshold).float()
    m = saliency_maps.abs()
    return (m * mask).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-12)


def saliency_comparison(models: dict, x: torch.Tensor, y: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor):
    """(figure, stroke shares): saliency |∂z_y/∂x| of each model on the same digits, and the mean share on strokes."""
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
        axes[r, 0].text(
            -0.1, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=8
        )
        all_maps = saliency(m, x_all, target=y_all.tolist()).maps
        shares[name] = float(stroke_share(all_maps, x_all).mean())
    base = float((x_all[:, 0] > 0.25).float().mean())
    fig.tight_layout()
    return fig, shares, base


# --------------------------------------------------------------------------------------------- demo
def demo_section(report, ctx) -> None:
    """The demo's attack part (``ctx.quick``: the smallest settings, a smoke run)."""
    quick = bool(getattr(ctx, "quick", False))
    t_start = time.perf_counter()
    me_kw: dict[str, Any] = dict(steps=2, rtol=0.5, max_iter=1) if quick else dict(steps=4, rtol=0.25, max_iter=4)
    names, photos, r_eff = _second_class_section(report, ctx, quick, me_kw)
    test = _robustness_section(report, ctx, quick)
    _concentration_section(report, ctx, quick, me_kw, test, names, photos, r_eff)
    log.info("demo attacks: %.1f s", time.perf_counter() - t_start)


def _second_class_section(report, ctx, quick: bool, me_kw: dict):
    """EfficientNet-Lite0 pushed to the second class, with the ε each photo needed: (names, photos, result)."""
    names, photos = ctx.photos
    if quick:
        names, photos = names[:2], photos[:2]
    what = "attacks: efficientnet-lite0 → second class"
    r_eff = minimal_eps(ctx.effnet, photos, target="second", **me_kw, progress=lambda d, t: ctx.progress(what, d, t))
    add_attack_section(
        report,
        ctx.effnet,
        photos,
        names,
        r_eff,
        title="Adversarial examples: to the second class",
        settings={"model": "efficientnet-lite0", "photos": ", ".join(names)},
        topk=not quick,
    )
    sec = report.sections[-1]
    found = [i for i in range(len(names)) if torch.isfinite(r_eff.eps[i]) and float(r_eff.eps[i]) > 0]
    if found:
        p = r_eff.probabilities(after=False)
        top2 = p.topk(2, dim=1).values
        lo_i = min(found, key=lambda i: float(r_eff.eps[i]))
        hi_i = max(found, key=lambda i: float(r_eff.eps[i]))
        eps255 = sorted(float(r_eff.eps[i]) * 255 for i in found)
        sec.text(
            f"<p>{len(found)} of {len(names)} photos reached their runner-up class with at most "
            f"<b>{eps255[-1]:.2g}/255</b> per pixel (median {eps255[len(eps255) // 2]:.2g}/255): below one grey "
            "level, invisible, and sometimes rounded away when the image is stored in 8 bits (last column). "
            f"{names[lo_i]} needed the least ({float(r_eff.eps[lo_i]) * 255:.2g}/255; its top two classes had "
            f"p = {float(top2[lo_i, 0]):.2f} and {float(top2[lo_i, 1]):.2f}), {names[hi_i]} the most "
            f"({float(r_eff.eps[hi_i]) * 255:.2g}/255; p = {float(top2[hi_i, 0]):.2f} and "
            f"{float(top2[hi_i, 1]):.2f}).</p>"
        )

    return names, photos, r_eff


def _robustness_section(report, ctx, quick: bool):
    """The three digits models: clean and robust accuracy, curves, saliency; the digits' test split."""
    models = {
        "plain": ctx.digits_model,
        "adversarial training": load_digits("adversarial").to(ctx.device),
        "gradient penalty": load_digits("gradient-penalty").to(ctx.device),
    }
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
        results[name] = robustness(
            m,
            data,
            eps=eps,
            attacks=("fgsm", "pgd"),
            steps=steps,
            gallery=0 if k else 6,
            batch_size=512,
            device=ctx.device,
            progress=lambda d, t, w=what: ctx.progress(w, d, t),
        )
    sec = add_robustness_section(
        report,
        results,
        title="Robustness of the digits CNN, plain and robustified",
        gallery_of="plain",
        robustified=True,
        settings={
            "models": "digits-cnn: plain (shipped), adversarial training, gradient penalty (shipped weights)",
            "data": f"digits held-out split ({results['plain'].n} images)",
            "adversarial training": (
                f"50 % clean + 50 % FGSM with random start, ε = {ADV_EPS} (≈ {ADV_EPS * 255:.0f}/255), step 1.25·ε"
            ),
            "gradient penalty": f"CE + λ·‖∂CE/∂x‖², λ = {GP_LAMBDA}",
            "training": (
                "seed 0, 20 epochs, Adam one-cycle; reproduce with "
                "`cnnlens train digits --robust adversarial|gradient-penalty`"
            ),
        },
    )
    _saliency_part(sec, models, results, eps, test, quick)
    return test


def _saliency_part(sec, models: dict, results: dict, eps: list, test, quick: bool) -> None:
    """Each digits model's saliency on the same digits, and how much of it falls on the strokes."""
    pick = torch.tensor([int((test.y == c).nonzero()[0]) for c in range(10)][: (4 if quick else 8)])
    sub = slice(None) if not quick else slice(0, 60)
    fig, shares, base = saliency_comparison(models, test.x[pick], test.y[pick], test.x[sub], test.y[sub])
    sec.figure(fig, "Saliency |∂z_y/∂x| of the true class, same digits, each model")
    sec.table(
        [[name, f"{s:.3f}"] for name, s in shares.items()] + [["(share of stroke pixels)", f"{base:.3f}"]],
        header=["model", "share of saliency on the digit's strokes"],
        caption="Mean over the held-out digits of Σ_strokes |∂z_y/∂x| / Σ |∂z_y/∂x|, "
        "strokes = pixels brighter than 0.25.",
    )
    best = max(shares, key=shares.get)
    budgets = [j for j, e in enumerate(eps) if e > 0][-2:]
    parts = []
    for j in budgets:
        accs = ", ".join(f"{name} {float(r.accuracy['pgd'][j]):.1%}" for name, r in results.items())
        parts.append(f"at ε = {fmt_eps(eps[j])} PGD leaves {accs}")
    clean = ", ".join(f"{name} {r.clean_accuracy:.1%}" for name, r in results.items())
    sec.text(
        f"<p>Clean accuracy: {clean}; {'; '.join(parts)}. Share of the saliency mass on the strokes "
        f"(strokes are {base:.2f} of the pixels): "
        + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
        + f" — highest for <b>{best}</b>.</p>"
    )
    sec.data("saliency_stroke_share", {**shares, "stroke_pixels": base})


def _concentration_section(report, ctx, quick: bool, me_kw: dict, test, names, photos, r_eff) -> None:
    """Measure concentration, and the measured minimal ε against input dimension."""
    what = "attacks: minimal ε of digits-cnn"
    nd = 4 if quick else 48
    xd = test.x[torch.linspace(0, len(test) - 1, nd).long()].to(ctx.device)
    r_dig = minimal_eps(ctx.digits_model, xd, target="second", **me_kw, progress=lambda d, t: ctx.progress(what, d, t))
    table = concentration_table(
        dims=(1, 10, 100, 1000) if quick else (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
        eps=(0.01, 0.05, 0.1),
        n=400 if quick else 4000,
    )
    d_dig = int(xd[0].numel())
    d_eff = int(photos[0].numel())
    measured = {"digits-cnn": (d_dig, r_dig.eps), "efficientnet-lite0": (d_eff, r_eff.eps)}
    sec = report.section(
        "Why adversarial examples exist: measure concentration",
        intro=INTROS["concentration"],
        settings={
            "Monte Carlo samples per point": 400 if quick else 4000,
            "ε (ball)": [0.01, 0.05, 0.1],
            "minimal ε": "L∞, toward the second class, " + ", ".join(f"{k}={v}" for k, v in me_kw.items()),
            "digits measured": f"{nd} held-out digits",
            "photos measured": ", ".join(names),
        },
    )
    sec.figure(
        concentration_figure(table, measured),
        "Left: 1 − (1 − ε)^d and Monte Carlo estimates (±2 s.e.). "
        "Right: minimal ε per image (dots) and median (diamond) against the input dimension.",
    )
    med = {
        k: float(torch.as_tensor(v[1])[torch.isfinite(torch.as_tensor(v[1]))].quantile(0.5)) * 255
        for k, v in measured.items()
        if torch.isfinite(torch.as_tensor(v[1])).any()
    }
    if len(med) == 2:
        sec.text(
            f"<p>digits-cnn (d = {d_dig:,}) needed a median of {med['digits-cnn']:.2g}/255 to reach its second "
            f"class; efficientnet-lite0 (d = {d_eff:,}) {med['efficientnet-lite0']:.2g}/255. In d = "
            f"{table[0.01]['d'][-1]:,} dimensions, 1 − 0.99^d = {table[0.01]['formula'][-1]:.5f} of the unit ball lies "
            "within 0.01 of its surface.</p>"
        )
    sec.data("concentration", {str(k): v for k, v in table.items()})
    sec.data("minimal_eps", {k: {"d": d, "eps": torch.as_tensor(e).tolist()} for k, (d, e) in measured.items()})
