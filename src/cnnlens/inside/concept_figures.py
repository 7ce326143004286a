"""Figures of the concept methods (TCAV, network dissection), drawn on ``matplotlib.figure.Figure``."""

from __future__ import annotations

from ..viz import subplots


def tcav_figure(r):
    """Bars: each concept's mean TCAV score (±1 std over the runs) and the random CAVs' mean; ``*`` above a
    significant concept, ``n.s.`` above one that is not, with the p-value."""
    names = list(r.concepts) + ["random"]
    means = [float(r.scores[i].mean()) for i in range(len(r.concepts))] + [float(r.random_scores.mean())]
    stds = [float(r.scores[i].std()) for i in range(len(r.concepts))] + [float(r.random_scores.std())]
    colours = ["#1f77b4" if bool(s) else "#9ecae1" for s in r.significant] + ["#bbbbbb"]
    fig, ax = subplots(figsize=(1.2 + 1.1 * len(names), 3.4))
    pos = list(range(len(names)))
    ax.bar(pos, means, yerr=stds, color=colours, capsize=3)
    for i in range(len(r.concepts)):
        mark = "*" if bool(r.significant[i]) else "n.s."
        ax.text(
            i,
            min(1.02, means[i] + stds[i] + 0.03),
            f"{mark}\np={float(r.p_values[i]):.2g}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_xticks(pos)
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("TCAV score", fontsize=9)
    target = r.target_name if r.target_name is not None else r.target
    ax.set_title(f"class {target} at {r.layer} ({r.settings.get('runs')} runs)", fontsize=9)
    fig.tight_layout()
    return fig
