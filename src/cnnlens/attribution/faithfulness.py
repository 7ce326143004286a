"""How faithful an explanation is: deletion/insertion curves and the model-randomisation check.

* Deletion and insertion (Petsiuk et al. 2018, RISE): remove the pixels in order
  of importance — replace them by a baseline, a blurred or grey image — and
  re-score after each step; a faithful map makes the class probability fall fast
  (low deletion AUC). Insertion starts from the blurred image and puts the pixels
  back in the same order; a faithful map makes it rise fast (high insertion AUC).
  Every step of every image is one batched forward.
* Model randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps"):
  re-initialise the layers of a *deep copy* of the model from the top down, and
  rank-correlate (Spearman) each map with the map of the trained model. A method
  that explains the model must change when the weights do; one that merely
  reproduces the image (edge detection) does not.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..autograd import needs_autograd
from ..batching import check_batch_size, chunks
from ..results import Explanation, Result
from ..tap import LayerTap, resolve_layer
from .common import Progress, describe_fill, logits_of, pixel_fill, prepare, upsample

# Late (CONTRIBUTING.md, Imports): scipy (start-up), in spearman; METHODS, in randomization_check (cnnlens.attribution
# imports this module first).


@dataclasses.dataclass(frozen=True)
class Curve(Result):
    """A deletion or insertion curve: the class probability after removing/inserting a fraction of the pixels.

    fractions: S+1 values from 0 to 1; scores: N×(S+1); auc: N (trapezoid over the fractions).
    """

    kind: str
    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor
    classes: torch.Tensor
    settings: dict = dataclasses.field(default_factory=dict)


def _maps_of(attribution: Any, n: int, size: tuple[int, int]) -> torch.Tensor:
    m = attribution.maps if isinstance(attribution, Explanation) else attribution
    if not torch.is_tensor(m):
        raise TypeError(f"give an Explanation or an N×H×W tensor of maps, got {type(m).__name__}")
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() != 3 or m.shape[0] != n:
        raise ValueError(f"maps of shape {tuple(m.shape)} do not match {n} images; give N×H×W maps, one per image")
    return upsample(m.float(), size)


def _curve(
    kind: str,
    model: nn.Module,
    x: torch.Tensor,
    attribution: Any,
    target: Any,
    steps: int,
    baseline: Any,
    batch_size: int | None,
    blur_sigma: float | None,
    y,
    progress: Progress | None,
) -> Curve:
    batch_size = check_batch_size(batch_size, x)
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if target is None:
        target = attribution.classes if isinstance(attribution, Explanation) else "predicted"
    p = prepare(model, x, target, y, kind)
    if not p.target.is_class:
        raise ValueError(f"{kind} curves score a class; give a class target")
    H, W = p.size
    maps = _maps_of(attribution, p.n, (H, W)).to(p.x.device)
    base = pixel_fill(baseline, p.x, blur_sigma, "baseline").expand_as(p.x)
    flat = maps.reshape(p.n, -1)
    order = torch.argsort(-flat, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(H * W, device=order.device).expand_as(order))
    counts = torch.round(torch.linspace(0, H * W, steps + 1, dtype=torch.float64)).long().to(p.x.device)
    S = steps + 1
    total = p.n * S
    scores = torch.empty(total, device=p.x.device)
    with LayerTap(model) as tap, torch.no_grad():
        classes = p.target.classes(logits_of(tap.run(p.x)), p.labels)
        for a, b in chunks(total, batch_size):
            idx = torch.arange(a, b, device=p.x.device)
            si, ki = idx // S, idx % S
            mask = (rank[si] < counts[ki].view(-1, 1)).view(-1, 1, H, W)
            if kind == "deletion":
                xb = torch.where(mask, base[si], p.x[si])
            else:
                xb = torch.where(mask, p.x[si], base[si])
            out = logits_of(tap.run(xb)).float()
            scores[a:b] = out.softmax(1).gather(1, classes[si].view(-1, 1)).squeeze(1)
            if progress:
                progress(b, total)
    fr = counts.double().cpu() / (H * W)
    sc = scores.view(p.n, S).cpu()
    auc = torch.trapezoid(sc.double(), fr).float()
    return Curve(
        kind=kind,
        fractions=fr.float(),
        scores=sc,
        auc=auc,
        classes=classes.cpu(),
        settings={"steps": steps, "baseline": describe_fill(baseline), "score": "softmax probability"},
    )


@needs_autograd
def deletion(
    model: nn.Module,
    x: torch.Tensor,
    attribution: Any,
    target: Any = None,
    *,
    steps: int = 32,
    baseline: Any = "blur",
    batch_size: int | None = None,
    blur_sigma: float | None = None,
    y: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> Curve:
    """Deletion curve: p_c(x with its top-k most important pixels replaced by ``baseline``), k = 0 … H·W.

    AUC = ∫₀¹ p_c d(fraction) (trapezoid over ``steps`` + 1 points); lower = more
    faithful. The class is the explanation's (or ``target``). ``baseline``: "blur"
    (default), "grey", "black", a number or a tensor, in pixel units.

    >>> deletion(model, x, saliency(model, x)).auc          # doctest: +SKIP
    """
    return _curve("deletion", model, x, attribution, target, steps, baseline, batch_size, blur_sigma, y, progress)


@needs_autograd
def insertion(
    model: nn.Module,
    x: torch.Tensor,
    attribution: Any,
    target: Any = None,
    *,
    steps: int = 32,
    baseline: Any = "blur",
    batch_size: int | None = None,
    blur_sigma: float | None = None,
    y: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> Curve:
    """Insertion curve: p_c(``baseline`` with the top-k most important pixels of x put back); higher AUC = more
    faithful.

    >>> insertion(model, x, gradcam(model, x)).auc          # doctest: +SKIP
    """
    return _curve("insertion", model, x, attribution, target, steps, baseline, batch_size, blur_sigma, y, progress)


@dataclasses.dataclass(frozen=True)
class Faithfulness(Result):
    """Deletion and insertion curves of one explanation."""

    deletion: Curve
    insertion: Curve

    @property
    def deletion_auc(self) -> torch.Tensor:
        return self.deletion.auc

    @property
    def insertion_auc(self) -> torch.Tensor:
        return self.insertion.auc


@needs_autograd
def faithfulness(
    model: nn.Module,
    x: torch.Tensor,
    explanation: Any,
    target: Any = None,
    *,
    steps: int = 32,
    baseline: Any = "blur",
    batch_size: int | None = None,
    blur_sigma: float | None = None,
    y: torch.Tensor | None = None,
) -> Faithfulness:
    """Both curves for one explanation (same baseline, same steps).

    >>> f = faithfulness(model, x, gradcam(model, x)); f.deletion_auc, f.insertion_auc   # doctest: +SKIP
    """
    kw = dict(steps=steps, baseline=baseline, batch_size=batch_size, blur_sigma=blur_sigma, y=y)
    return Faithfulness(deletion(model, x, explanation, target, **kw), insertion(model, x, explanation, target, **kw))


# -- model randomisation --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Randomization(Result):
    """Cascading model randomisation: the Spearman correlation of each map with the trained model's.

    layers[i]: the lowest layer re-initialised at step i (all layers above it are too);
    correlations: steps × N; maps: steps × N × H × W when kept.
    """

    method: str
    layers: list
    correlations: torch.Tensor
    classes: torch.Tensor
    settings: dict = dataclasses.field(default_factory=dict)
    original: torch.Tensor | None = None
    maps: torch.Tensor | None = None


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (NaN when one of them is constant)."""
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = spearmanr(a.reshape(-1).double().numpy(), b.reshape(-1).double().numpy()).statistic
    return float(r)


def parameter_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the modules that hold parameters, in the order they first run on ``x``."""
    seen: list[str] = []

    def rec(name):
        def fn(module, inputs, output):
            if name not in seen:
                seen.append(name)
            return output

        return fn

    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    with LayerTap(model, edits={n: rec(n) for n in names}) as tap, torch.no_grad():
        tap.run(x[:1])
    return seen


def _reinit(module: nn.Module, seed: int, devices: list) -> None:
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if reset is not None:
            reset()
        else:
            with torch.no_grad():
                for prm in module.parameters(recurse=False):
                    prm.normal_(0.0, float(prm.std()) if prm.numel() > 1 and float(prm.std()) > 0 else 0.01)


@needs_autograd
def randomization_check(
    model: nn.Module,
    x: torch.Tensor,
    method: Callable | str,
    target: Any = "predicted",
    *,
    stages: int = 5,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    keep_maps: bool = False,
    y: torch.Tensor | None = None,
    progress: Progress | None = None,
    **settings,
) -> Randomization:
    """Adebayo et al.'s cascading randomisation: ρ_s(map on a model re-initialised down to layer ℓ, original map).

    Works on ``copy.deepcopy(model)``; the model itself is never touched. The
    parameter-holding layers are taken in execution order and re-initialised from
    the top (the classifier) down, cumulatively, in ``stages`` steps (the first
    randomises the top layer only, the last all of them), or cut at the given
    ``layers``. Each layer's own ``reset_parameters`` is used (seeded; the global
    RNG is left as it was). The class explained stays the trained model's.

    >>> r = randomization_check(model, x, "gradcam")         # doctest: +SKIP
    >>> r.layers, r.correlations                              # steps × N
    """
    from . import METHODS

    name = method if isinstance(method, str) else getattr(method, "__name__", "method")
    fn = METHODS.get(method.replace("-", "_")) if isinstance(method, str) else method
    if fn is None:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(sorted(METHODS))}")
    p = prepare(model, x, target, y, "randomization_check")
    original = fn(model, x, target=target, y=y, **settings)
    classes = original.classes
    order = parameter_layers(model, p.x)
    if not order:
        raise ValueError("the model has no parameters to re-initialise")
    if layers is not None:
        idx = []
        for ln in layers:
            full = resolve_layer(model, ln)[0]
            hits = [i for i, o in enumerate(order) if o == full or o.startswith(full + ".")]
            if not hits:
                raise ValueError(f"layer {ln!r} holds no parameters that run; name a layer with weights")
            idx.append(min(hits))
        cuts = sorted(set(idx), reverse=True)
    else:
        if not (isinstance(stages, int) and stages >= 1):
            raise ValueError(f"stages must be a positive int, got {stages!r}")
        K = len(order)
        cuts = [K - 1] + [int(round((K - 1) * (1 - i / max(1, stages - 1)))) for i in range(1, stages)]
        cuts = sorted(set(cuts), reverse=True)
    twin = copy.deepcopy(model)
    mods = dict(twin.named_modules())
    dev = p.x.device
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    done = len(order)
    corr, kept, names = [], [], []
    for step, cut in enumerate(cuts):
        for i in range(cut, done):
            _reinit(mods[order[i]], seed + i, devices)
        done = cut
        e = fn(twin, x, target=classes.to(dev), **settings)
        corr.append([spearman(e.maps[j], original.maps[j]) for j in range(len(classes))])
        names.append(order[cut])
        if keep_maps:
            kept.append(e.maps)
        if progress:
            progress(step + 1, len(cuts))
    del twin
    return Randomization(
        method=name,
        layers=names,
        correlations=torch.tensor(corr, dtype=torch.float32),
        classes=classes,
        settings={"seed": seed, "cascade": "top-down", "parameter_layers": len(order), **settings},
        original=original.maps if keep_maps else None,
        maps=torch.stack(kept) if keep_maps else None,
    )
