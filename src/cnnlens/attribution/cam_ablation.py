"""Gradient-free CAMs: Ablation-CAM and Score-CAM.

Ablation-CAM (Desai & Ramaswamy, WACV 2020) weighs each channel k of a layer A by
how much the class score y_c drops when the channel is set to zero:

    w_k = (y_c − y_c^{A_k = 0}) / y_c,        L = ReLU(Σ_k w_k A_k).

On a global-average-pool + linear head the drop is closed-form: y_c = Σ_k W_ck ·
mean(A_k) + b_c, so zeroing channel k lowers it by exactly W_ck · mean(A_k) — no
forward at all. At any other layer, only the part of the network after the layer
runs on the batch of ablated activations (a torch.fx graph split at the layer: the
layers before it run once, never again).

Score-CAM (Wang et al., CVPRW 2020) weighs each channel by the score of the input
masked by that channel's activation map, bilinearly upsampled (corners aligned)
and min-max normalised to [0, 1]: w = softmax_k(y_c(x ⊙ M_k)), L = ReLU(Σ_k w_k A_k).
The layer runs once; the masked inputs run in batches, channels-last; channels
whose map is constant give an all-zero mask and share one forward.

Both follow pytorch-grad-cam's definitions (the tests check the maps agree).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..autograd import needs_autograd
from ..batching import Tuner, arms, check_batch_size, chunks, workload
from ..grid import check_layout, grid_layout, to_grid
from ..results import Explanation
from ..tap import LayerTap, resolve_layer
from .cam import layer_name
from .common import Layout, Progress, finish, log, logits_of, pick_classes, prepare, upsample
from .incremental import Traced, Unsupported

#: ablated activations per batch when only the network after the layer runs
ABLATIONS_PER_BATCH = 64

_POOL_FUNCTIONS = {F.adaptive_avg_pool2d}
_PASS_MODULES = (nn.Flatten, nn.Dropout, nn.Identity)


def _gap_linear_head(tr: Traced, layer_node) -> nn.Linear | None:
    """The linear layer when the layer's output reaches the logits only through global average pooling,
    flattening/dropout and one ``nn.Linear`` (then each channel's ablation drop is closed-form)."""
    n, pooled = layer_node, False
    while True:
        users = list(n.users)
        if len(users) != 1:
            return None
        u = users[0]
        mod = tr.modules.get(u.target) if u.op == "call_module" else None
        if u.op == "output":
            return None
        if not pooled:
            ok = (
                (isinstance(mod, nn.AdaptiveAvgPool2d) and mod.output_size in (1, (1, 1)))
                or (u.op == "call_function" and u.target in _POOL_FUNCTIONS and u.args[1:2] in ((1,), ((1, 1),)))
                or (
                    u.op == "call_method"
                    and u.target == "mean"
                    and tuple(u.args[1:2]) in (((2, 3),), ((-2, -1),))
                    or u.op == "call_function"
                    and u.target is torch.mean
                    and tuple(u.args[1:2]) in (((2, 3),), ((-2, -1),))
                )
            )
            if type(mod).__name__ == "SelectAdaptivePool2d":
                ok = getattr(mod, "pool_type", "") == "avg"
            if not ok:
                return None
            pooled = True
        elif isinstance(mod, nn.Linear):
            return mod if [v.op for v in u.users] == ["output"] else None
        elif not (
            isinstance(mod, _PASS_MODULES)
            and not (isinstance(mod, nn.Dropout) and mod.training)
            or u.op == "call_function"
            and u.target is torch.flatten
            or u.op == "call_method"
            and u.target in ("flatten", "view", "reshape", "squeeze")
        ):
            return None
        n = u


def _layer_output(tap: LayerTap, name: str) -> torch.Tensor:
    A = tap[name]
    if not torch.is_tensor(A):
        raise ValueError(f"layer {name!r} returns {type(A).__name__}, not a feature map; name a layer with a grid")
    return A


def _ablated(one: torch.Tensor, layout: str, prefix: int, ks: torch.Tensor) -> torch.Tensor:
    """len(ks) copies of one image's layer output (its own layout), copy j with channel ks[j] zeroed."""
    Ab = one.repeat(len(ks), *([1] * (one.dim() - 1)))
    j = torch.arange(len(ks), device=one.device)
    if layout == "nchw":
        Ab[j, ks] = 0
    elif layout == "nhwc":
        Ab[j, :, :, ks] = 0
    else:  # tokens: the patch tokens' channel, the prefix tokens untouched
        Ab[:, prefix:][j, :, ks] = 0
    return Ab


def _traced_head(model: nn.Module, name: str, lay: str):
    """The model traced with the layer as a leaf, the layer's node and, on an NCHW layer followed by global
    average pooling and a linear head, that head; (None, None, None, why) when the model does not trace."""
    try:
        tr = Traced(model, leaves=(name,))
        node = tr.module_node(name)
        if node is None:
            raise Unsupported(f"layer {name!r} is not called once as a module in the traced forward")
        head = _gap_linear_head(tr, node) if lay == "nchw" else None
        return tr, node, head, None
    except Unsupported as e:
        return None, None, None, str(e)


def _ablated_drops(model, p, name: str, tr, node, native, layout: tuple, classes, s0, K: int, per: int, progress):
    """N × K: each image's drop of the class score with each channel of the layer zeroed, ``per`` channels per
    forward — from the layer on through the traced graph, or through the whole model without one."""
    lay, prefix = layout
    drops = torch.empty(p.n, K, dtype=native.dtype, device=native.device)
    total, done = p.n * K, 0
    for i in range(p.n):
        env = tr.clean(p.x[i : i + 1]) if tr is not None else None
        for a, b in chunks(K, per):
            ks = torch.arange(a, b, device=native.device)
            Ab = _ablated(native[i : i + 1], lay, prefix, ks)
            if tr is not None:
                assert env is not None and node is not None  # both set along with tr
                ob = logits_of(tr.rerun(env, node, Ab))
            else:
                with LayerTap(model, [], edits={name: lambda m, inp, o: Ab}) as t2:
                    ob = logits_of(t2.run(p.x[i : i + 1].expand(b - a, *p.x.shape[1:])))
            drops[i, a:b] = s0[i] - p.target.score(ob, classes[i].expand(b - a))
            done += b - a
            if progress:
                progress(done, total)
    return drops


@needs_autograd
def ablation_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    layer: Any = None,
    y: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    layout: str | None = None,
) -> Explanation:
    """Ablation-CAM: L = ReLU(Σ_k w_k A_k), w_k = (y_c − y_c with channel k of ``layer`` zeroed) / y_c.

    A channels-last or token layer is read as a grid as the rest of the CAM family reads it
    (:func:`cnnlens.grid.grid_layout`; ``layout="nchw"|"nhwc"`` decides an ambiguous one); channel k is
    zeroed in the layer's own layout (on the patch tokens, not the prefix tokens).

    On a global-average-pool + linear head the drop is W_ck · mean(A_k), exactly
    (``settings["path"] = "closed form"``); elsewhere only the network after the layer
    runs on ``batch_size`` ablated copies at a time (``"after the layer"``), or, when
    the model does not trace with torch.fx, the whole model with the layer's output
    replaced (``"whole model"``, logged). ``extras["drops"]`` = y_c − y_c^{(k)},
    ``extras["weights"]`` = w, ``raw`` the map at the layer's grid.

    >>> e = ablation_cam(model, x, layer="layer3")            # doctest: +SKIP
    """
    p = prepare(model, x, target, y, "ablation_cam")
    if not p.target.is_class:
        raise ValueError("Ablation-CAM explains a class score; for a channel or neuron target use gradcam(...)")
    name = layer_name(model, p, layer)
    per = ABLATIONS_PER_BATCH if batch_size is None else check_batch_size(batch_size)
    with LayerTap(model, [name]) as tap, torch.no_grad():
        out = logits_of(tap.run(p.x))
        native = _layer_output(tap, name)
        lay, prefix = grid_layout(native, model, resolve_layer(model, name)[1], p.size, name, check_layout(layout))
        native = native.detach().clone()
        A = to_grid(native, lay, prefix, p.size)  # N×C×h×w (a view of the layer's own output)
        classes = pick_classes(p, out, p.n)
        s0 = p.target.score(out, classes)
        K = A.shape[1]
        tr, node, head, why = _traced_head(model, name, lay)
        if head is not None:
            path = "closed form"
            drops = head.weight[classes].to(A.dtype) * A.mean((2, 3))  # N × K
        else:
            path = "after the layer" if tr is not None else "whole model"
            if tr is None:
                log.info("ablation_cam: running the whole model per ablation (%s)", why)
            with tap.paused():  # the traced graph calls the tapped layer again
                drops = _ablated_drops(model, p, name, tr, node, native, (lay, prefix), classes, s0, K, per, progress)
    w = drops / s0.view(-1, 1)
    lin = torch.einsum("nk,nkhw->nhw", w.float(), A.float())
    raw = lin.clamp_min(0)
    return finish(
        p,
        upsample(raw, p.size),
        "ablation_cam",
        classes,
        layer=name,
        raw=raw,
        settings={"layer": name, "path": path, "grid": tuple(raw.shape[-2:])},
        extras={"drops": drops, "weights": w, "score": s0, "pre_relu": lin},
    )


def _masked_scores(p, i: int, A, classes, tap, tuner, run_layout, scores, report) -> torch.Tensor:
    """Image i's class score with the image masked by each channel's upsampled, min-max normalised map, into
    ``scores[i]`` (constant maps share one forward of the all-zero mask); which maps were constant.
    ``report(k)`` after each batch, k = the masks of this image done."""
    up = F.interpolate(A[i : i + 1], size=p.size, mode="bilinear", align_corners=True)[0]  # K×H×W
    lo = up.flatten(1).amin(1).view(-1, 1, 1)
    hi = up.flatten(1).amax(1).view(-1, 1, 1)
    masks = (up - lo) / (hi - lo + 1e-8)
    flat = (hi == lo).flatten()  # a constant map: all-zero mask, one forward for all of them
    live = (~flat).nonzero().flatten()
    if flat.any():
        with tuner.threads():
            zero = run_layout.run(tap, torch.zeros_like(p.x[i : i + 1]))
        scores[i, flat] = p.target.score(logits_of(zero), classes[i : i + 1])[0]
    j = 0
    while j < len(live):
        arm = tuner.next(len(live) - j)
        ks = live[j : j + arm.batch]
        with tuner.timed(arm, len(ks)):
            xb = p.x[i : i + 1] * masks[ks].unsqueeze(1)
            ob = logits_of(run_layout.run(tap, xb))
            scores[i, ks] = p.target.score(ob, classes[i].expand(len(ks)))
        j += len(ks)
        if report:
            report(j + int(flat.sum()))
    return flat


@needs_autograd
def score_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    layer: Any = None,
    y: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    channels_last: bool | None = None,
    layout: str | None = None,
) -> Explanation:
    """Score-CAM: L = ReLU(Σ_k w_k A_k), w = softmax_k y_c(x ⊙ M_k), M_k = A_k upsampled and scaled to [0, 1].

    The layer runs once; the K masked copies of each image run ``batch_size`` at a
    time (channels-last; by default the batch size and thread count measured fastest
    while the work runs, :class:`cnnlens.batching.Tuner`). A channel whose map is
    constant has an all-zero mask: all such channels share one forward of a black
    image. ``extras["scores"]`` = y_c(x ⊙ M_k), ``extras["weights"]`` = w,
    ``extras["constant"]`` which maps were constant (N×K). A channels-last or token layer
    is read as a grid as the rest of the CAM family reads it (``layout=`` decides an
    ambiguous one).

    >>> e = score_cam(model, x, layer="layer4")               # doctest: +SKIP
    """
    given = batch_size
    batch_size = check_batch_size(batch_size, x)
    p = prepare(model, x, target, y, "score_cam")
    if not p.target.is_class:
        raise ValueError("Score-CAM explains a class score; for a channel or neuron target use gradcam(...)")
    name = layer_name(model, p, layer)
    grid_as = check_layout(layout)
    run_layout = Layout(model, p.x, channels_last)
    tuner = Tuner(workload("score_cam", model, p.x), arms(p.x, given, run_layout.channels_last))
    with LayerTap(model, [name]) as tap, torch.no_grad():
        with tuner.threads():
            out = logits_of(tap.run(p.x))
        A = _layer_output(tap, name)
        lay, prefix = grid_layout(A, model, resolve_layer(model, name)[1], p.size, name, grid_as)
        A = to_grid(A.detach(), lay, prefix, p.size).clone()  # N×C×h×w, as the rest of the CAM family reads it
        classes = pick_classes(p, out, p.n)
        s0 = p.target.score(out, classes)
        K = A.shape[1]
        scores = torch.empty(p.n, K, dtype=A.dtype, device=A.device)
        constant = torch.zeros(p.n, K, dtype=torch.bool, device=A.device)
        total = p.n * K
        with tap.paused():
            for i in range(p.n):
                report = (lambda k, i=i: progress(i * K + k, total)) if progress else None
                constant[i] = _masked_scores(p, i, A, classes, tap, tuner, run_layout, scores, report)
    w = scores.float().softmax(1)
    lin = torch.einsum("nk,nkhw->nhw", w, A.float())
    raw = lin.clamp_min(0)
    return finish(
        p,
        upsample(raw, p.size),
        "score_cam",
        classes,
        layer=name,
        raw=raw,
        settings={
            "layer": name,
            "grid": tuple(raw.shape[-2:]),
            "batch_size": batch_size if given is not None else "auto",
        },
        extras={"scores": scores, "weights": w, "score": s0, "pre_relu": lin, "constant": constant},
    )
