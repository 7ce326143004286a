"""Attacks drawn: original, adversarial image and perturbation; top-k bars before and after; accuracy
against ε; the gallery of flipped images; measure concentration.

Takes result values (duck-typed: ``AttackResult``, ``RobustnessResult``) and draws through :mod:`cnnlens.viz`.
``AttackResult.figure`` and ``RobustnessResult.figure`` call these; so do the report and the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib
import torch

from ..viz import show_image, subplots

if TYPE_CHECKING:
    from ..attacks.curves import RobustnessResult
    from ..attacks.result import AttackResult


def class_name(class_names, c: int) -> str:
    """The name of class ``c`` (its index where no names are known)."""
    if class_names and 0 <= c < len(class_names):
        return str(class_names[c])
    return str(c)


def fmt_eps(e: float, norm: str = "inf") -> str:
    """A short ε for titles: grey levels under L∞ (``2/255``), the L2 norm in pixel units otherwise."""
    if e != e or e == float("inf"):
        return "not reached"
    return f"{e * 255:.3g}/255" if norm == "inf" else f"{e:.3g}"


def attack_figure(x: torch.Tensor, r: AttackResult, names: Sequence[str], class_names=None, size: float = 2.3):
    """One row per image: original (top class, p), adversarial (top class, p), amplified perturbation."""
    n = len(r)
    fig, axes = subplots(n, 3, figsize=(3 * size, n * (size + 0.35)), squeeze=False)
    p0 = r.probabilities(after=False)
    p1 = r.probabilities(after=True)
    amp = r.amplified()
    norm = r.settings.get("norm", "inf")
    for i in range(n):
        c0, c1 = int(r.pred_before[i]), int(r.pred_after[i])
        show_image(axes[i, 0], x[i].cpu(), f"{names[i]}: {class_name(class_names, c0)[:22]} ({float(p0[i, c0]):.2f})")
        show_image(axes[i, 1], r.x_adv[i], f"→ {class_name(class_names, c1)[:22]} ({float(p1[i, c1]):.2f})")
        m = float(r.perturbation[i].abs().max())
        show_image(
            axes[i, 2],
            amp[i],
            f"perturbation, ε={fmt_eps(float(r.eps[i]), norm)}" + (f" (×{0.5 / m:.0f})" if m > 0 else ""),
        )
    fig.tight_layout()
    return fig


def topk_figure(r: AttackResult, i: int, class_names=None, k: int = 5, title: str = ""):
    """Top-k probabilities before and after the attack for image ``i``, as two bar charts."""
    fig, axes = subplots(1, 2, figsize=(7.6, 2.2))
    for ax, after, head in ((axes[0], False, "before"), (axes[1], True, "after")):
        v, idx = r.topk(k, after=after)
        labels = [class_name(class_names, int(c))[:24] for c in idx[i]]
        ax.barh(range(len(labels))[::-1], v[i].tolist(), color="#2f6fdf" if not after else "#d9534f")
        ax.set_yticks(range(len(labels))[::-1], labels, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(f"{title} {head}".strip(), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return fig


def gallery_figure(r: RobustnessResult, max_items: int = 6):
    """A robustness result's gallery. Rows: clean image, adversarial image, amplified perturbation, saliency
    before, saliency after."""
    items = r.gallery[:max_items]
    if not items:
        fig, ax = subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no image was flipped at these ε", ha="center", va="center")
        ax.set_axis_off()
        return fig
    names = r.class_names
    nm = lambda c: f"{c} {names[c]}" if names and names[c] != str(c) else str(c)
    rows = ["clean", "adversarial", "perturbation (amplified)", "saliency before", "saliency after"]
    fig, axes = subplots(len(rows), len(items), figsize=(1.9 * len(items), 1.95 * len(rows)), squeeze=False)
    scale = 255 if r.settings.get("norm", "inf") == "inf" else 1
    for c, g in enumerate(items):
        d = g["x_adv"] - g["x"]
        m = float(d.abs().max()) or 1.0
        show_image(axes[0, c], g["x"], f"#{g['index']}: {nm(g['label'])}")
        show_image(
            axes[1, c], g["x_adv"], f"→ {nm(g['pred_adv'])}  ε={g['eps'] * scale:.3g}{'/255' if scale == 255 else ''}"
        )
        show_image(axes[2, c], 0.5 + d / (2 * m), f"×{0.5 / m:.0f}")
        for row, key in ((3, "saliency_before"), (4, "saliency_after")):
            s = g[key]
            axes[row, c].imshow(s.numpy(), cmap="inferno")
            axes[row, c].set_axis_off()
    for row, name in enumerate(rows):
        axes[row, 0].text(
            -0.08, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, ha="right", va="center", fontsize=8
        )
    fig.tight_layout()
    return fig


def curves_figure(results: dict[str, RobustnessResult], title: str | None = None):
    """Robust accuracy against ε for several models (colour) and attacks (line style)."""
    fig, ax = subplots(figsize=(6.4, 4.0))
    styles = {"fgsm": "--", "pgd": "-", "deepfool": ":", "cw": "-."}
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    norm = "inf"
    for i, (name, r) in enumerate(results.items()):
        norm = r.settings.get("norm", "inf")
        scale = 255 if norm == "inf" else 1
        xs = [e * scale for e in r.eps]
        for a in r.attacks:
            label = f"{name} {a.upper()}".strip()
            ax.plot(
                xs,
                r.accuracy[a].tolist(),
                styles.get(a, "-"),
                marker="o",
                ms=3.5,
                color=colors[i % len(colors)],
                label=label,
            )
    ax.set_xlabel("ε (pixel units × 255, L∞)" if norm == "inf" else "ε (L2, pixel units)")
    ax.set_ylabel("accuracy under attack")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def concentration_figure(table: dict, measured: dict | None = None):
    """Left: 1 − (1 − ε)^d against d with Monte Carlo points (±2 s.e.); right: measured minimal ε against input
    dimension.

    ``measured``: ``{model name: (input dimension, tensor of per-image minimal ε)}`` (finite values are used).
    """
    ncols = 2 if measured else 1
    fig, axes = subplots(1, ncols, figsize=(5.4 * ncols, 3.9), squeeze=False)
    ax = axes[0, 0]
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (e, rows) in enumerate(table.items()):
        c = colors[k % len(colors)]
        dd = torch.logspace(0, math.log10(max(rows["d"]) * 10), 200, dtype=torch.float64).tolist()
        # the analytic curve, attacks.concentration.shell_fraction: 1 − (1 − ε)^d
        ax.plot(
            dd, [-math.expm1(d * math.log1p(-e)) if e < 1 else 1.0 for d in dd], color=c, label=f"1 − (1 − {e:g})^d"
        )
        ax.errorbar(
            rows["d"],
            rows["mc"],
            yerr=[2 * s for s in rows["stderr"]],
            fmt="o",
            ms=3.5,
            color=c,
            capsize=2,
            label=f"Monte Carlo, ε = {e:g}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("dimension d")
    ax.set_ylabel("share of the ball within ε of its surface")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Measure concentration in the unit ball", fontsize=10)
    if measured:
        ax = axes[0, 1]
        for k, (name, (d, eps)) in enumerate(measured.items()):
            e = torch.as_tensor(eps, dtype=torch.float64).flatten()
            e = e[torch.isfinite(e)] * 255
            if len(e) == 0:
                continue
            c = colors[k % len(colors)]
            ax.scatter([d] * len(e), e.tolist(), s=12, alpha=0.45, color=c)
            med = float(e.quantile(0.5))
            ax.scatter([d], [med], s=70, marker="D", color=c, edgecolor="k", label=f"{name}: median {med:.2g}/255")
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo = min(d for d, _ in measured.values())
        hi = max(d for d, _ in measured.values())
        ax.set_xlim(lo / 4, hi * 4)
        ax.set_xlabel("input dimension d = C·H·W")
        ax.set_ylabel("minimal ε to reach the second class (L∞, ×1/255)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        ax.set_title("Measured: the ε each image needed", fontsize=10)
    fig.tight_layout()
    return fig
