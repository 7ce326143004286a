"""Shared CLI plumbing: the Typer app, error handling, progress bars, common options."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..extras import MissingExtra

# Imported late, inside functions: torch and the cnnlens modules that import it (report, models, load_model),
# rich.progress (≈13 ms). `cnnlens --help` imports this module, and torch alone would add ≈2 s to it.

app = typer.Typer(
    name="cnnlens",
    help="Explain what an image CNN does: evaluate, explain, look inside, attack. "
    "Every command writes files and a report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: `cnnlens --help` stays well under a second (no rich/markdown import)
)

console = Console(stderr=True)
_state: dict[str, Any] = {"debug": False}


class UserError(Exception):
    """A bad input: reported as one line, exit code 2."""


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cnnlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what cnnlens chooses (layers, conversions)."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print cnnlens' version and exit."
    ),
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
        # click's exceptions by name, not by import: typer ≥ 0.2x vendors click (typer._click, its own Exit and
        # Abort) and no longer installs click itself; older typer raises click's
        kinds = {c.__name__ for c in type(e).__mro__}
        click_error = cast(Any, e)  # matched by class name: Exit and ClickException carry exit_code
        if "Exit" in kinds:
            sys.exit(click_error.exit_code)
        if "ClickException" in kinds:
            click_error.show()
            sys.exit(click_error.exit_code)
        if "Abort" in kinds:
            console.print("aborted")
            sys.exit(130)
        if _state["debug"]:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

        kind = (
            "error"
            if isinstance(e, (ValueError, TypeError, FileNotFoundError, UserError, KeyError, MissingExtra))
            else f"error ({type(e).__name__})"
        )

        # escaped: "pip install 'cnnlens[explore]'" is not rich markup
        console.print(f"[bold red]{kind}:[/] {escape(msg)}", highlight=False, soft_wrap=True)
        console.print("[dim](run with --debug for the traceback)[/]", highlight=False)
        sys.exit(2 if kind == "error" else 1)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, rank: int = 0, world: int = 1) -> Iterator:
    """A rich progress bar on a terminal, silent otherwise. Yields ``update(done, total)``.

    Under ``torchrun`` only rank 0 draws (its shard's progress, labelled "rank 0/N").
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if world > 1:
        description += f" (rank {rank}/{world})"
    if not console.is_terminal or rank != 0:
        yield lambda done, tot=None: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=total)

        def update(done: int, tot: int | None = None) -> None:
            prog.update(task, completed=done, total=tot if tot is not None else total)

        yield update


def print_table(table, out=None) -> None:
    """Print a rich table on stdout without cutting anything off: piped or redirected (where rich assumes 80
    columns) at the table's natural width; on a narrow terminal cells wrap (``overflow="fold"``) instead of
    ending in "…"."""
    c = out or Console()
    for col in table.columns:
        col.overflow = "fold"
    if not c.is_terminal:
        need = c.measure(table, options=c.options.update_width(10_000)).maximum
        if need > c.width:
            c = Console(width=need, file=c.file, highlight=False)
    c.print(table)


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
    ok = False
    try:
        yield dist.get_rank(), dist.get_world_size(), device
        ok = True
    finally:
        if ours:
            _leave_group(dist, ok)


def _leave_group(dist, ok: bool) -> None:
    """End a process group deterministically: every rank meets at a barrier (so no rank tears its connections down
    while another still talks to it), the group is destroyed (its backend's threads end) and the threads this
    process started are joined, all before the interpreter shuts down — a backend thread still alive then aborts
    the process ("terminate called without an active exception"). After an error no barrier (the other ranks may
    never reach it); the group is still destroyed."""
    try:
        if ok:
            dist.barrier()
    finally:
        dist.destroy_process_group()
        for t in threading.enumerate():
            if t is not threading.current_thread() and not t.daemon and t.is_alive():
                t.join(timeout=30)


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
        for one in item if isinstance(item, (list, tuple)) else [item]:
            if one is None:
                continue
            text = str(one)
            if any(c in text for c in "*?["):
                text = text[: min(text.index(c) for c in "*?[" if c in text)]
                text = text.rsplit("/", 1)[0] if "/" in text else "."
            path = Path(text).expanduser()
            if path.exists():
                found.append(path)
    return tuple(found)


def out_dir(path: Path, force: bool = False, *inputs, option: str = "--out") -> ReportDir:
    """Check ``--out`` (or ``option``) before any work: a new, empty or previous-report folder; never one holding
    an input. Errors name the command's own option and --force."""
    from ..report import check_out_dir

    protect = input_paths(*inputs)
    try:
        return ReportDir(
            check_out_dir(path, force=force, protect=protect, option=option, force_hint="--force"), force, protect
        )
    except ValueError as e:
        raise UserError(str(e)) from None


# what the model expects, on every command that takes --model (added by @model_options)
_SPEC_PARAMS = ("spec_mean", "spec_std", "spec_input_size", "spec_channels", "spec_class_names", "spec_num_classes")


def _spec_parameters(taken: set[str]) -> list[inspect.Parameter]:
    """The spec options as keyword parameters (cnnlens.cli.options); the input channels are --input-channels
    alone where the command has its own --channels."""
    from . import options as o

    chan = o.InputChannels if "--channels" in taken else o.ChannelsOrInputChannels
    opts = [
        ("spec_mean", o.Mean),
        ("spec_std", o.Std),
        ("spec_input_size", o.InputSize),
        ("spec_channels", chan),
        ("spec_class_names", o.ClassNames),
        ("spec_num_classes", o.NumClasses),
    ]
    return [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a) for n, a in opts]


def _option_names(sig: inspect.Signature) -> set[str]:
    out: set[str] = set()
    for p in sig.parameters.values():
        out.update(d for d in getattr(p.default, "param_decls", None) or () if isinstance(d, str))
        for info in getattr(p.annotation, "__metadata__", ()):  # an Annotated alias (cnnlens.cli.options):
            decls = (getattr(info, "default", None), *(getattr(info, "param_decls", None) or ()))  # 1st flag in default
            out.update(d for d in decls if isinstance(d, str) and d.startswith("-"))
    return out


def model_options(fn):
    """Add --mean, --std, --input-size, --channels, --class-names and --num-classes to a command with --model.

    Their values reach :func:`load_model_from_options` (the command's own signature stays as it is). Where the
    command already has ``--channels`` (a channel list) the input channels are ``--input-channels``.
    """
    sig = inspect.signature(fn, eval_str=True)
    added = _spec_parameters(_option_names(sig))
    params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _state["spec"] = {k: kwargs.pop(k, None) for k in _SPEC_PARAMS}
        return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(
        parameters=[
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD else p
            for p in params
        ]
        + added
    )
    wrapper.__annotations__ = {**{p.name: p.annotation for p in params}, **{p.name: p.annotation for p in added}}
    return wrapper


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.replace(" ", ",").split(",") if v)
    except ValueError:
        raise UserError(
            f"{option} {text!r}: give numbers separated by commas, e.g. {option} 0.485,0.456,0.406"
        ) from None
    if not vals:
        raise UserError(f"{option}: give at least one number")
    return vals


def parse_input_size(text: str) -> tuple[int, ...]:
    """``224`` → (224, 224); ``224,192`` / ``224x192`` → (224, 192); ``1,28,28`` (C,H,W) → (1, 28, 28)."""
    parts = [p for p in str(text).lower().replace("×", ",").replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) not in (2, 3) or min(vals) < 1 or (len(vals) == 3 and vals[0] not in (1, 3)):
        raise UserError(
            f"--input-size {text!r}: give one side, H,W or C,H,W in pixels, e.g. --input-size 224, 224,192 or 1,28,28"
        )
    return tuple(vals)


def read_class_names(path: Path) -> list[str]:
    """Class names from a file: JSON (a list, or {index: name}) or one name a line (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--class-names {p}: no such file; give a text file with one class name a line, or JSON")
    text = p.read_text(encoding="utf-8-sig")
    stripped = text.strip()
    if p.suffix.lower() == ".json" or stripped[:1] in ("[", "{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise UserError(
                f"--class-names {p}: not valid JSON ({e.msg} at line {e.lineno}); give a list of names "
                "or {index: name}"
            ) from None
        if isinstance(obj, dict):
            try:
                items = sorted((int(k), str(v)) for k, v in obj.items())
            except ValueError:
                raise UserError(
                    f'--class-names {p}: a JSON object must map class indices to names, e.g. {{"0": "cat", "1": "dog"}}'
                ) from None
            if [i for i, _ in items] != list(range(len(items))):
                raise UserError(f"--class-names {p}: the indices must be 0..K-1 without gaps")
            return [v for _, v in items]
        if isinstance(obj, list) and all(isinstance(v, (str, int, float)) for v in obj):
            return [str(v) for v in obj]
        raise UserError(f"--class-names {p}: JSON must be a list of names or {{index: name}}")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"--class-names {p} is empty; give one class name a line")
    return names


def spec_options() -> dict:
    """The load_model keyword arguments given on the command line (--mean, --std, ...)."""
    raw = _state.get("spec") or {}
    kw: dict = {}
    if raw.get("spec_mean"):
        kw["mean"] = _floats(raw["spec_mean"], "--mean")
    if raw.get("spec_std"):
        kw["std"] = _floats(raw["spec_std"], "--std")
        if any(v <= 0 for v in kw["std"]):
            raise UserError(f"--std {raw['spec_std']!r}: every std must be positive")
    if raw.get("spec_input_size"):
        size = parse_input_size(raw["spec_input_size"])
        kw["input_size"] = size[-2:]
        if len(size) == 3:
            kw["channels"] = size[0]
    if raw.get("spec_channels") is not None:
        if raw["spec_channels"] not in (1, 3):
            raise UserError(f"--channels {raw['spec_channels']}: give 1 (grey) or 3 (RGB)")
        kw["channels"] = raw["spec_channels"]
    if raw.get("spec_class_names"):
        kw["class_names"] = read_class_names(raw["spec_class_names"])
    if raw.get("spec_num_classes") is not None:
        kw["num_classes"] = raw["spec_num_classes"]
    return kw


def load_model_from_options(model: str, weights: Path | None, pretrained: bool, trust_pickle: bool, device: str):
    """load_model with the command's --weights/--pretrained/--trust-pickle and the spec options; the spec used is
    logged (-v) and a model on random weights is warned about."""
    from .. import load_model

    kw = spec_options()
    quiet = logging.getLogger("cnnlens.models.loading")
    said = lambda record: (
        not any(
            w in record.getMessage()
            for w in (  # noqa: E731 - said below instead
                "random initial weights",
                "using cnnlens's defaults",
            )
        )
    )
    quiet.addFilter(said)
    try:
        m = load_model(model, weights=weights, pretrained=pretrained, trust_pickle=trust_pickle, **kw)
    finally:
        quiet.removeFilter(said)
    if getattr(m.spec, "random_weights", False):
        console.print(
            f"[bold yellow]warning:[/] {model}: random initial weights: explanations of an untrained "
            "model (pass --weights FILE)",
            highlight=False,
        )
    guessed = m.spec.extra.get("defaulted")
    if guessed:
        console.print(
            f"[bold yellow]warning:[/] {model} declares no {'/'.join(guessed)}: using cnnlens's defaults "
            f"(input {m.spec.input_size[0]}×{m.spec.input_size[1]}, mean {list(m.spec.mean)}, std "
            f"{list(m.spec.std)}); give {' '.join('--' + g.replace('_', '-') for g in guessed)} if it was "
            "trained otherwise",
            highlight=False,
        )
    logging.getLogger(__name__).info("model spec: %s", _describe(m.spec))
    return m.to(parse_device(device))


def _describe(spec) -> str:
    from ..models.loading import describe_spec

    return describe_spec(spec)


def new_report(title: str, subtitle: str, model):
    """A Report that shows ``model``'s spec and weights (file, SHA-256) at the top and in results.json."""
    from ..report import Report

    rep = Report(title, subtitle)
    rep.describe_model(model)
    return rep


def names_from_data(model, dataset) -> None:
    """Give the model the data's class names when it has none of its own (numbered classes, same count)."""
    names = getattr(dataset, "cnnlens_class_names", None)
    spec = getattr(model, "spec", None)
    if not names or spec is None or spec.extra.get("class_names_from") != "numbers":
        return
    if len(names) == spec.num_classes:
        model.spec = spec.with_(class_names=tuple(names), extra={**spec.extra, "class_names_from": "data"})
