"""Evaluation drawn: the confusion matrix (the most confused classes when there are many) and top-k bars.

``EvaluationResult.figure`` calls :func:`confusion_figure`; the report and ``cnnlens explain`` call both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..viz import show_image, subplots

if TYPE_CHECKING:
    from ..evaluation import EvaluationResult

#: a confusion matrix figure shows at most this many classes (the most confused ones; the CSV has all)
MAX_FIGURE_CLASSES = 20


def most_confused_classes(confusion: torch.Tensor, m: int = MAX_FIGURE_CLASSES) -> list[int]:
    """The m classes with the most off-diagonal mass (row + column sums off the diagonal), sorted by index."""
    off = confusion.double().clone()
    off.fill_diagonal_(0)
    mass = off.sum(0) + off.sum(1)
    order = torch.sort(mass, descending=True, stable=True).indices[:m]
    return sorted(order.tolist())


def present_classes(result: EvaluationResult) -> list[int]:
    """The classes that occur in the data (support > 0), in index order; all classes when none is empty."""
    support = result.confusion.sum(1)
    return [i for i in range(result.num_classes) if int(support[i]) > 0] or list(range(result.num_classes))


def short(name: str, n: int = 18) -> str:
    """A class name cut to ``n`` characters (with an ellipsis)."""
    return name if len(name) <= n else name[: n - 1] + "…"


def confusion_figure(result: EvaluationResult, normalized: bool = False, max_classes: int = MAX_FIGURE_CLASSES):
    """An annotated heat map of the confusion matrix (rows true, columns predicted).

    With more than ``max_classes`` classes it shows the sub-matrix of the
    ``max_classes`` classes with the most off-diagonal mass (the full matrix is
    in the CSV). ``normalized=True`` shows rows divided by class support.
    """
    K = result.num_classes
    present = present_classes(result)
    if len(present) < K:  # a subset of the model's classes in the data: rows and columns of those only
        sub = result.confusion[present][:, present]
        idx = present if len(present) <= max_classes else [present[i] for i in most_confused_classes(sub, max_classes)]
    else:
        idx = list(range(K)) if K <= max_classes else most_confused_classes(result.confusion, max_classes)
    ix = torch.tensor(idx)
    full = (result.confusion_normalized if normalized else result.confusion)[ix].double()
    M = full[:, ix]
    other = full.sum(1) - M.sum(1)  # predictions of a class not shown
    labels = [short(result.class_names[i]) for i in idx]
    xlabels = list(labels)
    if len(idx) < K and bool((other > 1e-12).any()):
        M = torch.cat([M, other[:, None]], 1)
        xlabels.append("other classes")
    Mn = M.numpy()
    m = len(idx)
    side = max(4.0, 0.42 * m + 2.2)
    fig, ax = subplots(figsize=(side + 0.8, side))
    vmax = 1.0 if normalized else max(1.0, float(Mn.max()))
    im = ax.imshow(Mn, cmap="Blues", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="fraction of the true class" if normalized else "count")
    long = max(map(len, xlabels)) > 3
    tfs = 10 if m <= 10 else 8
    ax.set_xticks(
        range(len(xlabels)), xlabels, rotation=60 if long else 0, ha="right" if long else "center", fontsize=tfs
    )
    ax.set_yticks(range(m), labels, fontsize=tfs)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fs = 9 if m <= 10 else 7 if m <= 16 else 6
    for i in range(m):
        for j in range(len(xlabels)):
            v = Mn[i, j]
            txt = f"{v:.2f}" if normalized else f"{int(v)}"
            if v == 0 or txt == "0.00":
                continue
            ax.text(j, i, txt, ha="center", va="center", fontsize=fs, color="white" if v > 0.55 * vmax else "black")
    what = "normalised by class support (rows sum to 1)" if normalized else "counts"
    title = f"Confusion matrix, {what}"
    if m < K and len(present) < K:
        title += (
            f"\nthe {m} classes present in the data"
            if m == len(present)
            else f"\n{m} of the {len(present)} classes present, with the most confusions"
        ) + f" (of {K}; full matrix in the CSV)"
    elif m < K:
        title += f"\n{m} of {K} classes with the most confusions (full matrix in the CSV)"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def topk_figure(image: torch.Tensor, top: list[tuple[str, float]], title: str = ""):
    """One photo with a bar chart of its top-k class probabilities."""
    fig, (a0, a1) = subplots(1, 2, figsize=(6.4, 2.4), gridspec_kw={"width_ratios": [1, 1.5]})
    show_image(a0, image, title)
    names = [short(n, 22) for n, _ in top][::-1]
    vals = [p for _, p in top][::-1]
    bars = a1.barh(range(len(vals)), vals, color=["#9db7e0"] * (len(vals) - 1) + ["#2f6fdf"])
    a1.set_yticks(range(len(vals)), names, fontsize=8)
    a1.set_xlim(0, 1)
    a1.set_xlabel("probability", fontsize=8)
    a1.tick_params(axis="x", labelsize=7)
    for b, v in zip(bars, vals, strict=True):
        inside = v > 0.8
        a1.text(
            v - 0.02 if inside else v + 0.02,
            b.get_y() + b.get_height() / 2,
            f"{v:.1%}",
            va="center",
            ha="right" if inside else "left",
            fontsize=7,
            color="white" if inside else "black",
        )
    for s in ("top", "right"):
        a1.spines[s].set_visible(False)
    fig.tight_layout()
    return fig
