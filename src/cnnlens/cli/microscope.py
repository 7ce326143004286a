"""`cnnlens microscope`: every channel of chosen layers — feature visualisations, top dataset patches,
statistics, influence, building blocks — as a static site (layer list → channel grid → unit pages)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from .common import (
    UserError,
    app,
    console,
    load_model_from_options,
    model_options,
    out_dir,
)
from .options import BatchSize, Device, FirstN, Force, Model, Pretrained, TrustPickle, Weights


class _Bars:
    """One rich progress bar per stage (silent when stderr is not a terminal)."""

    def __init__(self):
        self.prog = None
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


@app.command("microscope")
@model_options
def microscope_cmd(
    *,
    model: Model,
    data: str = typer.Option(..., "--data", "-d", help="digits, or an ImageFolder directory."),
    layers: str | None = typer.Option(
        None, "--layers", "-l", help="Comma-separated layers (default: up to 3 activation layers)."
    ),
    out: Path = typer.Option(
        Path("micro"),
        "--out",
        "-o",
        help="Output folder of the site (replaced atomically): a new, empty or previous-output folder.",
    ),
    force: Force = False,
    k: int = typer.Option(9, "--k", min=1, help="Top dataset images per channel."),
    steps: int = typer.Option(128, "--steps", min=1, help="Adam steps of each feature visualisation."),
    max_channels: int = typer.Option(64, "--max-channels", min=1, help="Channels shown per layer (the first ones)."),
    fv_size: int | None = typer.Option(
        None, "--fv-size", min=8, help="Feature visualisation side (default: the input size, at most 128)."
    ),
    samples: int = typer.Option(4, "--samples", min=0, help="Building-block sample pages."),
    n: FirstN = None,
    work: Path | None = typer.Option(None, "--work", help="Work folder for resuming (default: OUT.work)."),
    keep_work: bool = typer.Option(False, "--keep-work", help="Keep the work folder after success."),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        help="Feature visualisation cache kept across runs, keyed "
        "by the model's weights, layer, channel and settings (default: OUT.fvcache).",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Render every feature visualisation again; keep none."),
    batch_size: BatchSize = 64,
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="Torch threads (default: 1 for inputs up to 64×64 px, where "
        "thread start-up costs more than it gains, else torch's default).",
    ),
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
) -> None:
    """Precompute every channel of the chosen layers and write a static site: layer list → channel grid →
    unit pages, plus building-block pages. Interrupted runs resume from the work folder."""
    import shutil

    import torch

    from ..data import as_dataset
    from ..inside.microscope import default_layers
    from ..microscope_site import Settings, precompute, write_site
    from ..tap import resolve_layer

    m = load_model_from_options(model, weights, pretrained, trust_pickle, device)
    size = getattr(getattr(m, "spec", None), "input_size", None)
    if threads is None and size is not None and max(size) <= 64:
        threads = 1  # small images: every op is tiny, and a second thread only waits (badly so on busy cores)
    if threads:
        torch.set_num_threads(threads)
    target = out_dir(out, force, data, weights)  # refuse before any work, not after it
    out = target.path
    names = [s.strip() for s in layers.split(",") if s.strip()] if layers else default_layers(m)
    names = [resolve_layer(m, l)[0] for l in names]
    ds = as_dataset(data, m)
    if n:
        ds = torch.utils.data.Subset(ds, range(min(n, len(ds))))
    spec = getattr(m, "spec", None)
    class_names = list(getattr(spec, "class_names", ()) or ()) or None
    st = Settings(k=k, max_channels=max_channels, steps=steps, fv_size=fv_size, samples=samples, batch_size=batch_size)
    work = Path(work) if work else out.with_name(out.name + ".work")
    fv_cache = None if no_cache else (Path(cache) if cache else out.with_name(out.name + ".fvcache"))
    if fv_cache is not None and fv_cache.resolve().is_relative_to(out.resolve()):
        raise UserError(
            f"--cache {fv_cache} is inside the output folder, which each run replaces; give a folder outside it"
        )
    console.print(
        f"microscope: {model}, layers {', '.join(names)}; work folder {work} (rerun to resume)"
        + (f"; feature visualisations cached in {fv_cache}" if fv_cache else ""),
        highlight=False,
    )
    bars = _Bars()
    try:
        with bars.running():
            pre = precompute(
                m, ds, names, work, st, data_name=f"{data}" + (f"[:{n}]" if n else ""), progress=bars, cache=fv_cache
            )
            index = write_site(
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
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    console.print(f"wrote {index.parent} (open {index})", highlight=False)
