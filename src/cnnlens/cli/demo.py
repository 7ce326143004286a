"""`cnnlens demo`: the whole report on the models and images that ship with the install."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import app, console, out_dir, parse_device
from .options import Device, Force

# Imported late, inside functions: cnnlens.demo (imports torch), rich.progress (≈13 ms). `cnnlens --help` imports
# this module, and torch alone would add ≈2 s to it.

#: demo's own options
DemoOut = Annotated[
    Path,
    typer.Option("--out", "-o", help="Report directory: a new, empty or previous-report folder (replaced atomically)."),
]
DemoQuick = Annotated[bool, typer.Option("--quick", help="Fewer samples and steps (a fast smoke run).")]
DemoOnly = Annotated[str | None, typer.Option("--only", help="Comma-separated section names to run.")]


@app.command()
def demo(
    *,
    out: DemoOut = Path("demo-report"),
    force: Force = False,
    device: Device = "cpu",
    quick: DemoQuick = False,
    only: DemoOnly = None,
) -> None:
    """Run every section on the embedded models and photos and write the HTML report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from ..demo import run_demo, sections

    names = [n for n, _ in sections()]
    chosen = [s.strip() for s in only.split(",")] if only else None
    if chosen:
        bad = [s for s in chosen if s not in names]
        if bad:
            raise typer.BadParameter(f"unknown section {bad[0]!r}; choose from {', '.join(names)}", param_hint="--only")
    target = out_dir(out, force)  # checked before any work
    if console.is_terminal:
        with Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as prog:
            tasks: dict[str, TaskID] = {}

            def progress(what: str, done: int, total: int | None) -> None:
                if what not in tasks:
                    tasks[what] = prog.add_task(what, total=total)
                prog.update(tasks[what], completed=done, total=total)

            index = run_demo(
                target.path, force=force, device=parse_device(device), quick=quick, only=chosen, progress=progress
            )
    else:

        def progress(what: str, done: int, total: int | None) -> None:
            if done == total:
                console.print(f"  {what}: done", highlight=False)

        index = run_demo(
            target.path, force=force, device=parse_device(device), quick=quick, only=chosen, progress=progress
        )
    console.print(f"report written: {index}", highlight=False)
