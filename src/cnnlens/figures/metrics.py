"""Trust drawn: the leaderboard's example maps with their boxes, the sanity check's cascade.

Takes a :class:`~cnnlens.metrics.Leaderboard` and a :class:`~cnnlens.metrics.SanityCheck` (duck-typed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.patches import Rectangle

from ..registry import title_of
from ..viz import overlay, subplots
from .attribution import GUIDED, GUIDED_MARK

if TYPE_CHECKING:
    from ..metrics.benchmark import Leaderboard


def draw_objects(ax, box=None, mask=None, true_box=None) -> None:
    """What a map became, over its image on ``ax``: the ground-truth box (x0, y0, x1, y1, end exclusive) in
    white, the outline of the map-seeded GrabCut mask (H×W) in cyan and the box cut from the map (Zhou et al.
    2016) dashed in yellow; an empty mask or box is not drawn. The leaderboard and the explorer draw with it."""
    if true_box is not None:
        x0, y0, x1, y1 = (float(v) for v in true_box)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.2))
    if mask is not None and bool(mask.any()):
        ax.contour(mask.float().numpy(), levels=[0.5], colors="cyan", linewidths=0.8)
    if box is not None and bool((box[2:] > box[:2]).all()):
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.0, ls="--"))


def examples_figure(lb: Leaderboard, images, boxes=None, class_names=None):
    """Each method's maps (rows) over the first images (columns), the ground-truth box drawn in white; where
    the leaderboard scored them, the box cut from the map (Zhou et al. 2016) dashed in yellow and the outline
    of the map-seeded GrabCut mask (Simonyan et al. 2014) in cyan."""
    k = min(len(images), min(len(v) for v in lb.examples.values()))
    fig, axes = subplots(len(lb.methods), k, figsize=(1.9 * k, 1.9 * len(lb.methods)), squeeze=False)
    for r, m in enumerate(lb.methods):
        for c in range(k):
            ax = axes[r][c]
            overlay(ax, images[c], lb.examples[m][c].abs(), colorbar=False, alpha=0.55)
            got = getattr(lb, "objects", {}).get(m, {})
            draw_objects(
                ax,
                box=got["boxes"][c] if "boxes" in got else None,
                mask=got["masks"][c] if "masks" in got else None,
                true_box=boxes[c] if boxes is not None else None,
            )
            if c == 0:
                ax.text(-0.05, 0.5, m, transform=ax.transAxes, ha="right", va="center", fontsize=9)
                if m in GUIDED:
                    ax.text(
                        -0.05,
                        0.3,
                        GUIDED_MARK,
                        transform=ax.transAxes,
                        ha="right",
                        va="center",
                        fontsize=7,
                        color="#b35900",
                    )
    fig.tight_layout()
    return fig


def cascade_figure(s, names=None):
    """Mean Spearman ρ (over the images; each image as a dot) of every method at each cascade step."""
    fig, ax = subplots(figsize=(7.5, 3.6))
    steps = list(range(len(s.layers)))
    for k in s.methods:
        c = s.correlations(k)
        (line,) = ax.plot(steps, c.mean(1).numpy(), marker="o", label=title_of(k))
        for j in steps:
            ax.scatter([j] * c.shape[1], c[j].numpy(), s=8, color=line.get_color(), alpha=0.5)
    ax.set_xticks(steps)
    ax.set_xticklabels(
        [lbl.replace("net.", "").replace(".0.conv_pw", "") for lbl in s.layers], rotation=30, ha="right", fontsize=8
    )
    ax.set_xlabel("re-initialised from the top down to", fontsize=9)
    ax.set_ylabel("Spearman ρ with the trained map", fontsize=9)
    low = min([-0.2] + [float(s.correlations(k).min()) - 0.05 for k in s.methods])
    ax.set_ylim(low, 1.05)
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Cascading randomisation" + (f" ({', '.join(names)})" if names else ""), fontsize=10)
    fig.tight_layout()
    return fig
