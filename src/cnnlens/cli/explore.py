"""`cnnlens explore`: scan a dataset into the explorer's store and serve the local web app (or export it)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from ..extras import require
from .common import (
    UserError,
    app,
    console,
    model_options,
    out_dir,
    progress_bar,
)
from .options import Device, Force, LabelledData, Model, Pretrained, TrustPickle, Weights
from .session import session

# Imported late, inside functions: cnnlens.explore (torch, Starlette), uvicorn (≈70 ms, optional), rich.progress
# (≈13 ms). `cnnlens --help` imports this module, and torch alone would add ≈2 s to it.


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnlens" / "explore"


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None


#: explore's own options
ExploreHost = Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0 opens it to the network).")]
ExplorePort = Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")]
ExploreCache = Annotated[
    Path | None,
    typer.Option("--cache", help="Cache folder for the scan and the explanations (default ~/.cache/cnnlens/explore)."),
]
ExploreScanOnly = Annotated[bool, typer.Option("--scan-only", help="Fill the store and exit (works under torchrun).")]
ExploreExport = Annotated[
    Path | None,
    typer.Option(
        "--export",
        help="Write the overview and the most confused cells' galleries as static pages into this folder, then exit.",
    ),
]
ExploreCells = Annotated[
    int, typer.Option("--cells", min=1, help="With --export: how many of the most confused cells.")
]
ExploreBatchSize = Annotated[
    int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass of the scan.")
]


@app.command()
@model_options
def explore(
    *,
    model: Model,
    data: LabelledData,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    host: ExploreHost = "127.0.0.1",
    port: ExplorePort = 8765,
    cache: ExploreCache = None,
    scan_only: ExploreScanOnly = False,
    export: ExploreExport = None,
    cells: ExploreCells = 6,
    force: Force = False,
    batch_size: ExploreBatchSize = 64,
    device: Device = "cpu",
) -> None:
    """A local web app from the confusion matrix to the explanation of each sample.

    Scans --data once (reused while the weights and the files are unchanged; a
    stopped scan resumes), then serves http://HOST:PORT: the overview with the
    confusion matrix, each cell's samples with Grad-CAM toward the true and the
    predicted class, and each sample's attributions, occlusion and attack.
    All model work runs in one background thread. `torchrun --nproc_per_node N -m
    cnnlens explore --scan-only ...` fills the store with N processes.
    """
    require("explore", what="cnnlens explore")  # before any work: the pages need Starlette, the server uvicorn
    from ..explore.store import scan_dataset

    cache = (cache or default_cache()).expanduser()
    if cache.exists() and not cache.is_dir():
        raise UserError(f"--cache {cache} is a file; give a folder")
    # checked before any work
    export_to = out_dir(export, force, data, weights, option="--export") if export is not None else None
    one = None if scan_only else "under torchrun only --scan-only runs (the server is one process); add --scan-only"
    with session(model, weights, pretrained, trust_pickle, device, one_process=one) as S:
        ds = scan_dataset(data, S.model)
        if scan_only or export is not None:
            store = _scan(S.model, model, data, ds, cache, batch_size, S.device, S.rank, S.world)
            if S.writes and export is not None:
                _export(S.model, data, cache, store, export_to, cells, batch_size, S.device, force)
            return
        serve(S.model, data, ds, cache, host, port, batch_size, S.device)


def _scan(m, model: str, data: str, ds, cache: Path, batch_size: int, device: str, rank: int, world: int):
    """Fill the store (resuming a stopped scan) and, on rank 0, print the accuracy and where the store is."""
    from ..explore.store import build_store

    try:
        with progress_bar(f"scanning {data} with {model}", total=len(ds), rank=rank, world=world) as update:
            store = build_store(m, data, cache, batch_size=batch_size, device=device, progress=update, dataset=ds)
    except KeyboardInterrupt:
        console.print(
            f"interrupted: the scan's finished chunks are kept in {cache}; run the same command again to resume it",
            highlight=False,
        )
        raise SystemExit(130) from None
    if rank == 0:
        assert store is not None  # rank 0 builds the store
        r = store.evaluation()
        acc = "   ".join(f"top-{k}: {v:.2%}" for k, v in r.topk_accuracy.items())
        console.print(f"{r.n} samples, {r.num_classes} classes   {acc}", highlight=False)
        console.print(f"store: {store.path}", highlight=False)
    return store


def _export(m, data: str, cache: Path, store, target, cells: int, batch_size: int, device: str, force: bool) -> None:
    """Write the overview and the most confused cells' galleries as static pages into ``target``."""
    from ..explore.export import export as run_export
    from ..explore.service import Explorer

    ex = Explorer(m, data, cache, batch_size=batch_size, device=device, data_label=data)
    ex.store = store
    try:
        with progress_bar("drawing the galleries") as update:
            index = run_export(ex, target.path, cells=cells, progress=update, force=force, protect=target.protect)
    finally:
        ex.close()
    console.print(f"wrote {index}", highlight=False)


def serve(m, data: str, ds, cache: Path, host: str, port: int, batch_size: int, device: str) -> None:
    """Start the scan in the worker, print the URL and serve until Ctrl-C."""
    import uvicorn

    from ..explore.app import make_app
    from ..explore.service import Explorer

    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            f"[bold yellow]warning:[/] listening on {host}: anyone who can reach this machine on port "
            f"{port} can use the explorer and run your model (use the default --host 127.0.0.1 to keep "
            "it local)",
            highlight=False,
        )
    _check_port(host, port)
    ex = Explorer(m, data, cache, batch_size=batch_size, device=device, data_label=data)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = None
    if console.is_terminal:
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        task = bar.add_task(f"scanning {data}", total=len(ds))
        bar.start()

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(task, completed=done, total=total)
            if done >= total:
                bar.stop()

    job = ex.start_scan(progress)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/"
    console.print(f"cnnlens explore: {url}  (Ctrl-C stops; the page fills in when the scan is done)", highlight=False)
    try:
        local = host in ("127.0.0.1", "localhost", "::1")
        app = make_app(ex, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"] if local else None)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        if bar is not None:
            bar.stop()
        ex.close(timeout=2.0)  # a scan still running stops with the process; its written chunks stay
        stopped = job.status in ("queued", "running")
        if stopped:
            console.print(
                f"interrupted: the scan stopped before the end (its finished chunks are kept in {cache}); "
                "run the same command again to resume it",
                highlight=False,
            )
        if job.status == "error":
            console.print(f"[bold red]error:[/] the scan failed: {job.error}", highlight=False)
    if stopped:
        raise SystemExit(130)  # stopped by Ctrl-C before the scan finished: not a success
