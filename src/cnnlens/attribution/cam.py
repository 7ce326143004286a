"""Class activation maps: CAM, Grad-CAM and Grad-CAM++.

CAM (Zhou et al. 2016) needs a head "global average pool → linear": with f_k the
k-th feature map of the pooled layer and w^c the classifier row of class c,

    S_c = Σ_k w_k^c · mean_xy f_k(x, y) + b_c = mean_xy M_c(x, y) + b_c,
    M_c(x, y) = Σ_k w_k^c f_k(x, y),

so the map is exact bookkeeping of the score over positions. Grad-CAM
(Selvaraju et al. 2017) replaces w^c by the spatially averaged gradient, which
works for any head and any layer A:

    α_k^c = 1/(H·W) Σ_ij ∂y_c/∂A^k_ij,     L^c = ReLU(Σ_k α_k^c A^k).

On a GAP + linear head α_k^c = w_k^c/(H·W), so Grad-CAM there is CAM/(H·W) before
the ReLU. Only the backward from the score to the layer runs: the layer's output is
made a leaf of the graph for the call, so nothing before it is differentiated and
no parameter gradient is computed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..results import Explanation
from ..tap import LayerTap, find_last_spatial_layer, resolve_layer
from ._common import Layout, Prepared, finish, log, logits_of, pick_classes, prepare, score, target_layers, upsample
from .._autograd import needs_autograd


class LeafAt:
    """A LayerTap edit that makes a layer's output a leaf of the autograd graph.

    The recorded leaf ``A`` is what gradients are taken against; the model carries
    on with a copy, so in-place operations after the layer cannot modify ``A``.
    """

    def __init__(self, name: str):
        self.name = name
        self.A: torch.Tensor | None = None

    def __call__(self, module, inputs, output):
        if not torch.is_tensor(output) or output.dim() != 4:
            shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
            raise ValueError(
                f"layer {self.name!r} returns {shape}, not an N×C×H×W feature map; "
                "name a convolutional layer with layer=..."
            )
        leaf = output.detach().requires_grad_(True)
        self.A = leaf
        return leaf.clone()


def head_tolerance(feats: torch.Tensor, W: torch.Tensor, b: torch.Tensor, logits: torch.Tensor,
                   low: torch.dtype = torch.float32) -> float:
    """How far a GAP + linear head recomputed in float32 may be from logits computed in ``low`` precision.

    Each logit Σ_k w_ck f_k + b_c is rounded at ``low``'s unit roundoff u per operation, so it
    may be off by about u·(Σ_k |w_ck f_k| + |b_c|) (+ the rounding of the pooled features);
    the bound below is 8 u of that magnitude, plus the float32 slack of 10⁻³ of the largest
    logit. In bfloat16 a logit near 50 is only known to ±0.125.
    """
    u = torch.finfo(low).eps if low.is_floating_point else torch.finfo(torch.float32).eps
    mag = feats.abs() @ W.abs().T + b.abs()
    return float(8 * u * (mag + logits.abs()).max()) + 1e-3 * float(logits.abs().max()) + 1e-4


def layer_name(model: nn.Module, p: Prepared, layer: Any) -> str:
    """The dotted name of ``layer``, or the last spatial layer (logged) when None."""
    if layer is None:
        return find_last_spatial_layer(model, p.x)
    return resolve_layer(model, layer)[0]


def warn_if_flat(model: nn.Module, p: Prepared, name: str, A: torch.Tensor) -> None:
    """Warn (once per call) when the layer's grid is 1×1: its map is one value spread over the image."""
    if A.dim() == 4 and A.shape[-1] * A.shape[-2] == 1:
        try:
            better = f"the last layer with a real grid is {find_last_spatial_layer(model, p.x)!r}"
        except ValueError:
            better = "the model has no layer with a grid larger than 1×1"
        log.warning("layer %r has a 1×1 grid, so its map is constant over the image; %s", name, better)


def layer_gradient(tap: LayerTap, leaf: LeafAt, p: Prepared, xb: torch.Tensor, classes: torch.Tensor | None = None,
                   layout: Layout | None = None):
    """(A, ∂s/∂A, classes, s) for a batch inside a tap that has ``leaf`` as an edit."""
    leaf.A = None
    out = layout.run(tap, xb) if layout is not None else tap.run(xb)
    if leaf.A is None:
        raise ValueError(f"layer {leaf.name!r} did not run in the forward pass; name a layer that forward() uses")
    if classes is None:
        classes = pick_classes(p, out, xb.shape[0])
    s = score(p, tap, out, classes)
    g = None
    if s.requires_grad:
        (g,) = torch.autograd.grad(s.sum(), leaf.A, allow_unused=True)
    if g is None:
        raise ValueError(
            f"the target's score does not depend on layer {leaf.name!r}: no path leads from it to the target "
            "(a side branch, or a layer after the target); name a layer on the way from the input to the target"
        )
    return leaf.A.detach().contiguous(), g.contiguous(), classes, s.detach()


def gradcam_tap(model: nn.Module, p: Prepared, name: str) -> tuple[LayerTap, LeafAt]:
    leaf = LeafAt(name)
    return LayerTap(model, [name] + target_layers(p.target), edits={name: leaf}), leaf


def gradcam_weights(A: torch.Tensor, G: torch.Tensor, plus: bool = False) -> torch.Tensor:
    """Channel weights N×K: Grad-CAM α_k = mean_ij G; Grad-CAM++ Σ_ij a_ij ReLU(G_ij).

    Grad-CAM++ (Chattopadhay et al. 2018, with the exponential-score closed form):
    a_ij = G² / (2 G² + Σ_ab A_ab · G³), and 0 where G = 0.
    """
    if not plus:
        return G.mean((2, 3))
    g2 = G * G
    g3 = g2 * G
    denom = 2 * g2 + A.sum((2, 3), keepdim=True) * g3
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    a = torch.where((G != 0) & (denom != 0), g2 / safe, torch.zeros_like(G))
    return (a * G.clamp_min(0)).sum((2, 3))


def _gradcam(model: nn.Module, x: torch.Tensor, target: Any, layer: Any, relu: bool, y, plus: bool,
             method: str, channels_last: bool | None = None) -> Explanation:
    p = prepare(model, x, target, y, method)
    name = layer_name(model, p, layer)
    tap, leaf = gradcam_tap(model, p, name)
    with tap:
        A, G, classes, s = layer_gradient(tap, leaf, p, p.x, layout=Layout(model, p.x, channels_last))
    warn_if_flat(model, p, name, A)
    A, G = A.float(), G.float()
    w = gradcam_weights(A, G, plus)
    lin = torch.einsum("nk,nkhw->nhw", w, A)
    raw = lin.clamp_min(0) if relu else lin
    return finish(p, upsample(raw, p.size), method, classes, layer=name, raw=raw,
                  settings={"layer": name, "relu": relu, "grid": tuple(raw.shape[-2:])},
                  extras={"pre_relu": lin, "weights": w, "score": s})


@needs_autograd
def gradcam(model: nn.Module, x: torch.Tensor, target: Any = "predicted", *, layer: Any = None,
            relu: bool = True, y: torch.Tensor | None = None, channels_last: bool | None = None) -> Explanation:
    """Grad-CAM: L = ReLU(Σ_k α_k A^k), α_k = mean_ij ∂y_c/∂A^k_ij, at ``layer`` (default: the last spatial layer).

    ``raw`` is the map at the layer's grid, ``maps`` its bilinear upsampling to the
    input size; ``extras["pre_relu"]`` = Σ_k α_k A^k, ``extras["weights"]`` = α.

    >>> e = gradcam(model, x, target="second", layer="layer4")     # doctest: +SKIP
    """
    return _gradcam(model, x, target, layer, relu, y, False, "gradcam", channels_last)


@needs_autograd
def gradcam_pp(model: nn.Module, x: torch.Tensor, target: Any = "predicted", *, layer: Any = None,
               relu: bool = True, y: torch.Tensor | None = None, channels_last: bool | None = None) -> Explanation:
    """Grad-CAM++: L = ReLU(Σ_k w_k A^k), w_k = Σ_ij a^k_ij ReLU(∂y_c/∂A^k_ij), a = G²/(2G² + Σ_ab A_ab G³).

    >>> gradcam_pp(model, x).maps           # doctest: +SKIP
    """
    return _gradcam(model, x, target, layer, relu, y, True, "gradcam_pp", channels_last)


class _Order:
    """A LayerTap edit recording the order in which modules run (output unchanged)."""

    def __init__(self):
        self.names: list[str] = []

    def edit(self, name: str):
        def fn(module, inputs, output):
            self.names.append(name)
            return output

        return fn


_NO_HEAD = ("{why}; CAM needs a global-average-pool + linear head — use gradcam(model, x) (any head), "
            "or pass layer= (the pooled layer) and classifier= (the linear layer)")


@needs_autograd
def cam(model: nn.Module, x: torch.Tensor, target: Any = "predicted", *, layer: Any = None,
        classifier: Any = None, y: torch.Tensor | None = None) -> Explanation:
    """Class activation map: M_c(x, y) = Σ_k w_k^c f_k(x, y), for a global-average-pool + linear head.

    ``layer`` is the pooled layer (f), ``classifier`` the linear layer (w); by default
    they come from ``model.spec`` (pooled_layer, classifier) or are found: the last
    spatial layer and the last ``nn.Linear`` that runs, accepted only if that linear
    applied to the spatial mean of the layer reproduces the model's logits. Then
    mean_xy M_c = y_c − b_c (Zhou et al.'s Σ_xy M_c = S_c, with the mean that GAP takes).
    ``raw`` is M_c at the layer's grid; ``maps`` its bilinear upsampling.

    >>> e = cam(model, x)                         # doctest: +SKIP
    >>> e.raw.mean((1, 2))                         # = logits[c] − bias[c]
    """
    p = prepare(model, x, target, y, "cam")
    if not p.target.is_class:
        raise ValueError("CAM explains a class; for a channel or neuron target use gradcam(model, x, target=...)")
    spec = getattr(model, "spec", None)
    if layer is None and getattr(spec, "pooled_layer", None):
        layer = spec.pooled_layer
    if classifier is None and getattr(spec, "classifier", None):
        classifier = spec.classifier
    name = layer_name(model, p, layer)
    order = _Order()
    if classifier is not None:
        cls_name, lin = resolve_layer(model, classifier)
        if not isinstance(lin, nn.Linear):
            raise ValueError(_NO_HEAD.format(why=f"classifier {cls_name!r} is a {type(lin).__name__}, not nn.Linear"))
        edits = {}
    else:
        edits = {n: order.edit(n) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        if not edits:
            raise ValueError(_NO_HEAD.format(why="the model has no nn.Linear layer"))
    with LayerTap(model, [name], edits=edits) as tap, torch.no_grad():
        out = logits_of(tap.run(p.x))
        A = tap[name]
        if not torch.is_tensor(A) or A.dim() != 4:
            raise ValueError(f"layer {name!r} does not return an N×C×H×W feature map; name the pooled layer with layer=...")
        classes = pick_classes(p, out, p.n)
    if classifier is None:
        if not order.names:
            raise ValueError(_NO_HEAD.format(why="no nn.Linear layer ran in the forward pass"))
        cls_name = order.names[-1]
        lin = dict(model.named_modules())[cls_name]
        log.info("CAM: pooled layer %s, classifier %s", name, cls_name)
    warn_if_flat(model, p, name, A)
    A_dtype = A.dtype
    A = A.float()
    feats = A.mean((2, 3))
    Wt = lin.weight.detach().float()
    b = lin.bias.detach().float() if lin.bias is not None else torch.zeros(Wt.shape[0], device=Wt.device)
    if Wt.shape[1] != feats.shape[1] or Wt.shape[0] != out.shape[1]:
        raise ValueError(_NO_HEAD.format(
            why=f"{cls_name!r} maps {Wt.shape[1]} features to {Wt.shape[0]} outputs, but {name!r} has "
                f"{feats.shape[1]} channels and the model {out.shape[1]} outputs"))
    rebuilt = feats @ Wt.T + b
    o = out.float()
    err = float((rebuilt - o).abs().max())
    tol = head_tolerance(feats, Wt, b, o, low=max((out.dtype, A_dtype, lin.weight.dtype), key=lambda d: torch.finfo(d).eps))
    if not err <= tol:
        raise ValueError(_NO_HEAD.format(
            why=f"{cls_name!r} applied to the spatial mean of {name!r} does not give the logits (off by {err:.3g}, "
                f"more than the {tol:.2g} that {str(out.dtype).replace('torch.', '')} rounding allows)"))
    raw = torch.einsum("nk,nkhw->nhw", Wt[classes], A)
    return finish(p, upsample(raw, p.size), "cam", classes, layer=name, raw=raw,
                  settings={"layer": name, "classifier": cls_name, "grid": tuple(raw.shape[-2:])},
                  extras={"bias": b[classes], "score": o.gather(1, classes.view(-1, 1)).squeeze(1)})
