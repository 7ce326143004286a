"""Adebayo et al.'s sanity check, reproduced: cascading model randomisation for several methods at once.

Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim (NeurIPS 2018, "Sanity checks
for saliency maps") re-initialised a trained network's layers from the top
(logits) down, one more block at a time, and compared each method's map with the
trained network's (Spearman rank correlation). Gradients and Grad-CAM changed
as soon as the top layers were random — they depend on the model; guided
backprop and guided Grad-CAM barely changed — they mostly show the image (edge
structure passed through the ReLU masks), whatever the weights say.
:func:`sanity_check` runs :func:`cnnlens.attribution.randomization_check` for
each method on the same cascade and collects the correlations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..attribution import randomization_check
from ..attribution.common import logits_of, prepare
from ..autograd import needs_autograd
from ..results import Result
from ..tap import LayerTap, resolve_layer

#: the methods of the published comparison
SANITY_METHODS = ("saliency", "gradcam", "guided_backprop", "guided_gradcam")
#: the cascade on efficientnet-lite0 (top first): head, then the blocks of the backbone
EFFNET_CASCADE = (
    "classifier",
    "conv_head",
    "blocks.6",
    "blocks.5",
    "blocks.4",
    "blocks.3",
    "blocks.2",
    "blocks.1",
    "conv_stem",
)


@dataclasses.dataclass(frozen=True)
class SanityCheck(Result):
    """Cascading randomisation for several methods.

    layers: the lowest layer re-initialised at each step (everything above it is too), top first;
    results[method]: its :class:`cnnlens.attribution.Randomization` (``correlations`` steps × N,
    and the maps when kept); classes: the explained class per image (the trained model's).
    """

    methods: list
    layers: list
    results: dict
    classes: torch.Tensor
    settings: dict = dataclasses.field(default_factory=dict)

    def correlations(self, method: str, undefined: float | None = 0.0) -> torch.Tensor:
        """steps × N Spearman ρ of ``method``; a constant map (ρ undefined, e.g. Grad-CAM all zero once
        the head is random) counts as ``undefined`` (0: no rank agreement left; None keeps NaN)."""
        c = self.results[method].correlations.double()
        return c if undefined is None else torch.nan_to_num(c, nan=undefined)

    def mean(self, method: str) -> torch.Tensor:
        """Mean ρ over the images at each step (constant maps as 0)."""
        return self.correlations(method).mean(1)

    def to_dict(self) -> dict:
        return {
            "methods": self.methods,
            "layers": self.layers,
            "settings": self.settings,
            "classes": self.classes.tolist(),
            "spearman": {m: self.correlations(m, None).tolist() for m in self.methods},
        }


@needs_autograd
def sanity_check(
    model: nn.Module,
    x: torch.Tensor,
    methods: Sequence[str] = SANITY_METHODS,
    layers: Sequence[str] | None = None,
    target: Any = "predicted",
    *,
    seed: int = 0,
    keep_maps: bool = True,
    method_settings: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SanityCheck:
    """Cascading randomisation (top layer first) of ``model`` for each of ``methods``, all on the same
    cascade: ``layers`` names the cut points (default: :data:`EFFNET_CASCADE` when the model has those
    modules, else five even stages); each method's map on the partly random copy is rank-correlated
    with its map on the trained model, for the same class.

    >>> model = load_model("efficientnet-lite0")  # doctest: +SKIP
    >>> s = sanity_check(model, x, layers=["classifier", "conv_head", "blocks.6"])  # doctest: +SKIP
    >>> s.mean("guided_backprop"), s.mean("saliency")  # doctest: +SKIP
    """
    if layers is None:
        try:
            for ln in EFFNET_CASCADE:
                resolve_layer(model, ln)
            layers = list(EFFNET_CASCADE)
        except ValueError:
            layers = None
    if target == "predicted" or isinstance(target, str):
        p = prepare(model, x, target, None, "sanity_check")
        with LayerTap(model) as tap, torch.no_grad():
            classes = p.target.classes(logits_of(tap.run(p.x)), p.labels)
    else:
        classes = torch.as_tensor(target)
    results, cut_names = {}, None
    for i, m in enumerate(methods):
        st = (method_settings or {}).get(m, {})
        r = randomization_check(model, x, m, classes, layers=layers, seed=seed, keep_maps=keep_maps, **st)
        results[m] = r
        cut_names = r.layers
        if progress:
            progress(i + 1, len(methods))
    return SanityCheck(
        methods=list(methods),
        layers=list(cut_names or []),
        results=results,
        classes=classes.cpu(),
        settings={
            "seed": seed,
            "cascade": "top-down, cumulative",
            "cut_points": list(layers) if layers else "5 stages",
            "similarity": "Spearman rank correlation",
        },
    )
