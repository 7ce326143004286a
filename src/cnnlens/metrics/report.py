"""The leaderboard's report section ("How far to trust each map"); takes the report object, imports no
presentation code."""

from __future__ import annotations

import json
from html import escape

from ..figures.metrics import examples_figure
from ..registry import title_of
from .benchmark import Leaderboard
from .dataset_benchmark import BenchmarkRun

#: short column labels
LABELS = {
    "pointing_game": "pointing game",
    "relevance_mass_accuracy": "mass accuracy",
    "relevance_rank_accuracy": "rank accuracy",
    "localisation_iou": "box IoU",
    "localisation_accuracy": "loc. accuracy",
    "segmentation_iou": "segment IoU",
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
    "|box| most relevant pixels in the box (Arras et al. 2022); <i>box IoU</i> — the map made into a box as "
    "Zhou et al. (2016) did for CAM: the largest connected region above 20 % of the map's maximum, its "
    "bounding box, and that box's intersection over union with the true one; <i>loc. accuracy</i> — the "
    "share of boxes with IoU ≥ 0.5, the ILSVRC criterion (for the explained class, so “GT-known”); "
    "<i>segment IoU</i> — the map made into a mask as Simonyan et al. (2014, §3) did: GrabCut seeded with "
    "the map's top 5 % as foreground and its bottom 30 % as background, the largest foreground region, "
    "and its IoU with the object's own pixels (on cluttered digits: the digit's ink).</li>"
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
    header = (
        ["method"] + [f"{LABELS.get(k, k)} {'↑' if lb.higher_is_better[k] else '↓'}" for k in lb.metrics] + ["s / map"]
    )
    rows = []
    for m in lb.methods:
        rows.append([m] + [cell(lb.aggregates[m][k]) for k in lb.metrics] + [f"{lb.seconds_per_map[m]:.4f}"])
    return header, rows


def leaderboard_section(
    report,
    lb: Leaderboard,
    settings: dict | None = None,
    title: str = "How far to trust each map",
    figures: list | None = None,
):
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
    sec.text(
        f"<p>{lb.n} images. Seconds per map are wall time on this machine (shared CPUs: a rough "
        "figure). Every per-image score is in results.json and leaderboard.csv.</p>"
    )
    for fig, caption in figures or []:
        sec.figure(fig, caption)
    sec.data("leaderboard", lb.to_dict())
    return sec


def _html_table(header, rows) -> str:
    def c(v):
        s = str(v)
        return s if s.startswith("<b>") else escape(s)

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="leaderboard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


SANITY_INTRO = (
    "<h3>Sanity check: does the map depend on the model?</h3>"
    "<p>Adebayo et al. (NeurIPS 2018, “Sanity checks for saliency maps”) re-initialised a trained network's "
    "layers from the top (the classifier) down, one more block at a time, and compared each method's map with "
    "the trained network's by Spearman rank correlation ρ. A map that explains the model must change once the "
    "weights are random. They found that the gradient and Grad-CAM do, while guided backprop and guided "
    "Grad-CAM barely change: they mostly show the image's edges, passed through the ReLU masks, whatever the "
    "top of the network says. Reproduced here on EfficientNet-Lite0 and the photos: guided backprop stays at "
    "ρ ≈ 1 while the gradient and Grad-CAM fall at the first step. (cnnlens' guided Grad-CAM is guided backprop "
    "times the upsampled Grad-CAM, so its ρ follows the Grad-CAM factor; its fine detail is still guided "
    "backprop's.) ρ is computed on the maps "
    "as shown (|gradient| for saliency and guided backprop); a constant map (Grad-CAM is all zero once the "
    "classifier is random, for some images) has no ranks left and counts as ρ = 0.</p>"
)


def sanity_rows(s) -> tuple[list[str], list[list]]:
    header = ["method"] + [lbl.replace("net.", "").replace(".0.conv_pw", "") + " ↓" for lbl in s.layers]

    rows = [[title_of(k)] + [round(v, 3) for v in s.mean(k).tolist()] for k in s.methods]
    return header, rows


def add_benchmark_section(report, run: BenchmarkRun, settings: dict | None = None, class_names=None):
    """``cnnlens benchmark``'s report: :func:`leaderboard_section` for a :class:`BenchmarkRun` with each method's
    map on the first images (when the leaderboard kept examples), and the files leaderboard.csv and
    leaderboard.json."""
    lb, d = run.leaderboard, run.data
    figs = []
    if lb.examples:
        figs.append(
            (
                examples_figure(lb, d.x[:4].cpu(), d.boxes[:4] if d.boxes is not None else None, class_names),
                "Each method's map (|value|) on the first images, the ground-truth box in white; where "
                "scored, the box cut from the map (Zhou et al. 2016) dashed yellow and the outline of "
                "the map-seeded GrabCut mask (Simonyan et al. 2014) in cyan.",
            )
        )
    sec = leaderboard_section(report, lb, settings=settings, figures=figs)
    report.file("leaderboard.csv", lb.csv())
    report.file("leaderboard.json", json.dumps(lb.to_dict(), indent=2))
    return sec
