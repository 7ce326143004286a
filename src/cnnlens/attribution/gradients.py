"""Gradient attributions: saliency, SmoothGrad, gradient × input, Integrated Gradients.

All take the gradient of the target's *pre-softmax* score (the logit, not the
probability: raising a probability can be done by lowering the other logits) with
respect to the input pixels, inside one :class:`~cnnlens.tap.LayerTap` that
freezes the parameters, so no parameter gradient is ever computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..autograd import needs_autograd
from ..batching import check_batch_size, chunks
from ..results import Explanation
from ..tap import LayerTap
from .common import (
    Layout,
    Prepared,
    Progress,
    check_reduce,
    describe_fill,
    finish,
    pick_classes,
    pixel_fill,
    prepare,
    reduce_channels,
    score,
    target_layers,
)


def input_gradient(
    tap: LayerTap, p: Prepared, xb: torch.Tensor, classes: torch.Tensor | None = None, layout: Layout | None = None
):
    """(∂s/∂x, s, classes) for a batch ``xb`` inside ``tap``; classes are picked from this forward if None."""
    leaf: list[torch.Tensor] = []

    def make_leaf(t: torch.Tensor) -> torch.Tensor:
        leaf[:] = [t.detach().requires_grad_(True)]
        return leaf[0]

    out = layout.run(tap, xb, make_leaf) if layout is not None else tap.run(make_leaf(xb))
    if classes is None:
        classes = pick_classes(p, out, xb.shape[0])
    s = score(p, tap, out, classes)
    (g,) = torch.autograd.grad(s.sum(), leaf[0])
    return g.contiguous(), s.detach(), classes


def batched_input_gradient(
    model: nn.Module, p: Prepared, batch_size: int | None, channels_last: bool | None, edits: dict | None = None
):
    """(∂s/∂x, s, classes) for all of ``p`` in chunks of ``batch_size`` (automatic for None), in one tap.

    Samples are independent, so the result does not depend on the chunking; the
    automatic size keeps the graph of a chunk small (see :func:`check_batch_size`).
    """
    batch_size = check_batch_size(batch_size, p.x)
    layout = Layout(model, p.x, PATH_LAYOUT if channels_last is None else channels_last)
    parts = []
    with LayerTap(model, target_layers(p.target), edits=edits) as tap:
        for a, b in chunks(p.n, batch_size):
            q = p.subset(a, b)
            parts.append(input_gradient(tap, q, q.x, layout=layout))
    return tuple(torch.cat(t) for t in zip(*parts, strict=True))


def clean_pass(tap: LayerTap, p: Prepared):
    """One no-grad forward on the clean input: (classes, scores, logits or None)."""
    with torch.no_grad():
        out = tap.run(p.x)
        classes = pick_classes(p, out, p.n)
        s = score(p, tap, out, classes)
    return classes, s, out


def _maps_and_raw(a: torch.Tensor, reduce: str):
    return reduce_channels(a, reduce), (a if reduce == "none" else None)


@needs_autograd
def saliency(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    reduce: str = "abs_max",
    y: torch.Tensor | None = None,
    batch_size: int | None = None,
    channels_last: bool | None = None,
) -> Explanation:
    """Saliency map (Simonyan et al. 2014): the gradient of the target's pre-softmax score w.r.t. the pixels.

    map(i, j) = max_c |∂S_c/∂x_{c,i,j}| (``reduce="abs_max"``, the paper's choice);
    ``"signed"`` = Σ_c ∂S/∂x, ``"l2"`` = ‖∂S/∂x‖₂ over channels, ``"none"`` keeps every
    channel in ``raw`` (N×C×H×W) and puts their sum in ``maps``. ``batch_size``: images
    per forward + backward (None: automatic); the maps do not depend on it.

    >>> e = saliency(model, x)                 # doctest: +SKIP
    >>> e.maps.shape                           # N×H×W

    Args:
        model: any ``nn.Module`` mapping N×C×H×W to N×K logits (left exactly as it was).
        x: the images, N×C×H×W (pixel space, [0, 1], for models loaded by cnnlens).
        target: the class whose score S is differentiated: ``"predicted"``, ``"second"``, ``"true"``
            (needs ``y``), a class index or name, or one class per image.
        reduce: how the C channels of the gradient become one map: ``"abs_max"``, ``"signed"``, ``"l2"``
            or ``"none"`` (see above).
        y: the true labels (N integers), needed only for ``target="true"``.
        batch_size: images per forward + backward; ``None`` chooses one (about 600 k input values).
        channels_last: the input's memory layout; ``None`` passes image-sized batches of convolutional
            models channels-last (faster on the CPU, the same map up to float rounding), ``False``/``True``
            force it off/on.

    Returns:
        Explanation: ``maps`` N×H×W, ``raw`` the gradient itself when ``reduce="none"``,
        ``extras["score"]`` the differentiated scores.

    Raises:
        ValueError: an unknown ``reduce``, a class out of range, ``target="true"`` without ``y``, or no image.
    """
    check_reduce(reduce)
    p = prepare(model, x, target, y, "saliency")
    g, s, classes = batched_input_gradient(model, p, batch_size, channels_last)
    maps, raw = _maps_and_raw(g.float(), reduce)
    return finish(p, maps, "saliency", classes, settings={"reduce": reduce}, raw=raw, extras={"score": s})


@needs_autograd
def gradient_x_input(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    reduce: str = "signed",
    y: torch.Tensor | None = None,
    batch_size: int | None = None,
    channels_last: bool | None = None,
) -> Explanation:
    """Gradient × input: x ⊙ ∂S/∂x, summed over channels by default (``reduce`` as in :func:`saliency`).

    For a linear model S = w·x + b this is w ⊙ x, whose sum is S − b.

    >>> gradient_x_input(model, x).maps        # doctest: +SKIP
    """
    check_reduce(reduce)
    p = prepare(model, x, target, y, "gradient_x_input")
    g, s, classes = batched_input_gradient(model, p, batch_size, channels_last)
    a = (g * p.x).float()
    maps, raw = _maps_and_raw(a, reduce)
    return finish(p, maps, "gradient_x_input", classes, settings={"reduce": reduce}, raw=raw, extras={"score": s})


#: the default layout of the input-gradient methods (saliency, gradient × input, guided backprop, Integrated
#: Gradients, SmoothGrad): contiguous. A point near a ReLU kink (every IG point near the black baseline) flips a
#: ReLU more often under the channels-last kernels' other summation order: up to 10⁴× further from float64 than
#: plain float32 (IG on ResNet-18, saliency on ReXNet, guided backprop on HRNet in the conformance zoo), for a
#: speed-up measured by benchmarks/bench_channels_last.py (docs/guide/architectures.md). ``channels_last=True``
#: still takes it.
PATH_LAYOUT = False


def _noise(n: int, shape, seed: int, device, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((n, *shape), generator=g).to(device=device, dtype=dtype)


@needs_autograd
def smoothgrad(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    sigma: float = 0.15,
    n: int = 25,
    seed: int = 0,
    reduce: str = "abs_max",
    batch_size: int | None = None,
    y: torch.Tensor | None = None,
    progress: Progress | None = None,
    channels_last: bool | None = None,
) -> Explanation:
    """SmoothGrad (Smilkov et al. 2017): the saliency map averaged over n noisy copies of the input.

    M̂(x) = 1/n Σ_k M(x + ε_k), ε_k ~ N(0, σ²) in pixel units (the input is in [0, 1]);
    the class is fixed from the clean input. Each sample gets the same seeded noise,
    so a sample's map does not depend on the rest of the batch. The input is passed
    contiguous unless ``channels_last=True`` (see :data:`PATH_LAYOUT`).

    >>> smoothgrad(model, x, sigma=0.1, n=50, seed=1)   # doctest: +SKIP
    """
    check_reduce(reduce)
    batch_size = check_batch_size(batch_size, x)
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive int (number of noisy samples), got {n!r}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be ≥ 0 (noise std in pixel units), got {sigma!r}")
    p = prepare(model, x, target, y, "smoothgrad")
    eps = _noise(n, p.x.shape[1:], seed, p.x.device, p.x.dtype) * float(sigma)
    N = p.n
    acc = torch.zeros((N, *p.x.shape[1:]) if reduce == "none" else (N, *p.size), device=p.x.device)
    total = N * n
    layout = Layout(model, p.x, PATH_LAYOUT if channels_last is None else channels_last)
    with LayerTap(model, target_layers(p.target)) as tap:
        classes, s0, _ = clean_pass(tap, p)
        for a, b in chunks(total, batch_size):
            idx = torch.arange(a, b, device=p.x.device)
            si, ki = idx // n, idx % n
            g, _, _ = input_gradient(tap, p, p.x[si] + eps[ki], classes[si], layout)
            g = g.float()
            part = g if reduce == "none" else reduce_channels(g, reduce)
            acc.index_add_(0, si, part)
            if progress:
                progress(b, total)
    acc /= n
    maps = acc.sum(1) if reduce == "none" else acc
    return finish(
        p,
        maps,
        "smoothgrad",
        classes,
        raw=acc if reduce == "none" else None,
        settings={"sigma": float(sigma), "n": n, "seed": seed, "reduce": reduce},
        extras={"score": s0},
    )


def _ig_points(steps: int, method: str):
    """(alphas, weights) of the path integral ∫₀¹ g(α) dα."""
    if method == "trapezoid":
        if steps < 2:
            raise ValueError("the trapezoid rule needs steps ≥ 2")
        alphas = torch.linspace(0, 1, steps, dtype=torch.float64)
        w = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (steps - 1)
    elif method == "midpoint":
        alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        w = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    elif method == "gausslegendre":
        t, wt = np.polynomial.legendre.leggauss(steps)
        alphas = torch.from_numpy((t + 1) / 2)
        w = torch.from_numpy(wt / 2)
    else:
        raise ValueError(f"method={method!r} is not known; use 'trapezoid', 'midpoint' or 'gausslegendre'")
    return alphas, w


@needs_autograd
def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    baseline: Any = "black",
    steps: int = 50,
    method: str = "trapezoid",
    reduce: str = "signed",
    batch_size: int | None = None,
    blur_sigma: float | None = None,
    y: torch.Tensor | None = None,
    progress: Progress | None = None,
    channels_last: bool | None = None,
) -> Explanation:
    """Integrated Gradients (Sundararajan et al. 2017) from a pixel-space baseline x'.

    IG_i(x) = (x_i − x'_i) · ∫₀¹ ∂S/∂x_i (x' + α (x − x')) dα, the integral by the
    ``method`` rule ("trapezoid", "midpoint" or "gausslegendre") with ``steps`` points,
    all points batched. Completeness says Σ_i IG_i = S(x) − S(x'); the remainder is
    ``extras["completeness_gap"]`` (it shrinks as ``steps`` grows). ``baseline``:
    "black" (0), "grey" (0.5), "blur", a number or a tensor, in pixel units. The input
    is passed contiguous unless ``channels_last=True`` (see :data:`PATH_LAYOUT`).

    >>> e = integrated_gradients(model, x, steps=64)          # doctest: +SKIP
    >>> e.extras["completeness_gap"].abs().max()
    """
    check_reduce(reduce)
    batch_size = check_batch_size(batch_size, x)
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    alphas, weights = _ig_points(steps, method)
    p = prepare(model, x, target, y, "integrated_gradients")
    base = pixel_fill(baseline, p.x, blur_sigma, "baseline").expand_as(p.x)
    diff = p.x - base
    N = p.n
    alphas = alphas.to(device=p.x.device, dtype=p.x.dtype)
    weights = weights.to(device=p.x.device, dtype=torch.float32)
    avg = torch.zeros(p.x.shape, device=p.x.device, dtype=torch.float32)
    total = N * steps
    layout = Layout(model, p.x, PATH_LAYOUT if channels_last is None else channels_last)
    with LayerTap(model, target_layers(p.target)) as tap:
        classes, s_x, _ = clean_pass(tap, p)
        with torch.no_grad():
            out = tap.run(base.contiguous())
            s_base = score(p, tap, out, classes)
        for a, b in chunks(total, batch_size):
            idx = torch.arange(a, b, device=p.x.device)
            si, ki = idx // steps, idx % steps
            xb = base[si] + alphas[ki].view(-1, 1, 1, 1) * diff[si]
            g, _, _ = input_gradient(tap, p, xb, classes[si], layout)
            avg.index_add_(0, si, g.float() * weights[ki].view(-1, 1, 1, 1))
            if progress:
                progress(b, total)
    attr = diff.float() * avg
    gap = attr.flatten(1).sum(1) - (s_x.float() - s_base.float())
    maps, raw = _maps_and_raw(attr, reduce)
    return finish(
        p,
        maps,
        "integrated_gradients",
        classes,
        raw=raw,
        settings={"baseline": describe_fill(baseline), "steps": steps, "method": method, "reduce": reduce},
        extras={"completeness_gap": gap, "score": s_x, "baseline_score": s_base},
    )
