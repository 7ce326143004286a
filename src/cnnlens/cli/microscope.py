"""`cnnlens microscope`: every channel of chosen layers — feature visualisations, top dataset patches,
statistics, influence, building blocks — as a static site (layer list → channel grid → unit pages)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    UserError,
    app,
    console,
    model_options,
    out_dir,
)
from .options import BatchSize, Device, FirstN, Force, Model, Pretrained, TrustPickle, Weights
from .session import open_model

# Imported late, inside functions: torch and the cnnlens modules that import it (inside, microscope_site, data,
# tap), rich.progress. `cnnlens --help` imports this module, and torch alone would add ≈2 s to it.


class _Bars:
    """One rich progress bar per stage (silent when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.prog: Any = None  # the rich Progress while running() is open
        self.tasks: dict = {}

    @contextlib.contextmanager
    def running(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if not console.is_terminal:
            yield self
            return
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as prog:
            self.prog = prog
            yield self

    def __call__(self, stage: str, done: int, total) -> None:
        if self.prog is None:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.prog.add_task(stage, total=total)
        self.prog.update(self.tasks[stage], completed=done, total=total)


#: microscope's own options
MicroData = Annotated[str, typer.Option("--data", "-d", help="digits, or an ImageFolder directory.")]
MicroLayers = Annotated[
    str | None, typer.Option("--layers", "-l", help="Comma-separated layers (default: up to 3 activation layers).")
]
MicroOut = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Output folder of the site (replaced atomically): a new, empty or previous-output folder."
    ),
]
MicroK = Annotated[int, typer.Option("--k", min=1, help="Top dataset images per channel.")]
MicroSteps = Annotated[int, typer.Option("--steps", min=1, help="Adam steps of each feature visualisation.")]
MicroMaxChannels = Annotated[
    int, typer.Option("--max-channels", min=1, help="Channels shown per layer (the first ones).")
]
MicroFvSize = Annotated[
    int | None,
    typer.Option("--fv-size", min=8, help="Feature visualisation side (default: the input size, at most 128)."),
]
MicroSamples = Annotated[int, typer.Option("--samples", min=0, help="Building-block sample pages.")]
MicroWork = Annotated[Path | None, typer.Option("--work", help="Work folder for resuming (default: OUT.work).")]
MicroKeepWork = Annotated[bool, typer.Option("--keep-work", help="Keep the work folder after success.")]
MicroCache = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        help="Feature visualisation cache kept across runs, keyed "
        "by the model's weights, layer, channel and settings (default: OUT.fvcache).",
    ),
]
MicroNoCache = Annotated[bool, typer.Option("--no-cache", help="Render every feature visualisation again; keep none.")]
MicroThreads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="Torch threads (default: 1 for inputs up to 64×64 px, where "
        "thread start-up costs more than it gains, else torch's default).",
    ),
]


@app.command("microscope")
@model_options
def microscope_cmd(
    *,
    model: Model,
    data: MicroData,
    layers: MicroLayers = None,
    out: MicroOut = Path("micro"),
    force: Force = False,
    k: MicroK = 9,
    steps: MicroSteps = 128,
    max_channels: MicroMaxChannels = 64,
    fv_size: MicroFvSize = None,
    samples: MicroSamples = 4,
    n: FirstN = None,
    work: MicroWork = None,
    keep_work: MicroKeepWork = False,
    cache: MicroCache = None,
    no_cache: MicroNoCache = False,
    batch_size: BatchSize = 64,
    threads: MicroThreads = None,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
) -> None:
    """Precompute every channel of the chosen layers and write a static site: layer list → channel grid →
    unit pages, plus building-block pages. Interrupted runs resume from the work folder."""
    import torch

    from ..data import as_dataset
    from ..microscope_site import Settings

    m = open_model(model, weights, pretrained, trust_pickle, device).model
    _set_threads(m, threads)
    target = out_dir(out, force, data, weights)  # refuse before any work, not after it
    out = target.path
    names = _layers(m, layers)
    ds = as_dataset(data, m)
    if n:
        ds = torch.utils.data.Subset(ds, range(min(n, len(ds))))
    st = Settings(k=k, max_channels=max_channels, steps=steps, fv_size=fv_size, samples=samples, batch_size=batch_size)
    work, fv_cache = _work_folders(out, work, cache, no_cache)
    console.print(
        f"microscope: {model}, layers {', '.join(names)}; work folder {work} (rerun to resume)"
        + (f"; feature visualisations cached in {fv_cache}" if fv_cache else ""),
        highlight=False,
    )
    data_name = f"{data}" + (f"[:{n}]" if n else "")
    index = _build(m, ds, names, work, st, fv_cache, out, target, model, data, data_name, force)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    console.print(f"wrote {index.parent} (open {index})", highlight=False)


def _set_threads(m, threads: int | None) -> None:
    """--threads, or 1 for inputs up to 64×64 px (every op is tiny there, and a second thread only waits, badly
    so on busy cores)."""
    import torch

    size = getattr(getattr(m, "spec", None), "input_size", None)
    if threads is None and size is not None and max(size) <= 64:
        threads = 1
    if threads:
        torch.set_num_threads(threads)


def _layers(m, layers: str | None) -> list[str]:
    """--layers resolved on the model (default: up to 3 activation layers)."""
    from ..inside.microscope import default_layers
    from ..tap import resolve_layer

    names = [s.strip() for s in layers.split(",") if s.strip()] if layers else default_layers(m)
    return [resolve_layer(m, l)[0] for l in names]


def _work_folders(out: Path, work: Path | None, cache: Path | None, no_cache: bool) -> tuple[Path, Path | None]:
    """The work folder (default OUT.work) and the feature visualisation cache (default OUT.fvcache; None with
    --no-cache), which must lie outside the output folder."""
    work = Path(work) if work else out.with_name(out.name + ".work")
    fv_cache = None if no_cache else (Path(cache) if cache else out.with_name(out.name + ".fvcache"))
    if fv_cache is not None and fv_cache.resolve().is_relative_to(out.resolve()):
        raise UserError(
            f"--cache {fv_cache} is inside the output folder, which each run replaces; give a folder outside it"
        )
    return work, fv_cache


def _build(m, ds, names, work, st, fv_cache, out, target, model: str, data: str, data_name: str, force: bool) -> Path:
    """Precompute (resuming from ``work``) and write the site, with progress bars; an interrupt keeps the work."""
    from ..microscope_site import precompute, write_site

    bars = _Bars()
    try:
        with bars.running():
            pre = precompute(m, ds, names, work, st, data_name=data_name, progress=bars, cache=fv_cache)
            spec = getattr(m, "spec", None)
            class_names = list(getattr(spec, "class_names", ()) or ()) or None
            return write_site(
                m,
                ds,
                pre,
                out,
                model_name=model,
                data_name=str(data),
                class_names=class_names,
                progress=bars,
                force=force,
                protect=target.protect,
            )
    except KeyboardInterrupt:
        console.print(
            f"interrupted: finished stages are kept in {work}; run the same command again to resume", highlight=False
        )
        raise SystemExit(130) from None
