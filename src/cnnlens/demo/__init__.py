"""`cnnlens demo`: every capability on models and images that ship with the install.

Each capability contributes a section function ``fn(report, ctx)``; they run in
order, sharing the loaded models and images in :class:`DemoContext`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..data import as_dataset, load_images
from ..extras import require
from ..models import load_model
from ..report import Report, check_out_dir
from .attacks import demo_section as attacks
from .attribution import demo_section as attribution
from .evaluation import demo_section as evaluation
from .inside import demo_section as inside
from .trust import demo_section as trust

log = logging.getLogger(__name__)

#: scikit-image sample photos shown in the demo (name, short description)
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "clock", "camera")


@dataclass
class DemoContext:
    """Shared state for demo sections: models and images are loaded once, lazily."""

    device: str = "cpu"
    quick: bool = False  # fewer steps/samples (used by tests)
    progress: Callable[[str, int, int | None], None] = lambda what, done, total: None
    timings: dict = field(default_factory=dict)

    @cached_property
    def digits_model(self):
        return load_model("digits-cnn").to(self.device)

    @cached_property
    def cluttered_model(self):
        return load_model("cluttered-digits-cnn").to(self.device)

    @cached_property
    def effnet(self):
        return load_model("efficientnet-lite0").to(self.device)

    @cached_property
    def photos(self) -> tuple[list[str], torch.Tensor]:
        """(names, N×3×H×W in [0, 1]) of scikit-image's sample photos, sized for efficientnet-lite0."""
        skimage_data = require("data", "skimage.data", what="the demo's photos")

        names, arrays = [], []
        for n in PHOTOS:
            if hasattr(skimage_data, n):
                names.append(n)
                arrays.append(getattr(skimage_data, n)())
        return names, load_images(arrays, self.effnet).to(self.device)

    @cached_property
    def digits_data(self):
        return as_dataset("digits", self.digits_model)


def sections() -> list[tuple[str, Callable]]:
    """The demo's sections in order: (name, fn(report, ctx))."""
    return [
        ("evaluation", evaluation),
        ("attribution", attribution),
        ("trust", trust),
        ("inside", inside),
        ("attacks", attacks),
    ]


def run_demo(
    out: str | os.PathLike,
    device: str = "cpu",
    quick: bool = False,
    only: list[str] | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
    force: bool = False,
):
    """Build the whole demo report into ``out`` (written atomically); returns the index path.

    ``out`` must be new, empty or a previous report unless ``force`` (checked before any work).
    """
    require("demo", what="cnnlens demo")  # its data, photos and ImageNet model: one line before any work
    check_out_dir(out, force=force)
    ctx = DemoContext(device=device, quick=quick)
    if progress is not None:
        ctx.progress = progress
    rep = Report(
        "cnnlens demo",
        "EfficientNet-Lite0 (ImageNet) on scikit-image's photos, and a small CNN on scikit-learn's digits.",
    )
    for name, fn in sections():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        fn(rep, ctx)
        ctx.timings[name] = round(time.perf_counter() - t0, 2)
        log.info("demo section %s: %.1f s", name, ctx.timings[name])
    loaded = {
        k: ctx.__dict__[attr]
        for k, attr in (("efficientnet-lite0", "effnet"), ("digits-cnn", "digits_model"))
        if attr in ctx.__dict__
    }  # the models the sections used (cached_property stores them here)
    rep.describe_models(loaded)
    rep.meta["timings_s"] = ctx.timings
    rep.meta["quick"] = quick
    return rep.write(out, force=force)
