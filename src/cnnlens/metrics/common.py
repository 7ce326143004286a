"""Plumbing shared by the metrics: maps, masks, classes, batched scoring, method look-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..attribution import METHODS
from ..attribution.common import logits_of, prepare
from ..batching import check_batch_size, chunks
from ..models.cluttered import boxes_to_masks
from ..results import Explanation
from ..tap import LayerTap

# Late, for start-up (CONTRIBUTING.md, Imports): scipy, in spearman_rows.


def maps_of(explanation: Any, n: int | None = None, what: str = "maps") -> torch.Tensor:
    """An Explanation or an N×H×W (or H×W) tensor → float32 N×H×W on the CPU."""
    m = explanation.maps if isinstance(explanation, Explanation) else explanation
    if not torch.is_tensor(m):
        raise TypeError(f"give an Explanation or an N×H×W tensor of {what}, got {type(m).__name__}")
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() != 3:
        raise ValueError(f"{what} of shape {tuple(m.shape)}: give N×H×W maps, one per image")
    if n is not None and m.shape[0] != n:
        raise ValueError(f"{m.shape[0]} {what} for {n} images; give one map per image")
    m = m.detach().float().cpu()
    if not torch.isfinite(m).all():
        raise ValueError(f"{what} contain NaN or infinite values; give finite maps")
    return m


def masks_of(boxes: Any = None, masks: Any = None, n: int = 0, size: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Ground truth as N×H×W bool: from ``masks`` (N×H×W, non-zero = inside) or ``boxes``
    (N×4 x0, y0, x1, y1 in pixels of the map, end exclusive)."""
    if (boxes is None) == (masks is None):
        raise ValueError("give the ground truth as boxes=N×4 (x0, y0, x1, y1) or masks=N×H×W, exactly one of them")
    if masks is not None:
        m = torch.as_tensor(masks)
        if m.dim() == 4 and m.shape[1] == 1:
            m = m[:, 0]
        if m.dim() == 2:
            m = m.unsqueeze(0)
        if m.dim() != 3 or m.shape[0] != n or tuple(m.shape[-2:]) != tuple(size):
            raise ValueError(
                f"masks of shape {tuple(m.shape)} do not match {n} maps of size {tuple(size)}; "
                "give one H×W mask per map"
            )
        return m.detach().cpu() != 0
    b = torch.as_tensor(boxes)
    if b.dim() == 1:
        b = b.unsqueeze(0)
    if b.dim() != 2 or b.shape != (n, 4):
        raise ValueError(f"boxes of shape {tuple(b.shape)} do not match {n} maps; give N×4 (x0, y0, x1, y1)")
    return boxes_to_masks(b.round().long(), size)


def resolve_method(method: Callable | str) -> tuple[str, Callable]:
    """A method name (``-`` or ``_``) or callable → (name, function)."""
    if isinstance(method, str):
        fn = METHODS.get(method.replace("-", "_"))
        if fn is None:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(sorted(METHODS))}")
        return method.replace("-", "_"), fn
    if not callable(method):
        raise TypeError(f"method must be a name or a callable, got {type(method).__name__}")
    return getattr(method, "__name__", "method"), method


def explained_classes(
    model: nn.Module,
    x: torch.Tensor,
    target: Any,
    explanation: Any = None,
    y: torch.Tensor | None = None,
    what: str = "metric",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x checked and in the model's dtype, the class of each sample) — the explanation's classes when
    ``target`` is None and an Explanation is given, else the target resolved on the model."""
    if target is None:
        target = explanation.classes if isinstance(explanation, Explanation) else "predicted"
    p = prepare(model, x, target, y, what)
    if not p.target.is_class:
        raise ValueError(f"{what} scores a class; give a class target (an index, 'predicted', 'second', 'true')")
    bs = check_batch_size(None, p.x)
    with LayerTap(model) as tap, torch.no_grad():
        logits = torch.cat([logits_of(tap.run(p.x[a:b])) for a, b in chunks(p.n, bs)])
        classes = p.target.classes(logits, p.labels)
    return p.x, classes.to(p.x.device)


def class_scores(
    model: nn.Module, xs: torch.Tensor, classes: torch.Tensor, batch_size: int | None, kind: str = "logit"
) -> torch.Tensor:
    """Scores of ``classes`` on the images ``xs`` (M×C×H×W), batched: the logit, or with kind="argmax"
    the predicted class (long)."""
    bs = check_batch_size(batch_size, xs)
    out = []
    with LayerTap(model) as tap, torch.no_grad():
        for a, b in chunks(xs.shape[0], bs):
            z = logits_of(tap.run(xs[a:b])).float()
            out.append(z.argmax(1) if kind == "argmax" else z.gather(1, classes[a:b].view(-1, 1)).squeeze(1))
    return torch.cat(out) if out else torch.empty(0)


def rng(seed: int) -> np.random.RandomState:
    """The metrics' random source: numpy's legacy RandomState (stable across numpy versions), drawn in
    Quantus' order, so ``np.random.seed(seed)`` before a Quantus call gives the same draws."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return np.random.RandomState(int(seed))


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row pair (float64; NaN when a row is constant)."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / den
    return torch.where(den > 0, r.clamp(-1, 1), torch.full_like(r, float("nan")))


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row pair (average ranks for ties, as scipy), float64."""
    from scipy.stats import rankdata

    ra = torch.from_numpy(rankdata(a.double().cpu().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.double().cpu().numpy(), axis=1))
    return pearson_rows(ra, rb)
