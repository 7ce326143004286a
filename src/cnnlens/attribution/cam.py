"""Class activation maps: CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM and Eigen-CAM.

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

The gradient variants differ only in how (A, G = ∂y_c/∂A) become a map — one small
function each (:data:`COMBINE`), like pytorch-grad-cam's ``get_cam_weights``:

    Grad-CAM    Σ_k mean_ij(G_k) · A_k
    Grad-CAM++  Σ_k (Σ_ij a_kij ReLU(G_kij)) · A_k
    XGrad-CAM   Σ_k (Σ_ij A_kij G_kij / Σ_ij A_kij) · A_k          (Fu et al. 2020)
    HiResCAM    Σ_k G_k ⊙ A_k                                       (Draelos & Carin 2020)
    LayerCAM    Σ_k ReLU(G_k) ⊙ A_k                                 (Jiang et al. 2021)

Eigen-CAM (Muhammad & Yeasin 2020) needs no gradient: the projection of the
activations on their first principal component.

A layer's output is read as a grid by :mod:`cnnlens.grid` (tokens, channels-last).
Whether a 4-D output is N×C×H×W or N×H×W×C is decided from the module, never from a
shape that fits both ways; where nothing says, the call is refused in one line and
``layout="nchw"`` or ``layout="nhwc"`` (every function here takes it) decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..autograd import needs_autograd
from ..grid import as_grid, check_layout, grid_layout, to_grid
from ..results import Explanation
from ..tap import LayerTap, find_last_spatial_layer, resolve_layer
from .common import Layout, Prepared, finish, log, logits_of, pick_classes, prepare, score, target_layers, upsample


class LeafAt:
    """A LayerTap edit that makes a layer's output a leaf of the autograd graph.

    The recorded leaf ``A`` is what gradients are taken against; the model carries
    on with a copy, so in-place operations after the layer cannot modify ``A``.
    When the output is already part of a graph (an earlier layer of the same tap
    was made a leaf), it is recorded as it is, so one backward reaches every layer.
    """

    def __init__(self, name: str, layout: str | None = None):
        self.name = name
        self.layout = check_layout(layout)  # how a 4-D output is read (None: decided by cnnlens.grid)
        self.A: torch.Tensor | None = None

    def __call__(self, module, inputs, output):
        if not torch.is_tensor(output) or output.dim() not in (3, 4):
            shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
            raise ValueError(
                f"layer {self.name!r} returns {shape}, not a feature map (N×C×H×W, N×H×W×C or N×tokens×C); "
                "name a convolutional layer or a transformer block with layer=..."
            )
        leaf = output if output.requires_grad else output.detach().requires_grad_(True)
        self.A = leaf
        return leaf.clone()


def head_tolerance(
    feats: torch.Tensor, W: torch.Tensor, b: torch.Tensor, logits: torch.Tensor, low: torch.dtype = torch.float32
) -> float:
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


def flat_note(model: nn.Module, p: Prepared, name: str, A: torch.Tensor) -> str | None:
    """Why a layer's map is one value spread over the image when its grid is 1×1 (None otherwise), naming a
    better layer; :func:`~cnnlens.attribution.common.finish` puts it in its warning."""
    if A.dim() == 4 and A.shape[-1] * A.shape[-2] == 1:
        try:
            better = f"the last layer with a real grid is {find_last_spatial_layer(model, p.x)!r}"
        except ValueError:
            better = "the model has no layer with a grid larger than 1×1"
        return f"layer {name!r} has a 1×1 grid, so its map is constant over the image; {better}"
    return None


def layer_gradient(
    tap: LayerTap,
    leaf: LeafAt,
    p: Prepared,
    xb: torch.Tensor,
    classes: torch.Tensor | None = None,
    layout: Layout | None = None,
):
    """(A, ∂s/∂A, classes, s) for a batch inside a tap that has ``leaf`` as an edit."""
    (A, G), classes, s = layer_gradients(tap, [leaf], p, xb, classes, layout)
    return A[0], G[0], classes, s


def layer_gradients(
    tap: LayerTap,
    leaves: Sequence[LeafAt],
    p: Prepared,
    xb: torch.Tensor,
    classes: torch.Tensor | None = None,
    layout: Layout | None = None,
):
    """([A_l], [∂s/∂A_l]), classes, s for several layers from one forward and one backward."""
    for leaf in leaves:
        leaf.A = None
    out = layout.run(tap, xb) if layout is not None else tap.run(xb)
    acts: list[torch.Tensor] = []
    for leaf in leaves:
        if leaf.A is None:
            raise ValueError(f"layer {leaf.name!r} did not run in the forward pass; name a layer that forward() uses")
        acts.append(leaf.A)
    if classes is None:
        classes = pick_classes(p, out, xb.shape[0])
    s = score(p, tap, out, classes)
    gs: list[torch.Tensor | None] = [None] * len(leaves)
    if s.requires_grad:
        gs = list(torch.autograd.grad(s.sum(), acts, allow_unused=True))
    grads: list[torch.Tensor] = []
    for leaf, g in zip(leaves, gs, strict=True):
        if g is None:
            raise ValueError(
                f"the target's score does not depend on layer {leaf.name!r}: no path leads from it to the target "
                "(a side branch, or a layer after the target); name a layer on the way from the input to the target"
            )
        grads.append(g)
    hw = (int(xb.shape[-2]), int(xb.shape[-1]))
    As, Gs = [], []
    # token and channels-last outputs as N×C×h×w (a linear map: G maps alike)
    for leaf, A, g in zip(leaves, acts, grads, strict=True):
        grid, prefix = grid_layout(A, tap.model, resolve_layer(tap.model, leaf.name)[1], hw, leaf.name, leaf.layout)
        if grid != "nchw":
            log.info(
                "layer %s: %s output read as an N×C×h×w grid%s",
                leaf.name,
                grid,
                f" ({prefix} prefix token(s) dropped)" if prefix else "",
            )
        As.append(to_grid(A.detach(), grid, prefix, hw).contiguous())
        Gs.append(to_grid(g, grid, prefix, hw).contiguous())
    return (As, Gs), classes, s.detach()


def gradcam_tap(model: nn.Module, p: Prepared, name: str, layout: str | None = None) -> tuple[LayerTap, LeafAt]:
    leaf = LeafAt(name, layout)
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


def xgradcam_weights(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM channel weights N×K: α_k = Σ_ij (A_kij / Σ_ab A_kab) · G_kij (0 for a channel summing to 0)."""
    total = A.sum((2, 3))
    safe = torch.where(total != 0, total, torch.ones_like(total))
    return torch.where(total != 0, (A * G).sum((2, 3)) / safe, torch.zeros_like(total))


def _weighted(w: torch.Tensor, A: torch.Tensor):
    return torch.einsum("nk,nkhw->nhw", w, A), w


#: (A, G) → (map before the ReLU, channel weights or None), per method
COMBINE: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]] = {
    "gradcam": lambda A, G: _weighted(gradcam_weights(A, G), A),
    "gradcam_pp": lambda A, G: _weighted(gradcam_weights(A, G, plus=True), A),
    "xgradcam": lambda A, G: _weighted(xgradcam_weights(A, G), A),
    "hirescam": lambda A, G: ((G * A).sum(1), None),
    "layercam": lambda A, G: ((G.clamp_min(0) * A).sum(1), None),
}


def _gradcam(
    model: nn.Module,
    x: torch.Tensor,
    target: Any,
    layer: Any,
    relu: bool,
    y,
    method: str,
    channels_last: bool | None = None,
    layout: str | None = None,
) -> Explanation:
    p = prepare(model, x, target, y, method)
    name = layer_name(model, p, layer)
    tap, leaf = gradcam_tap(model, p, name, layout)
    with tap:
        A, G, classes, s = layer_gradient(tap, leaf, p, p.x, layout=Layout(model, p.x, channels_last))
    note = flat_note(model, p, name, A)
    A, G = A.float(), G.float()
    lin, w = COMBINE[method](A, G)
    raw = lin.clamp_min(0) if relu else lin
    extras = {"pre_relu": lin, "score": s}
    if w is not None:
        extras["weights"] = w
    return finish(
        p,
        upsample(raw, p.size),
        method,
        classes,
        layer=name,
        raw=raw,
        settings={"layer": name, "relu": relu, "grid": tuple(raw.shape[-2:])},
        extras=extras,
        note=note,
    )


@needs_autograd
def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    layer: Any = None,
    relu: bool = True,
    y: torch.Tensor | None = None,
    channels_last: bool | None = None,
    layout: str | None = None,
) -> Explanation:
    """Grad-CAM: L = ReLU(Σ_k α_k A^k), α_k = mean_ij ∂y_c/∂A^k_ij, at ``layer`` (default: the last spatial layer).

    ``raw`` is the map at the layer's grid, ``maps`` its bilinear upsampling to the
    input size; ``extras["pre_relu"]`` = Σ_k α_k A^k, ``extras["weights"]`` = α.
    ``layout``: "nchw" or "nhwc" for a 4-D layer output that reads both ways (C equal to the
    grid width, e.g. a ConvNeXt block's LayerNorm); None decides from the module (module docs).

    >>> e = gradcam(model, x, target="second", layer="layer4")     # doctest: +SKIP

    Args:
        model: any ``nn.Module`` mapping N×C×H×W to N×K logits (left exactly as it was).
        x: the images, N×C×H×W (pixel space, [0, 1], for models loaded by cnnlens).
        target: the class c whose score y_c is explained: ``"predicted"``, ``"second"`` (the runner-up),
            ``"true"`` (needs ``y``), a class index or name, a per-image list or tensor of classes,
            or a :class:`~cnnlens.targets.Target`.
        layer: the layer A is read at, by dotted name (``"layer4"``, ``"features.3"``) or module;
            ``None`` picks the last layer with a spatial output (logged). Token and channels-last
            layers (ViT, Swin, ConvNeXt) are read as grids.
        relu: apply the final ReLU (the paper's map, positive evidence only); ``False`` keeps the signed
            map Σ_k α_k A^k, whose negative part is evidence against the class.
        y: the true labels (N integers), needed only for ``target="true"``.
        channels_last: the input's memory layout for the forward and backward. ``None`` (default) passes
            image-sized batches (≥ 3 channels, ≥ 64×64) of convolutional models channels-last, which is
            faster on the CPU and gives the same map up to float rounding; ``False`` forces the default
            (contiguous) layout, ``True`` forces channels-last. A model that refuses channels-last is
            retried contiguous.

    Returns:
        Explanation: ``maps`` N×H×W at the input's size, ``raw`` N×h×w at the layer's grid,
        ``classes`` the explained class of each image, ``layer`` the layer used, and
        ``extras["pre_relu"]`` and ``extras["weights"]`` (α, N×K).

    Raises:
        ValueError: an unknown layer (with close matches), a layer without a spatial grid, a layer that runs
            twice in one forward, a class out of range, ``target="true"`` without ``y``, or no image.
    """
    return _gradcam(model, x, target, layer, relu, y, "gradcam", channels_last, layout)


@needs_autograd
def gradcam_pp(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    layer: Any = None,
    relu: bool = True,
    y: torch.Tensor | None = None,
    channels_last: bool | None = None,
    layout: str | None = None,
) -> Explanation:
    """Grad-CAM++: L = ReLU(Σ_k w_k A^k), w_k = Σ_ij a^k_ij ReLU(∂y_c/∂A^k_ij), a = G²/(2G² + Σ_ab A_ab G³).

    >>> gradcam_pp(model, x).maps           # doctest: +SKIP
    """
    return _gradcam(model, x, target, layer, relu, y, "gradcam_pp", channels_last, layout)


@needs_autograd
def xgradcam(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    layer: Any = None,
    relu: bool = True,
    y: torch.Tensor | None = None,
    channels_last: bool | None = None,
    layout: str | None = None,
) -> Explanation:
    """XGrad-CAM (Fu et al. 2020): L = ReLU(Σ_k α_k A^k), α_k = Σ_ij (A^k_ij / Σ_ab A^k_ab) ∂y_c/∂A^k_ij.

    The weights that satisfy the paper's conservation axiom: on a GAP + linear head
    over non-negative features, α = w^c/(H·W) and Σ_ij (Σ_k α_k A^k_ij) = y_c − b_c.

    >>> xgradcam(model, x, layer="layer4").extras["weights"]     # doctest: +SKIP
    """
    return _gradcam(model, x, target, layer, relu, y, "xgradcam", channels_last, layout)


@needs_autograd
def hirescam(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    layer: Any = None,
    relu: bool = True,
    y: torch.Tensor | None = None,
    channels_last: bool | None = None,
    layout: str | None = None,
) -> Explanation:
    """HiResCAM (Draelos & Carin 2020): L = ReLU(Σ_k ∂y_c/∂A^k ⊙ A^k), the gradient × activation summed over channels.

    No spatial averaging of the gradient, so where the head is linear in A (GAP +
    linear) the map before the ReLU adds up to the score: Σ_ij pre_relu = y_c − b_c.

    >>> hirescam(model, x, relu=False).raw.sum((1, 2))     # doctest: +SKIP
    """
    return _gradcam(model, x, target, layer, relu, y, "hirescam", channels_last, layout)


@needs_autograd
def layercam(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    layer: Any = None,
    gamma: float = 2.0,
    y: torch.Tensor | None = None,
    channels_last: bool | None = None,
    layout: str | None = None,
) -> Explanation:
    """LayerCAM (Jiang et al. 2021): L = ReLU(Σ_k ReLU(∂y_c/∂A^k) ⊙ A^k), also fused over several layers.

    ``layer`` is one layer (default: the last spatial layer) or a list of layers.
    With several, one forward and one backward give every layer's map L_l; each is
    scaled as in the paper's eq. 9, tanh(γ · L_l / max L_l), upsampled to the input
    and fused by the element-wise maximum (``extras["per_layer"]`` holds each L_l
    at its grid). With one layer, ``maps`` is L itself (no scaling).

    >>> layercam(model, x, layer=["layer2", "layer3", "layer4"]).maps     # doctest: +SKIP
    """
    if not isinstance(layer, (list, tuple)):
        return _gradcam(model, x, target, layer, True, y, "layercam", channels_last, layout)
    if not layer:
        raise ValueError("layercam: layer=[] names no layer; give one layer or a list of layers")
    p = prepare(model, x, target, y, "layercam")
    names = list(dict.fromkeys(layer_name(model, p, l) for l in layer))
    leaves = [LeafAt(n, layout) for n in names]
    with LayerTap(model, names + target_layers(p.target), edits=dict(zip(names, leaves, strict=True))) as tap:
        (As, Gs), classes, s = layer_gradients(tap, leaves, p, p.x, layout=Layout(model, p.x, channels_last))
    per_layer, fused = [], None
    for A, G in zip(As, Gs, strict=True):
        L = COMBINE["layercam"](A.float(), G.float())[0].clamp_min(0)
        per_layer.append(L)
        top = L.flatten(1).amax(1).view(-1, 1, 1)
        scaled = torch.tanh(float(gamma) * L / torch.where(top > 0, top, torch.ones_like(top)))
        up = upsample(scaled, p.size)
        fused = up if fused is None else torch.maximum(fused, up)
    assert fused is not None  # layer names at least one layer (checked above)
    return finish(
        p,
        fused,
        "layercam",
        classes,
        layer=",".join(names),
        settings={
            "layers": names,
            "gamma": float(gamma),
            "fusion": "max of tanh(γ·L/max L)",
            "grids": [tuple(L.shape[-2:]) for L in per_layer],
        },
        extras={"per_layer": [L.detach().float().cpu() for L in per_layer], "score": s},
    )


@needs_autograd
def eigencam(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    layer: Any = None,
    relu: bool = True,
    y: torch.Tensor | None = None,
    channels_last: bool | None = None,
    layout: str | None = None,
) -> Explanation:
    """Eigen-CAM (Muhammad & Yeasin 2020): the activations projected on their first principal component.

    With A the layer's output as an (H·W)×K matrix per image, centred over positions
    (Ā = A − mean_ij A), and v₁ the first right-singular vector of Ā, the map is
    L = ReLU(Ā v₁). SVD leaves the sign of v₁ arbitrary; it is chosen so that the map
    correlates positively with the activations' channel mean, mean_k A^k.
    No gradient and no class: the map is the same for every target (``classes`` still
    records the target, for faithfulness scores). ``extras["pre_relu"]`` = Ā v₁,
    ``extras["explained"]`` = σ₁² / Σ σ², the share of the variance it shows.

    >>> eigencam(model, x, layer="layer4").maps     # doctest: +SKIP
    """
    p = prepare(model, x, target, y, "eigencam")
    name = layer_name(model, p, layer)
    with LayerTap(model, [name] + target_layers(p.target), detach=True) as tap, torch.no_grad():
        out = Layout(model, p.x, channels_last).run(tap, p.x)
        A = as_grid(tap[name], model, resolve_layer(model, name)[1], p.size, name, check_layout(layout))
        classes = pick_classes(p, out, p.n)
    A = A.float().contiguous()
    n, k, h, w = A.shape
    M = A.reshape(n, k, h * w).transpose(1, 2)  # N × positions × channels
    Mc = M - M.mean(1, keepdim=True)
    _, S, Vh = torch.linalg.svd(Mc, full_matrices=False)
    proj = torch.einsum("npk,nk->np", Mc, Vh[:, 0])
    mean = M.mean(2)
    sign = torch.where((proj * (mean - mean.mean(1, keepdim=True))).sum(1) < 0, -1.0, 1.0)
    lin = (proj * sign.view(-1, 1)).view(n, h, w)
    raw = lin.clamp_min(0) if relu else lin
    var = (S * S).sum(1)
    explained = torch.where(
        var > 0, S[:, 0] ** 2 / torch.where(var > 0, var, torch.ones_like(var)), torch.zeros_like(var)
    )
    return finish(
        p,
        upsample(raw, p.size),
        "eigencam",
        classes,
        layer=name,
        raw=raw,
        settings={"layer": name, "relu": relu, "grid": (h, w)},
        extras={"pre_relu": lin, "explained": explained},
    )


class _Order:
    """A LayerTap edit recording the order in which modules run (output unchanged)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def edit(self, name: str):
        def fn(module, inputs, output):
            self.names.append(name)
            return output

        return fn


_NO_HEAD = (
    "{why}; CAM needs a global-average-pool + linear head — use gradcam(model, x) (any head), "
    "or pass layer= (the pooled layer) and classifier= (the linear layer)"
)


def _checked_head(lin: nn.Linear, A: torch.Tensor, A_dtype, out: torch.Tensor, name: str, cls_name: str):
    """The head's weights and bias (float32), checked to give the logits ``out`` from the spatial mean of the
    layer's map A (up to the rounding of the dtypes involved); and the logits in float32."""
    feats = A.mean((2, 3))
    Wt = lin.weight.detach().float()
    b = lin.bias.detach().float() if lin.bias is not None else torch.zeros(Wt.shape[0], device=Wt.device)
    if Wt.shape[1] != feats.shape[1] or Wt.shape[0] != out.shape[1]:
        raise ValueError(
            _NO_HEAD.format(
                why=f"{cls_name!r} maps {Wt.shape[1]} features to {Wt.shape[0]} outputs, but {name!r} has "
                f"{feats.shape[1]} channels and the model {out.shape[1]} outputs"
            )
        )
    rebuilt = feats @ Wt.T + b
    o = out.float()
    err = float((rebuilt - o).abs().max())
    tol = head_tolerance(
        feats, Wt, b, o, low=max((out.dtype, A_dtype, lin.weight.dtype), key=lambda d: torch.finfo(d).eps)
    )
    if not err <= tol:
        raise ValueError(
            _NO_HEAD.format(
                why=f"{cls_name!r} applied to the spatial mean of {name!r} does not give the logits (off by {err:.3g}, "
                f"more than the {tol:.2g} that {str(out.dtype).replace('torch.', '')} rounding allows)"
            )
        )
    return Wt, b, o


@needs_autograd
def cam(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    layer: Any = None,
    classifier: Any = None,
    y: torch.Tensor | None = None,
) -> Explanation:
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
    if layer is None and (pooled := getattr(spec, "pooled_layer", None)):
        layer = pooled
    if classifier is None and (head_name := getattr(spec, "classifier", None)):
        classifier = head_name
    name = layer_name(model, p, layer)
    order = _Order()
    if classifier is not None:
        cls_name, head = resolve_layer(model, classifier)
        if not isinstance(head, nn.Linear):
            raise ValueError(_NO_HEAD.format(why=f"classifier {cls_name!r} is a {type(head).__name__}, not nn.Linear"))
        lin = head
        edits = {}
    else:
        edits = {n: order.edit(n) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        if not edits:
            raise ValueError(_NO_HEAD.format(why="the model has no nn.Linear layer"))
    with LayerTap(model, [name], edits=edits) as tap, torch.no_grad():
        out = logits_of(tap.run(p.x))
        A = tap[name]
        if not torch.is_tensor(A) or A.dim() != 4:
            raise ValueError(
                f"layer {name!r} does not return an N×C×H×W feature map; name the pooled layer with layer=..."
            )
        classes = pick_classes(p, out, p.n)
    if classifier is None:
        if not order.names:
            raise ValueError(_NO_HEAD.format(why="no nn.Linear layer ran in the forward pass"))
        cls_name = order.names[-1]
        head = dict(model.named_modules())[cls_name]
        assert isinstance(head, nn.Linear)  # order records nn.Linear layers only
        lin = head
        log.info("CAM: pooled layer %s, classifier %s", name, cls_name)
    note = flat_note(model, p, name, A)
    A_dtype = A.dtype
    A = A.float()
    Wt, b, o = _checked_head(lin, A, A_dtype, out, name, cls_name)
    raw = torch.einsum("nk,nkhw->nhw", Wt[classes], A)
    return finish(
        p,
        upsample(raw, p.size),
        "cam",
        classes,
        layer=name,
        raw=raw,
        settings={"layer": name, "classifier": cls_name, "grid": tuple(raw.shape[-2:])},
        extras={"bias": b[classes], "score": o.gather(1, classes.view(-1, 1)).squeeze(1)},
        note=note,
    )
