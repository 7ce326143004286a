"""The leaderboard on a dataset, as one value: :func:`benchmark_dataset`.

What ``cnnlens benchmark`` does, for a Python user: the first ``n`` images of cluttered-digits (boxes and the
digits' ink built in) or of an ImageFolder (boxes from a CSV, optional) scored by :func:`benchmark`.
:func:`cnnlens.metrics.report.add_benchmark_section` presents a :class:`BenchmarkRun` in a report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import boxed_image_folder, cluttered_digits, image_folder
from .benchmark import Leaderboard, benchmark


@dataclasses.dataclass(frozen=True)
class BenchmarkData:
    """The images a benchmark scores: x (N×C×H×W), labels y, boxes (N×4, or None: no localisation metrics),
    objects (N×H×W, the objects' own pixels for the segmentation IoU, or None), and where they came from."""

    x: torch.Tensor
    y: torch.Tensor
    boxes: Any
    objects: Any
    data: str
    boxes_from: str  #: "built in", the CSV's path, or "none"


@dataclasses.dataclass(frozen=True)
class BenchmarkRun:
    """What :func:`benchmark_dataset` returns: the :class:`Leaderboard` and the data it scored."""

    leaderboard: Leaderboard
    data: BenchmarkData


def load_benchmark_data(
    model, data: str = "cluttered-digits", boxes: str | Path | None = None, n: int = 16
) -> BenchmarkData:
    """The first ``n`` images of ``data`` for :func:`benchmark`: ``"cluttered-digits"`` (its held-out split,
    boxes and ink built in; for a 1×64×64 model) or an ImageFolder directory, with ``boxes`` a CSV
    (``path,x0,y0,x1,y1``, see :func:`cnnlens.data.boxed_image_folder`) or without boxes."""
    if data == "cluttered-digits":
        if boxes is not None:
            raise ValueError("--boxes: cluttered-digits has its own boxes; leave --boxes out")
        spec = model.spec
        if tuple(spec.input_size) != (64, 64) or spec.channels != 1:
            raise ValueError(
                f"cluttered-digits images are 1×64×64 but {spec.name} takes "
                f"{spec.channels}×{spec.input_size[0]}×{spec.input_size[1]}; use a model "
                "made for them (cluttered-digits-cnn)"
            )
        ds = cluttered_digits("test")
        found = BenchmarkData(ds.x[:n], ds.y[:n], ds.boxes[:n], ds.ink[:n], data, "built in")
    else:
        p = Path(data).expanduser()
        if not p.is_dir():
            raise ValueError(f"--data {data}: not cluttered-digits and no such directory; give an ImageFolder")
        if boxes is not None:
            bx = boxed_image_folder(p, boxes, model, limit=n)
            found = BenchmarkData(bx.x, bx.y, bx.boxes, None, data, str(boxes))
        else:
            ds = image_folder(p, model)
            xs, ys = zip(*[ds[i] for i in range(min(n, len(ds)))], strict=True)
            found = BenchmarkData(torch.stack(xs), torch.tensor(ys), None, None, data, "none")
    if len(found.y) < 2:
        raise ValueError(
            f"--data {data}: only {len(found.y)} image(s) to score; a confidence interval needs at least 2"
        )
    return found


def benchmark_dataset(
    model,
    data: str | BenchmarkData = "cluttered-digits",
    *,
    boxes: str | Path | None = None,
    n: int = 16,
    methods: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BenchmarkRun:
    """:func:`load_benchmark_data` (unless ``data`` is already loaded) then :func:`benchmark` on the model's
    device (methods: default all; metrics: default all that apply). ``progress(done, total)`` counts
    (method, metric) pairs.

    >>> run = benchmark_dataset(load_model("cluttered-digits-cnn"), n=8)      # doctest: +SKIP
    >>> run.leaderboard.aggregates["gradcam"]["pointing_game"].mean          # doctest: +SKIP
    """
    d = data if isinstance(data, BenchmarkData) else load_benchmark_data(model, data, boxes, n)
    dev = next(iter(model.parameters())).device
    lb = benchmark(
        model,
        d.x.to(dev),
        y=d.y.to(dev),
        boxes=d.boxes,
        objects=d.objects,
        methods=methods,
        metrics=metrics,
        progress=progress,
    )
    return BenchmarkRun(lb, d)
