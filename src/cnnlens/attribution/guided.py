"""Guided backpropagation and Guided Grad-CAM (Springenberg et al. 2015; Selvaraju et al. 2017).

Guided backprop changes the backward rule of every ReLU, for one call only: the
gradient passes where the forward input was positive (the ordinary ReLU rule)
*and* where the incoming gradient is positive,

    R_in = 1[f_in > 0] · 1[R_out > 0] · R_out.

It is done with a :class:`~cnnlens.tap.LayerTap` edit on each ``nn.ReLU`` (and
``nn.ReLU6``): the ReLU's output is passed through an identity function whose
backward clamps the gradient at 0; the ReLU's own backward supplies the first
factor. In-place ReLUs work too (the edit acts on the returned tensor). A model
that applies ReLU functionally has no module to edit and gets a clear error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..results import Explanation
from ._common import Layout, check_reduce, finish, prepare, reduce_channels, upsample
from .cam import gradcam_tap, gradcam_weights, layer_gradient, layer_name, warn_if_flat
from .gradients import batched_input_gradient
from .._autograd import needs_autograd

RECTIFIERS = (nn.ReLU, nn.ReLU6)


class _GuidedGrad(torch.autograd.Function):
    """Identity forward; backward passes only the positive part of the gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g.clamp_min(0)


def _guided(module, inputs, output):
    return _GuidedGrad.apply(output)


def guided_edits(model: nn.Module) -> dict:
    """``{relu_name: edit}`` for every nn.ReLU/nn.ReLU6 module; a clear error when there is none."""
    names = [n for n, m in model.named_modules() if isinstance(m, RECTIFIERS)]
    if not names:
        others = sorted({type(m).__name__ for m in model.modules()
                         if type(m).__module__ == "torch.nn.modules.activation"})
        uses = f"its activations are {', '.join(others)}" if others else "it applies its activations functionally"
        raise ValueError(
            f"guided backprop overrides the backward of nn.ReLU modules, but this model has none ({uses}); "
            "use saliency or gradcam, or build the model with nn.ReLU modules"
        )
    return {n: _guided for n in names}


def _guided_gradient(model, p, batch_size, channels_last):
    g, s, classes = batched_input_gradient(model, p, batch_size, channels_last, edits=guided_edits(model))
    return g.float(), s, classes


@needs_autograd
def guided_backprop(model: nn.Module, x: torch.Tensor, target: Any = "predicted", *, reduce: str = "abs_max",
                    y: torch.Tensor | None = None, batch_size: int | None = None,
                    channels_last: bool | None = None) -> Explanation:
    """Guided backpropagation: ∂S/∂x with every ReLU's backward replaced by 1[f_in>0]·1[R>0]·R.

    ``reduce`` over channels as in :func:`~cnnlens.attribution.saliency` ("none" keeps the
    N×C×H×W image in ``raw``).

    >>> guided_backprop(model, x).maps              # doctest: +SKIP
    """
    check_reduce(reduce)
    p = prepare(model, x, target, y, "guided_backprop")
    g, s, classes = _guided_gradient(model, p, batch_size, channels_last)
    return finish(p, reduce_channels(g, reduce), "guided_backprop", classes, settings={"reduce": reduce},
                  raw=g if reduce == "none" else None, extras={"score": s})


@needs_autograd
def guided_gradcam(model: nn.Module, x: torch.Tensor, target: Any = "predicted", *, layer: Any = None,
                   reduce: str = "abs_max", y: torch.Tensor | None = None, batch_size: int | None = None,
                   channels_last: bool | None = None) -> Explanation:
    """Guided Grad-CAM: guided backprop ⊙ the Grad-CAM map upsampled to the input, reduced over channels.

    Two passes: the guided gradient, then Grad-CAM (ordinary backward) for the same classes.
    ``extras["gradcam"]`` holds the upsampled Grad-CAM map.

    >>> guided_gradcam(model, x, layer="layer4").maps      # doctest: +SKIP
    """
    check_reduce(reduce)
    p = prepare(model, x, target, y, "guided_gradcam")
    g, s, classes = _guided_gradient(model, p, batch_size, channels_last)
    name = layer_name(model, p, layer)
    tap, leaf = gradcam_tap(model, p, name)
    with tap:
        A, G, _, _ = layer_gradient(tap, leaf, p, p.x, classes, Layout(model, p.x, channels_last))
    warn_if_flat(model, p, name, A)
    A, G = A.float(), G.float()
    cam = upsample(torch.einsum("nk,nkhw->nhw", gradcam_weights(A, G), A).clamp_min(0), p.size)
    prod = g * cam.unsqueeze(1)
    return finish(p, reduce_channels(prod, reduce), "guided_gradcam", classes, layer=name,
                  settings={"layer": name, "reduce": reduce}, raw=prod if reduce == "none" else None,
                  extras={"gradcam": cam, "score": s})
