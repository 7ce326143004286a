"""Filters and feature maps: the weights of a conv layer, and what a layer outputs for an image.

A first-layer filter with 3 input channels is a small RGB image: it shows the
colour edge or blob the unit responds to. Deeper filters have many input
channels, each shown as its own grey tile; they are hard to read, which is why
the other views in :mod:`cnnlens.inside` exist. Each filter is contrast
normalised on its own, with 0 at mid-grey: ``tile = ½ + w / (2·max|w|)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..autograd import needs_autograd
from ..inputs import check_not_empty
from ..results import Result
from ..tap import LayerRef, LayerTap, resolve_layer

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib), in figure() and preview().


@dataclass(frozen=True)
class Filters(Result):
    """A conv layer's weights as images.

    weights: Cout×Cin×kh×kw (raw); tiles: Cout×3×kh×kw in [0, 1] (mode "rgb", 3 input
    channels) or Cout×Cin×kh×kw (mode "grey", one tile per input channel), each filter
    normalised on its own with 0 at 0.5.
    """

    layer: str
    weights: torch.Tensor
    tiles: torch.Tensor
    mode: str
    settings: dict = field(default_factory=dict)

    def figure(self, max_filters: int = 64, max_inputs: int = 16, ncols: int = 16, tile: int = 24):
        """RGB: one tile per filter; grey: one row per filter, one tile per input channel."""
        from ..figures.inside import mosaic_figure

        n = min(max_filters, self.tiles.shape[0])
        title = f"{self.layer}: {tuple(self.weights.shape)}"
        if self.mode == "rgb":
            return mosaic_figure(self.tiles[:n], min(ncols, n), tile=tile, title=title)
        m = min(max_inputs, self.tiles.shape[1])
        t = self.tiles[:n, :m].reshape(n * m, 1, *self.tiles.shape[-2:])
        return mosaic_figure(t, m, tile=tile, row_labels=[str(i) for i in range(n)], title=title)


def first_conv(model: nn.Module) -> str:
    """Name of the first Conv2d in the model's module order."""
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return n
    raise ValueError("the model has no Conv2d layer; name a layer with a 4-D weight")


def filters(model: nn.Module, layer: LayerRef | None = None) -> Filters:
    """A conv layer's filters as images (default: the first conv layer).

    tile = ½ + w / (2·max|w|), per filter; RGB tiles when the layer takes 3 channels.

    >>> f = filters(nn.Sequential(nn.Conv2d(3, 8, 5)))
    >>> f.mode, tuple(f.tiles.shape)
    ('rgb', (8, 3, 5, 5))
    """
    name, mod = resolve_layer(model, layer if layer is not None else first_conv(model))
    w = getattr(mod, "weight", None)
    if not torch.is_tensor(w) or w.dim() != 4:
        raise ValueError(f"layer {name!r} ({type(mod).__name__}) has no 4-D conv weight; pick a Conv2d layer")
    w = w.detach().float().cpu().clone()
    m = w.abs().flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1, 1)
    tiles = 0.5 + w / (2 * m)
    mode = "rgb" if w.shape[1] == 3 else "grey"
    return Filters(name, w, tiles, mode, {"normalisation": "per filter, 0 at grey"})


@dataclass(frozen=True)
class FeatureMaps(Result):
    """A layer's activations for a batch: activations N×C×H×W (CPU, detached)."""

    layer: str
    activations: torch.Tensor
    settings: dict = field(default_factory=dict)

    def figure(
        self,
        sample: int = 0,
        channels: Sequence[int] | None = None,
        max_channels: int = 32,
        ncols: int = 8,
        tile: int = 48,
        image: torch.Tensor | None = None,
    ):
        """Each channel's map for one image, min–max scaled per map (an inactive map is black), next to the input."""
        from ..figures.inside import mosaic
        from ..viz import show_image, subplots

        a = self.activations[sample]
        chans = list(channels) if channels is not None else list(range(min(max_channels, a.shape[0])))
        m = a[chans]
        lo = m.flatten(1).min(1).values.view(-1, 1, 1)
        hi = m.flatten(1).max(1).values.view(-1, 1, 1)
        m = torch.where(hi > lo, (m - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(m))
        ncols = min(ncols, len(chans))
        grid = mosaic(m[:, None], ncols, tile=tile, pad_value=0.0)
        ratio = grid.shape[2] / grid.shape[1]
        if image is not None:
            fig, (ax0, ax) = subplots(1, 2, figsize=(2.0 + 2.4 * ratio, 2.6), gridspec_kw={"width_ratios": [1, ratio]})
            show_image(ax0, image, "input")
        else:
            fig, ax = subplots(figsize=(2.4 * ratio, 2.6))
        ax.imshow(grid[0].numpy(), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{self.layer}: channels {chans[0]}…{chans[-1]}", fontsize=9)
        fig.tight_layout()
        return fig


@needs_autograd
def feature_maps(model: nn.Module, x: torch.Tensor, layer: LayerRef) -> FeatureMaps:
    """A layer's output for images ``x`` (N×C×H×W in [0, 1]); the forward stops at the layer.

    Example::

        fm = feature_maps(model, x, "features.1")
        fm.activations.shape    # N×C×H×W
        fm.figure(sample=0).savefig("maps.png")
    """
    if not torch.is_tensor(x):
        raise TypeError("x must be a tensor N×C×H×W in [0, 1] (load images with cnnlens.load_images)")
    if x.dim() == 3:
        x = x[None]
    check_not_empty(x)
    name, _ = resolve_layer(model, layer)
    with LayerTap(model, [name], stop_after=name, detach=True) as tap, torch.no_grad():
        tap.run(x)
        a = tap[name]
    if a.dim() != 4:
        raise ValueError(f"layer {name!r} gives {tuple(a.shape)}, not N×C×H×W maps; pick a convolutional layer")
    return FeatureMaps(name, a.float().cpu(), {"input_shape": list(x.shape)})
