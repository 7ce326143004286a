"""Shared CLI plumbing: the Typer app, error handling, progress bars, common options."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="cnnlens",
    help="Explain what an image CNN does: evaluate, explain, look inside, attack. Every command writes files and a report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console(stderr=True)
_state = {"debug": False}


class UserError(Exception):
    """A bad input: reported as one line, exit code 2."""


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what cnnlens chooses (layers, conversions)."),
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.INFO if verbose or debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    """Entry point: run the app, turning bad input into one-line errors."""
    try:
        app(standalone_mode=False)
    except SystemExit:  # typer/click exits (help, usage errors) pass through
        raise
    except Exception as e:  # noqa: BLE001
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            console.print("aborted")
            sys.exit(130)
        if _state["debug"]:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kind = "error" if isinstance(e, (ValueError, TypeError, FileNotFoundError, UserError, KeyError)) else f"error ({type(e).__name__})"
        console.print(f"[bold red]{kind}:[/] {msg}", highlight=False, soft_wrap=True)
        console.print("[dim](run with --debug for the traceback)[/]", highlight=False)
        sys.exit(2 if kind == "error" else 1)


@contextlib.contextmanager
def progress_bar(description: str, total: Optional[int] = None, rank: int = 0, world: int = 1) -> Iterator:
    """A rich progress bar on a terminal, silent otherwise. Yields ``update(done, total)``.

    Under ``torchrun`` only rank 0 draws (its shard's progress, labelled "rank 0/N").
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if world > 1:
        description += f" (rank {rank}/{world})"
    if not console.is_terminal or rank != 0:
        yield lambda done, tot=None: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as prog:
        task = prog.add_task(description, total=total)

        def update(done: int, tot: Optional[int] = None) -> None:
            prog.update(task, completed=done, total=tot if tot is not None else total)

        yield update


def parse_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return device


@contextlib.contextmanager
def distributed(device: str) -> Iterator[tuple[int, int, str]]:
    """Yield ``(rank, world_size, device)``; under ``torchrun`` (``WORLD_SIZE`` > 1) with a process group.

    NCCL on CUDA (each process on ``cuda:LOCAL_RANK``), gloo on CPU; the group is
    destroyed on exit. Commands print and write files on rank 0 only.
    """
    import os

    import torch

    device = parse_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        yield 0, 1, device
        return
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device.startswith("cuda"):
        device = f"cuda:{local}" if device == "cuda" else device
        torch.cuda.set_device(device)
    ours = not dist.is_initialized()
    if ours:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        if ours:
            dist.destroy_process_group()


@dataclasses.dataclass(frozen=True)
class ReportDir:
    """Where a command writes its report, checked before any work (see ``cnnlens.report.check_out_dir``)."""

    path: Path
    force: bool = False
    protect: tuple = ()

    def write(self, rep) -> Path:
        """Write ``rep`` here atomically; returns the index path."""
        return rep.write(self.path, force=self.force, protect=self.protect)


def input_paths(*items) -> tuple[Path, ...]:
    """The existing paths among a command's inputs (files, folders, globs → their folder), to protect from --out."""
    found: list[Path] = []
    for item in items:
        for one in (item if isinstance(item, (list, tuple)) else [item]):
            if one is None:
                continue
            text = str(one)
            if any(c in text for c in "*?["):
                text = text[:min(text.index(c) for c in "*?[" if c in text)]
                text = text.rsplit("/", 1)[0] if "/" in text else "."
            path = Path(text).expanduser()
            if path.exists():
                found.append(path)
    return tuple(found)


def out_dir(path: Path, force: bool = False, *inputs) -> ReportDir:
    """Check ``--out`` before any work: a new, empty or previous-report folder; never one holding an input."""
    from ..report import check_out_dir

    protect = input_paths(*inputs)
    try:
        return ReportDir(check_out_dir(path, force=force, protect=protect), force, protect)
    except ValueError as e:
        raise UserError(str(e)) from None


# reusable option declarations
MODEL_OPT = typer.Option(..., "--model", "-m", help="efficientnet-lite0, digits-cnn, timm:NAME, torchvision:NAME, or package.module:factory.")
WEIGHTS_OPT = typer.Option(None, "--weights", "-w", help="Weights file (.safetensors, .pt/.pth).")
PRETRAINED_OPT = typer.Option(False, "--pretrained", help="Let timm/torchvision download their pretrained weights.")
TRUST_OPT = typer.Option(False, "--trust-pickle", help="Allow loading a whole pickled model (runs code from the file).")
DEVICE_OPT = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto.")
OUT_OPT = typer.Option(Path("cnnlens-out"), "--out", "-o", help="Output directory (files and report); a new, empty or "
                       "previous-report folder.")
FORCE_OPT = typer.Option(False, "--force", help="Replace --out even if it holds other files (never the current "
                         "directory, home, or a folder holding an input).")


def load_model_from_options(model: str, weights: Optional[Path], pretrained: bool, trust_pickle: bool, device: str):
    from .. import load_model

    m = load_model(model, weights=weights, pretrained=pretrained, trust_pickle=trust_pickle)
    return m.to(parse_device(device))
