"""`cnnlens evaluate`: top-k accuracy, per-class table, confusion matrices (PNG, CSV, JSON) and a report."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (
    UserError,
    app,
    console,
    distributed,
    load_model_from_options,
    model_options,
    names_from_data,
    new_report,
    out_dir,
    print_table,
    progress_bar,
)
from .options import BatchSize, Device, Force, LabelledData, Model, Out, Pretrained, TrustPickle, Weights


def _topk_values(topk: list[str] | None, more: list[str] | None) -> tuple[int, ...] | None:
    """``--topk 1 3``, ``--topk 1 --topk 3`` and ``--topk 1,3`` all give (1, 3)."""
    if more and not topk:
        raise UserError(f"unexpected argument {more[0]!r}; options are given as --name value (see --help)")
    if not topk:
        return None
    vals = []
    for extra, tokens in ((False, topk), (True, more or [])):
        for tok in tokens:
            for part in str(tok).replace(",", " ").split():
                try:
                    vals.append(int(part))
                except ValueError:
                    if extra:
                        raise UserError(
                            f"unexpected argument {part!r}; options are given as --name value (see --help)"
                        ) from None
                    raise UserError(f"--topk {part!r} is not an integer; give k values like --topk 1 5") from None
    return tuple(vals)


def print_result(result, out=None) -> None:
    """Top-k accuracy and the per-class table on the terminal (stdout)."""
    from rich.console import Console
    from rich.table import Table

    c = out or Console()
    acc = "   ".join(f"top-{k}: [bold]{v:.2%}[/]" for k, v in result.topk_accuracy.items())
    c.print(f"{result.n} samples, {result.num_classes} classes   {acc}")
    from ..evaluation import per_class_shown

    rows, what = per_class_shown(result)
    title = "per-class" if what.startswith("all") else f"per-class: {what} (all in per_class.csv)"
    t = Table(title=title, title_justify="left")
    for h in ("class", "precision", "recall", "F1", "support"):
        t.add_column(h, justify="left" if h == "class" else "right")
    for r in rows:
        t.add_row(str(r["class"]), f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    print_table(t, c)
    if result.most_confused:
        pairs = ", ".join(f"{p['true']}→{p['predicted']} ({p['count']})" for p in result.most_confused[:5])
        c.print(f"most confused (true→predicted): {pairs}")


@app.command(context_settings={"allow_extra_args": True})
@model_options
def evaluate(
    *,
    ctx: typer.Context,
    model: Model,
    data: LabelledData,
    topk: list[str] | None = typer.Option(
        None,
        "--topk",
        "-k",
        help="k values for top-k accuracy, e.g. --topk 1 5 (default 1 5, without k above the number of classes).",
    ),
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    batch_size: BatchSize = 64,
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader worker processes."),
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Top-k accuracy, per-class precision/recall and the confusion matrix (raw and normalised by class support).

    Writes confusion.png/.csv/.json (raw and normalised), per_class.csv,
    evaluation.json and index.html into --out. Under `torchrun --nproc_per_node N
    -m cnnlens evaluate ...` each process evaluates a shard; rank 0 writes.
    """
    from ..data import as_dataset, require_labels
    from ..evaluation import evaluate as run_evaluate
    from ..evaluation import report_section

    ks = _topk_values(topk, ctx.args)  # `--topk 1 3`: click leaves the 3 in ctx.args
    out = out_dir(out, force, data, weights)
    with distributed(device) as (rank, world, dev):
        m = load_model_from_options(model, weights, pretrained, trust_pickle, dev)
        ds = as_dataset(data, m)
        require_labels(ds, "cnnlens evaluate")
        names_from_data(m, ds)
        with progress_bar(f"evaluating {model}", rank=rank, world=world) as update:
            result = run_evaluate(
                m, ds, topk=ks, batch_size=batch_size, device=dev, progress=update, num_workers=workers
            )
        if rank != 0:
            return
        print_result(result)
        rep = new_report(f"cnnlens evaluate: {model}", f"{model} on {data}.", m)
        settings = {
            "model": model,
            "data": data,
            "labels": getattr(ds, "cnnlens_labels", "given by the data"),
            "top-k": list(result.topk_accuracy),
            "n": result.n,
            "batch size": batch_size,
            "device": dev,
            "processes": world,
        }
        report_section(rep, result, settings=settings)
        for name, blob in result.files().items():
            rep.file(name, blob)
        index = out.write(rep)
        console.print(
            f"wrote {index.parent}: confusion.png/.csv/.json (raw and normalised), per_class.csv, "
            "evaluation.json, index.html",
            highlight=False,
        )
