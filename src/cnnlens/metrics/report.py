"""The leaderboard's report section ("How far to trust each map"); takes the report object, imports no
presentation code."""

from __future__ import annotations

from .benchmark import Leaderboard

#: short column labels
LABELS = {
    "pointing_game": "pointing game",
    "relevance_mass_accuracy": "mass accuracy",
    "relevance_rank_accuracy": "rank accuracy",
    "deletion_auc": "deletion AUC",
    "insertion_auc": "insertion AUC",
    "faithfulness_correlation": "faithfulness corr.",
    "road_morf": "ROAD MoRF",
    "road_lerf": "ROAD LeRF",
    "max_sensitivity": "max-sensitivity",
    "model_parameter_randomisation": "MPRT ρ",
}

INTRO = (
    "<p>A map answers “where is the model looking?” — but methods disagree, and a map can look right while "
    "explaining nothing. Each row is an attribution method, each column a metric from the evaluation "
    "literature (the reference implementation is Quantus; cnnlens' metrics equal it on the same maps). "
    "Cells are the mean over the images with a 95 % confidence interval (t), ↑ higher is better, ↓ lower; "
    "the best mean per column is bold.</p>"
    "<ul>"
    "<li><b>Localisation</b> (needs the object's box): <i>pointing game</i> — is the map's maximum in the box; "
    "<i>mass accuracy</i> — share of the map's mass in the box; <i>rank accuracy</i> — share of the "
    "|box| most relevant pixels in the box (Arras et al. 2022).</li>"
    "<li><b>Faithfulness</b>: <i>deletion / insertion AUC</i> — the class probability as the most relevant "
    "pixels are blurred away / put back (Petsiuk et al. 2018); <i>faithfulness correlation</i> — does the map's "
    "mass on random pixel subsets predict the logit drop when they are removed (Bhatt et al. 2020); "
    "<i>ROAD</i> — accuracy after the most (MoRF) / least (LeRF) relevant pixels are imputed from their "
    "neighbours, which avoids the edges a constant fill would leave (Rong et al. 2022).</li>"
    "<li><b>Robustness</b>: <i>max-sensitivity</i> — the largest relative change of the map under small "
    "uniform input noise (Yeh et al. 2019).</li>"
    "<li><b>Randomisation</b>: <i>MPRT ρ</i> — Spearman correlation of the map with the map of the model whose "
    "layers are re-initialised from the top, averaged over the cascade (Adebayo et al. 2018). A map that "
    "explains the <em>model</em> must change when the weights do: a high ρ means the map shows the image "
    "more than the model.</li></ul>"
)


def cell(a) -> str:
    if a.n == 0:
        return "—"
    return f"{a.mean:.3f} ± {a.half_width:.3f}"


def leaderboard_table(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the leaderboard: a row per method, ``mean ± half-width`` cells, seconds per map."""
    header = ["method"] + [f"{LABELS.get(k, k)} {'↑' if lb.higher_is_better[k] else '↓'}" for k in lb.metrics] + \
        ["s / map"]
    rows = []
    for m in lb.methods:
        rows.append([m] + [cell(lb.aggregates[m][k]) for k in lb.metrics] + [f"{lb.seconds_per_map[m]:.4f}"])
    return header, rows


def leaderboard_section(report, lb: Leaderboard, settings: dict | None = None,
                        title: str = "How far to trust each map", figures: list | None = None):
    """Add the leaderboard section to ``report`` (a :class:`cnnlens.report.Report`); ``figures``:
    ``[(figure, caption), ...]`` shown below the table."""
    sec = report.section(title, intro=INTRO, settings=settings or {})
    header, rows = leaderboard_table(lb)
    best = {k: lb.best(k) for k in lb.metrics}
    for r in rows:
        for j, k in enumerate(lb.metrics, start=1):
            if best[k] == r[0]:
                r[j] = f"<b>{r[j]}</b>"
    sec.text(_html_table(header, rows))
    sec.text(f"<p>{lb.n} images. Seconds per map are wall time on this machine (shared CPUs: a rough "
             "figure). Every per-image score is in results.json and leaderboard.csv.</p>")
    for fig, caption in figures or []:
        sec.figure(fig, caption)
    sec.data("leaderboard", lb.to_dict())
    return sec


def _html_table(header, rows) -> str:
    from html import escape

    def c(v):
        s = str(v)
        return s if s.startswith("<b>") else escape(s)

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="leaderboard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def examples_figure(lb: Leaderboard, images, boxes=None, class_names=None):
    """Each method's maps (rows) over the first images (columns), the ground-truth box drawn in white."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..viz import overlay

    k = min(len(images), min(len(v) for v in lb.examples.values()))
    fig, axes = plt.subplots(len(lb.methods), k, figsize=(1.9 * k, 1.9 * len(lb.methods)), squeeze=False)
    for r, m in enumerate(lb.methods):
        for c in range(k):
            ax = axes[r][c]
            overlay(ax, images[c], lb.examples[m][c].abs(), colorbar=False, alpha=0.55)
            if boxes is not None:
                x0, y0, x1, y1 = (float(v) for v in boxes[c])
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.2))
            if c == 0:
                ax.text(-0.05, 0.5, m, transform=ax.transAxes, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return fig
