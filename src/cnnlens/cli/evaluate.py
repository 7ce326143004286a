"""`cnnlens evaluate`: top-k accuracy, per-class table, confusion matrices (PNG, CSV, JSON) and a report."""

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
    print_table,
)
from .options import BatchSize, Device, Force, LabelledData, Model, Out, Pretrained, TrustPickle, Weights
from .session import session

# Imported late, inside functions: cnnlens.evaluation (imports torch), rich.table (≈7 ms). `cnnlens --help` imports
# this module, and torch alone would add ≈2 s to it.


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


#: evaluate's own options
EvalTopk = Annotated[
    list[str] | None,
    typer.Option(
        "--topk",
        "-k",
        help="k values for top-k accuracy, e.g. --topk 1 5 (default 1 5, without k above the number of classes).",
    ),
]
EvalWorkers = Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes.")]


@app.command(context_settings={"allow_extra_args": True})
@model_options
def evaluate(
    *,
    ctx: typer.Context,
    model: Model,
    data: LabelledData,
    topk: EvalTopk = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    batch_size: BatchSize = 64,
    workers: EvalWorkers = 0,
    device: Device = "cpu",
    out: Out = Path("cnnlens-out"),
    force: Force = False,
) -> None:
    """Top-k accuracy, per-class precision/recall and the confusion matrix (raw and normalised by class support).

    Writes confusion.png/.csv/.json (raw and normalised), per_class.csv,
    evaluation.json and index.html into --out. Under `torchrun --nproc_per_node N
    -m cnnlens evaluate ...` each process evaluates a shard; rank 0 writes.
    """
    from ..evaluation import evaluate as run_evaluate
    from ..evaluation import report_section

    ks = _topk_values(topk, ctx.args)  # `--topk 1 3`: click leaves the 3 in ctx.args
    report_dir = out_dir(out, force, data, weights)
    with session(model, weights, pretrained, trust_pickle, device) as S:
        ds = S.dataset(data, labels_for="cnnlens evaluate")
        with S.progress(f"evaluating {model}") as update:
            result = run_evaluate(
                S.model, ds, topk=ks, batch_size=batch_size, device=S.device, progress=update, num_workers=workers
            )
        if not S.writes:
            return
        print_result(result)
        rep = new_report(f"cnnlens evaluate: {model}", f"{model} on {data}.", S.model)
        settings = {
            "model": model,
            "data": data,
            "labels": getattr(ds, "cnnlens_labels", "given by the data"),
            "top-k": list(result.topk_accuracy),
            "n": result.n,
            "batch size": batch_size,
            "device": S.device,
            "processes": S.world,
        }
        report_section(rep, result, settings=settings)
        for name, blob in result.files().items():
            rep.file(name, blob)
        index = report_dir.write(rep)
        console.print(f"wrote {index.parent}: {EVALUATE_FILES}", highlight=False)


EVALUATE_FILES = "confusion.png/.csv/.json (raw and normalised), per_class.csv, evaluation.json, index.html"
