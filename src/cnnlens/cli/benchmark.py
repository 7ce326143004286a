"""`cnnlens benchmark`: how far to trust each attribution method — a leaderboard on every metric."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import (DEVICE_OPT, FORCE_OPT, PRETRAINED_OPT, TRUST_OPT, WEIGHTS_OPT, UserError, app, console,
                     model_options, new_report, out_dir)
from .session import open_model


#: compact column labels for the terminal
SHORT = {"pointing_game": "PG", "relevance_mass_accuracy": "mass", "relevance_rank_accuracy": "rank",
         "localisation_iou": "boxIoU", "localisation_accuracy": "loc", "segmentation_iou": "segIoU",
         "deletion_auc": "del", "insertion_auc": "ins", "faithfulness_correlation": "FC", "road_morf": "MoRF",
         "road_lerf": "LeRF", "max_sensitivity": "MS", "model_parameter_randomisation": "MPRT"}


def print_leaderboard(lb, title: str) -> None:
    """The leaderboard as a rich table on stdout (mean±half-width of the 95 % interval; best per column bold)."""
    from rich.console import Console
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
    out.print("PG pointing game · mass/rank relevance mass/rank accuracy · boxIoU IoU of the box cut from the map "
              "(largest region ≥ 0.2·max, Zhou et al. 2016) · loc share with boxIoU ≥ 0.5 (ILSVRC criterion, "
              "GT-known) · segIoU IoU of GrabCut seeded by the map's top 5 % / bottom 30 % with the object's "
              "pixels (Simonyan et al. 2014 §3) · del/ins deletion/insertion AUC · "
              "FC faithfulness correlation · MoRF/LeRF ROAD · MS max-sensitivity · MPRT mean Spearman ρ under "
              "cascading randomisation", style="dim")


@app.command()
@model_options
def benchmark(
    model: str = typer.Option("cluttered-digits-cnn", "--model", "-m",
                              help="cluttered-digits-cnn (default), or any model cnnlens loads."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="cluttered-digits (default for "
                                       "cluttered-digits-cnn; boxes built in), or an ImageFolder directory."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="Boxes CSV for an ImageFolder: header "
                                         "path,x0,y0,x1,y1; path relative to the folder; pixels of the stored "
                                         "image, x1/y1 exclusive. Without it the localisation metrics are left out."),
    methods: str = typer.Option("all", "--methods", help="Comma-separated attribution methods, or all."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated metrics (default: all that "
                                          "apply): pointing-game, relevance-mass-accuracy, relevance-rank-accuracy, "
                                          "deletion-auc, insertion-auc, faithfulness-correlation, road-morf, "
                                          "road-lerf, max-sensitivity, model-parameter-randomisation."),
    n: int = typer.Option(16, "--n", min=2, help="Images scored (the first n of the held-out split / folder)."),
    weights: Optional[Path] = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_pickle: bool = TRUST_OPT,
    device: str = DEVICE_OPT,
    out: Path = typer.Option(Path("cnnlens-benchmark"), "--out", "-o", help="Output directory (report, JSON, CSV)."),
    force: bool = FORCE_OPT,
) -> None:
    """A leaderboard of every attribution method on every metric, with 95 % confidence intervals over the
    images and seconds per map; printed, and written as leaderboard.csv, leaderboard.json and index.html."""
    import torch

    from ..metrics.benchmark import METRICS, benchmark as run_benchmark
    from ..figures.metrics import examples_figure
    from ..metrics.report import leaderboard_section
    from .explain import parse_methods

    out = out_dir(out, force, data, boxes, weights)
    S = open_model(model, weights, pretrained, trust_pickle, device)
    m = S.model
    if data is None:
        if model != "cluttered-digits-cnn":
            raise UserError("--data: give an ImageFolder directory (with --boxes for the localisation metrics), "
                            "or use --model cluttered-digits-cnn")
        data = "cluttered-digits"
    objects = None  # the objects' own pixels, for the segmentation IoU (cluttered-digits: the digit's ink)
    if data == "cluttered-digits":
        from ..data import cluttered_digits

        if boxes is not None:
            raise UserError("--boxes: cluttered-digits has its own boxes; leave --boxes out")
        if tuple(m.spec.input_size) != (64, 64) or m.spec.channels != 1:
            raise UserError(f"cluttered-digits images are 1×64×64 but {model} takes "
                            f"{m.spec.channels}×{m.spec.input_size[0]}×{m.spec.input_size[1]}; use a model "
                            "made for them (cluttered-digits-cnn)")
        ds = cluttered_digits("test")
        x, y, b = ds.x[:n], ds.y[:n], ds.boxes[:n]
        objects = ds.ink[:n]
    else:
        p = Path(data).expanduser()
        if not p.is_dir():
            raise UserError(f"--data {data}: not cluttered-digits and no such directory; give an ImageFolder")
        if boxes is not None:
            from ..data import boxed_image_folder

            ds = boxed_image_folder(p, boxes, m, limit=n)
            x, y, b = ds.x, ds.y, ds.boxes
        else:
            from ..data import image_folder

            ds = image_folder(p, m)
            k = min(n, len(ds))
            xs, ys = zip(*[ds[i] for i in range(k)])
            x, y, b = torch.stack(xs), torch.tensor(ys), None
    if len(y) < 2:
        raise UserError(f"--data {data}: only {len(y)} image(s) to score; a confidence interval needs at least 2")
    mnames = parse_methods(methods)
    knames = None
    if metrics:
        knames = [s.strip().lower().replace("-", "_") for s in metrics.split(",") if s.strip()]
        bad = [k for k in knames if k not in METRICS]
        if bad:
            raise UserError(f"--metrics: unknown {', '.join(bad)}; choose from "
                            f"{', '.join(k.replace('_', '-') for k in METRICS)}")
    dev = next(iter(m.parameters())).device
    with S.progress(f"benchmarking {len(mnames)} methods on {len(y)} images") as update:
        lb = run_benchmark(m, x.to(dev), y=y.to(dev), boxes=b, objects=objects, methods=mnames, metrics=knames,
                           progress=update)

    print_leaderboard(lb, f"How far to trust each map — {model} on {data}, {lb.n} images")

    rep = new_report(f"cnnlens benchmark: {model}", f"{len(mnames)} attribution methods on {data}.", m)
    settings = {"model": model, "data": data, "boxes": str(boxes) if boxes else ("built in" if b is not None else "none"),
                "n": lb.n, "target": lb.settings["target"], "device": str(dev)}
    figs = []
    if lb.examples:
        names = getattr(m.spec, "class_names", None)
        figs.append((examples_figure(lb, x[:4].cpu(), b[:4] if b is not None else None, names),
                     "Each method's map (|value|) on the first images, the ground-truth box in white; where "
                     "scored, the box cut from the map (Zhou et al. 2016) dashed yellow and the outline of "
                     "the map-seeded GrabCut mask (Simonyan et al. 2014) in cyan."))
    leaderboard_section(rep, lb, settings=settings, figures=figs)
    rep.file("leaderboard.csv", lb.csv())
    rep.file("leaderboard.json", json.dumps(lb.to_dict(), indent=2))
    index = out.write(rep)
    console.print(f"wrote {index.parent}: index.html, leaderboard.csv, leaderboard.json", highlight=False)
