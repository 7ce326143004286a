"""Does the map depend on the model? Model-parameter randomisation (Adebayo et al.), Quantus' MPRT.

:func:`cnnlens.attribution.randomization_check` is the same idea with cnnlens'
choices (layers in execution order, each with its own seed, signed maps); this
is the metric as Quantus 0.6 defines it, so the numbers can be compared with
published ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..autograd import needs_autograd
from .common import explained_classes, maps_of, resolve_method, spearman_rows
from .result import MetricResult

Progress = Any


@needs_autograd
def model_parameter_randomisation(
    model: nn.Module,
    x: torch.Tensor,
    method: Callable | str,
    target: Any = "predicted",
    *,
    explanation: Any = None,
    seed: int = 42,
    abs: bool = True,
    y: torch.Tensor | None = None,
    progress: Progress | None = None,
    **settings,
) -> MetricResult:
    """Model-parameter randomisation test (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018,
    "Sanity checks for saliency maps", NeurIPS), cascading from the top, as Quantus' ``MPRT``:

    on a deep copy of the model, the modules that have ``reset_parameters`` are re-initialised one
    more at a time in reverse registration order (each with ``torch.manual_seed(seed + 1)``, as
    Quantus; the global RNG is restored afterwards), and after each step
    ρ_ℓ = Spearman(|Φ(x)|, |Φ_ℓ(x)|) for the same class. The per-map score is the mean of ρ_ℓ over
    the layers (Quantus' ``return_average_correlation``); **lower is better**: a map that explains
    the model must change when its weights go. ``extras``: ``layers`` (names, top first),
    ``correlations`` (L×N), ``last`` (ρ with every layer randomised). ``abs`` as Quantus' default.
    Quantus also divides the maps by the batch's largest |value| in float32 before ranking; that
    changes no rank in exact arithmetic, but on maps with near-ties (values a few ulps apart, e.g. a
    flat Grad-CAM region) the rounding can merge them, so ρ can differ from Quantus' by ~1e-3 there.

    >>> model_parameter_randomisation(model, x, "guided_backprop").extras["correlations"]   # doctest: +SKIP
    """
    name, fn = resolve_method(method)
    x_c, classes = explained_classes(
        model, x, target if explanation is None else None, explanation, y, "model_parameter_randomisation"
    )
    n = x_c.shape[0]
    a = maps_of(explanation if explanation is not None else fn(model, x_c, target=classes, **settings), n)
    a = a.reshape(n, -1)
    if abs:
        a = a.abs()
    twin = copy.deepcopy(model)
    modules = [(nm, m) for nm, m in twin.named_modules() if hasattr(m, "reset_parameters")][::-1]
    if not modules:
        raise ValueError("the model has no module with reset_parameters to randomise")
    dev = x_c.device
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    corr, names = [], []
    try:
        for step, (nm, m) in enumerate(modules):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed + 1)
                m.reset_parameters()
            e = maps_of(fn(twin, x_c, target=classes, **settings), n).reshape(n, -1)
            corr.append(spearman_rows(a, e.abs() if abs else e))
            names.append(nm)
            if progress:
                progress(step + 1, len(modules))
    finally:
        del twin
    c = torch.stack(corr)  # L × n
    return MetricResult(
        "model_parameter_randomisation",
        c.mean(0),
        False,
        classes.cpu(),
        name,
        settings={
            "seed": seed,
            "abs": abs,
            "cascade": "top-down (reverse registration order)",
            "paper": "Adebayo et al. 2018",
            **settings,
        },
        extras={"layers": names, "correlations": c, "last": c[-1]},
    )
