"""Guided backpropagation and Guided Grad-CAM (Springenberg et al. 2015; Selvaraju et al. 2017).

Guided backprop changes the backward rule of every ReLU, for one call only: the
gradient passes where the forward input was positive (the ordinary ReLU rule)
*and* where the incoming gradient is positive,

    R_in = 1[f_in > 0] · 1[R_out > 0] · R_out      (ReLU6: 1[0 < f_in < 6] · 1[R_out > 0] · R_out).

Every ReLU *application* is guided, not only ``nn.ReLU`` modules: the forward runs
inside :class:`cnnlens.rectifiers.guided_relus`, a torch-function mode that sees
``nn.ReLU`` / ``nn.ReLU6`` (in place or not), ``F.relu``, ``torch.relu``, ``relu_``,
``F.relu6`` and ``F.hardtanh(x, 0, hi)`` alike — torchvision's DenseNet ends its
features with ``F.relu(x, inplace=True)``, hand-written residual blocks call
``F.relu(out)``. No module is touched. ``settings["guided_relus"]`` is the number of
ReLU applications guided per forward pass. Activations guided backprop has no rule
for (GELU, SiLU, Hardswish, LeakyReLU, ...) keep their ordinary gradient: a warning
says so and ``settings["unguided_activations"]`` counts them. A forward that applies
no ReLU at all is refused (the result would be the plain gradient).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from ..autograd import needs_autograd
from ..batching import check_batch_size
from ..rectifiers import guided_relus, skipped_note
from ..results import Explanation
from .cam import flat_note, gradcam_tap, gradcam_weights, layer_gradient, layer_name
from .common import Layout, check_reduce, finish, prepare, reduce_channels, upsample
from .gradients import batched_input_gradient

log = logging.getLogger("cnnlens.attribution")


def guided_summary(mode: guided_relus, forwards: int = 1, what: str = "guided backprop") -> dict:
    """Settings from a :class:`guided_relus` mode after ``forwards`` forward passes: ``guided_relus`` (ReLU
    applications guided per forward) and, when some activation kept its ordinary gradient,
    ``unguided_activations`` (also logged as a warning). A ValueError when no ReLU was applied."""
    forwards = max(1, int(forwards))
    skipped = {k: v // forwards for k, v in mode.skipped.items()}
    if mode.applied == 0:
        uses = f"its activations are {skipped_note(mode.skipped)}" if skipped else "it applies no activation"
        raise ValueError(
            f"{what} changes the backward of ReLUs, but this model's forward applies none ({uses}); "
            "use saliency or gradcam"
        )
    settings: dict[str, Any] = {"guided_relus": mode.applied // forwards}
    if skipped:
        note = skipped_note(skipped)
        settings["unguided_activations"] = skipped
        log.warning(
            "%s: %d ReLU applications guided per forward; %s keep their ordinary gradient "
            "(guided backprop has no rule for them)",
            what,
            settings["guided_relus"],
            note,
        )
    return settings


def _guided_gradient(model, p, batch_size, channels_last):
    bs = check_batch_size(batch_size, p.x)
    with guided_relus() as mode:
        g, s, classes = batched_input_gradient(model, p, bs, channels_last)
    settings = guided_summary(mode, math.ceil(p.n / bs))
    return g.float(), s, classes, settings


@needs_autograd
def guided_backprop(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    reduce: str = "abs_max",
    y: torch.Tensor | None = None,
    batch_size: int | None = None,
    channels_last: bool | None = None,
) -> Explanation:
    """Guided backpropagation: ∂S/∂x with every ReLU application's backward replaced by 1[f_in>0]·1[R>0]·R.

    Module and functional ReLUs alike, in place or not (see the module docs);
    ``settings["guided_relus"]`` counts the ReLU applications guided per forward.

    ``reduce`` over channels as in :func:`~cnnlens.attribution.saliency` ("none" keeps the
    N×C×H×W image in ``raw``).

    >>> guided_backprop(model, x).maps              # doctest: +SKIP
    """
    check_reduce(reduce)
    p = prepare(model, x, target, y, "guided_backprop")
    g, s, classes, guided = _guided_gradient(model, p, batch_size, channels_last)
    return finish(
        p,
        reduce_channels(g, reduce),
        "guided_backprop",
        classes,
        settings={"reduce": reduce, **guided},
        raw=g if reduce == "none" else None,
        extras={"score": s},
    )


@needs_autograd
def guided_gradcam(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = "predicted",
    *,
    layer: Any = None,
    reduce: str = "abs_max",
    y: torch.Tensor | None = None,
    batch_size: int | None = None,
    channels_last: bool | None = None,
    layout: str | None = None,
) -> Explanation:
    """Guided Grad-CAM: guided backprop ⊙ the Grad-CAM map upsampled to the input, reduced over channels.

    Two passes: the guided gradient, then Grad-CAM (ordinary backward) for the same classes.
    ``extras["gradcam"]`` holds the upsampled Grad-CAM map; ``layout`` as in :func:`~cnnlens.attribution.gradcam`.

    >>> guided_gradcam(model, x, layer="layer4").maps      # doctest: +SKIP
    """
    check_reduce(reduce)
    p = prepare(model, x, target, y, "guided_gradcam")
    g, s, classes, guided = _guided_gradient(model, p, batch_size, channels_last)
    name = layer_name(model, p, layer)
    tap, leaf = gradcam_tap(model, p, name, layout)
    with tap:
        A, G, _, _ = layer_gradient(tap, leaf, p, p.x, classes, Layout(model, p.x, channels_last))
    note = flat_note(model, p, name, A)
    A, G = A.float(), G.float()
    cam = upsample(torch.einsum("nk,nkhw->nhw", gradcam_weights(A, G), A).clamp_min(0), p.size)
    prod = g * cam.unsqueeze(1)
    return finish(
        p,
        reduce_channels(prod, reduce),
        "guided_gradcam",
        classes,
        layer=name,
        settings={"layer": name, "reduce": reduce, **guided},
        raw=prod if reduce == "none" else None,
        extras={"gradcam": cam, "score": s},
        note=note,
    )
