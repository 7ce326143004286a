"""`cnnlens benchmark`: how far to trust each attribution method — a leaderboard on every metric."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .common import (
    UserError,
    app,
    console,
    model_options,
    new_report,
    out_dir,
)
from .options import Device, Force, Pretrained, TrustPickle, Weights
from .session import open_model

# Imported late, inside functions: cnnlens.metrics (imports torch), rich.table (≈7 ms). `cnnlens --help` imports
# this module, and torch alone would add ≈2 s to it. `.explain` too: imported first it would list `explain` above
# `benchmark` in `cnnlens --help` (commands are listed in the order they register).

#: compact column labels for the terminal
SHORT = {
    "pointing_game": "PG",
    "relevance_mass_accuracy": "mass",
    "relevance_rank_accuracy": "rank",
    "localisation_iou": "boxIoU",
    "localisation_accuracy": "loc",
    "segmentation_iou": "segIoU",
    "deletion_auc": "del",
    "insertion_auc": "ins",
    "faithfulness_correlation": "FC",
    "road_morf": "MoRF",
    "road_lerf": "LeRF",
    "max_sensitivity": "MS",
    "model_parameter_randomisation": "MPRT",
}


def print_leaderboard(lb, title: str) -> None:
    """The leaderboard as a rich table on stdout (mean±half-width of the 95 % interval; best per column bold)."""
    from rich.table import Table

    out = Console()
    width = 24 + 12 * (len(lb.metrics) + 1)
    if out.width < width:
        out = Console(width=width)
    t = Table(title=title + " (mean±95 % CI half-width; best bold)", title_justify="left")
    t.add_column("method", justify="left")
    for k in lb.metrics:
        t.add_column(f"{SHORT.get(k, k)} {'↑' if lb.higher_is_better[k] else '↓'}", justify="right")
    t.add_column("s/map", justify="right")
    best = {k: lb.best(k) for k in lb.metrics}
    for m in lb.methods:
        cells = []
        for k in lb.metrics:
            a = lb.aggregates[m][k]
            c = "—" if a.n == 0 else f"{a.mean:.2f}±{a.half_width:.2f}"
            cells.append(f"[bold]{c}[/]" if best[k] == m else c)
        t.add_row(m, *cells, f"{lb.seconds_per_map[m]:.3f}")
    out.print(t)
    out.print(
        "PG pointing game · mass/rank relevance mass/rank accuracy · boxIoU IoU of the box cut from the map "
        "(largest region ≥ 0.2·max, Zhou et al. 2016) · loc share with boxIoU ≥ 0.5 (ILSVRC criterion, "
        "GT-known) · segIoU IoU of GrabCut seeded by the map's top 5 % / bottom 30 % with the object's "
        "pixels (Simonyan et al. 2014 §3) · del/ins deletion/insertion AUC · "
        "FC faithfulness correlation · MoRF/LeRF ROAD · MS max-sensitivity · MPRT mean Spearman ρ under "
        "cascading randomisation",
        style="dim",
    )


#: benchmark's own options
BenchModel = Annotated[
    str, typer.Option("--model", "-m", help="cluttered-digits-cnn (default), or any model cnnlens loads.")
]
BenchData = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help="cluttered-digits (default for cluttered-digits-cnn; boxes built in), or an ImageFolder directory.",
    ),
]
BenchBoxes = Annotated[
    Path | None,
    typer.Option(
        "--boxes",
        help="Boxes CSV for an ImageFolder: header "
        "path,x0,y0,x1,y1; path relative to the folder; pixels of the stored "
        "image, x1/y1 exclusive. Without it the localisation metrics are left out.",
    ),
]
BenchMethods = Annotated[str, typer.Option("--methods", help="Comma-separated attribution methods, or all.")]
BenchMetrics = Annotated[
    str | None,
    typer.Option(
        "--metrics",
        help="Comma-separated metrics (default: all that "
        "apply): pointing-game, relevance-mass-accuracy, relevance-rank-accuracy, "
        "deletion-auc, insertion-auc, faithfulness-correlation, road-morf, "
        "road-lerf, max-sensitivity, model-parameter-randomisation.",
    ),
]
BenchN = Annotated[int, typer.Option("--n", min=2, help="Images scored (the first n of the held-out split / folder).")]
BenchOut = Annotated[Path, typer.Option("--out", "-o", help="Output directory (report, JSON, CSV).")]


@app.command()
@model_options
def benchmark(
    *,
    model: BenchModel = "cluttered-digits-cnn",
    data: BenchData = None,
    boxes: BenchBoxes = None,
    methods: BenchMethods = "all",
    metrics: BenchMetrics = None,
    n: BenchN = 16,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    out: BenchOut = Path("cnnlens-benchmark"),
    force: Force = False,
) -> None:
    """A leaderboard of every attribution method on every metric, with 95 % confidence intervals over the
    images and seconds per map; printed, and written as leaderboard.csv, leaderboard.json and index.html."""
    from ..metrics.benchmark import METRICS
    from ..metrics.dataset_benchmark import benchmark_dataset, load_benchmark_data
    from ..metrics.report import add_benchmark_section
    from .explain import parse_methods

    report_dir = out_dir(out, force, data, boxes, weights)
    S = open_model(model, weights, pretrained, trust_pickle, device)
    if data is None:
        if model != "cluttered-digits-cnn":
            raise UserError(
                "--data: give an ImageFolder directory (with --boxes for the localisation metrics), "
                "or use --model cluttered-digits-cnn"
            )
        data = "cluttered-digits"
    mnames = parse_methods(methods)
    knames = _metrics(metrics, METRICS)
    d = load_benchmark_data(S.model, data, boxes, n)
    with S.progress(f"benchmarking {len(mnames)} methods on {len(d.y)} images") as update:
        run = benchmark_dataset(S.model, d, methods=mnames, metrics=knames, progress=update)
    lb = run.leaderboard
    print_leaderboard(lb, f"How far to trust each map — {model} on {data}, {lb.n} images")
    rep = new_report(f"cnnlens benchmark: {model}", f"{len(mnames)} attribution methods on {data}.", S.model)
    settings = {
        "model": model,
        "data": data,
        "boxes": run.data.boxes_from,
        "n": lb.n,
        "target": lb.settings["target"],
        "device": str(next(iter(S.model.parameters())).device),
    }
    add_benchmark_section(rep, run, settings=settings, class_names=getattr(S.model.spec, "class_names", None))
    index = report_dir.write(rep)
    console.print(f"wrote {index.parent}: index.html, leaderboard.csv, leaderboard.json", highlight=False)


def _metrics(text: str | None, known) -> list[str] | None:
    """--metrics as the leaderboard's names (``-`` or ``_``); None: all that apply."""
    if not text:
        return None
    names = [s.strip().lower().replace("-", "_") for s in text.split(",") if s.strip()]
    bad = [k for k in names if k not in known]
    if bad:
        raise UserError(
            f"--metrics: unknown {', '.join(bad)}; choose from {', '.join(k.replace('_', '-') for k in known)}"
        )
    return names
