"""Figure helpers shared by every section: tensors to images, heat-map overlays, grids.

Torch in; numpy and matplotlib only here, at the edge.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def to_numpy_image(x: torch.Tensor) -> np.ndarray:
    """C×H×W (or H×W) tensor in [0, 1] → H×W×3 (or H×W) float numpy array, clipped to [0, 1]."""
    x = x.detach().float().cpu()
    if x.dim() == 3:
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    return x.clamp(0, 1).numpy()


def to_pil(x: torch.Tensor):
    """C×H×W tensor in [0, 1] → PIL image."""
    from PIL import Image

    a = (to_numpy_image(x) * 255).round().astype(np.uint8)
    return Image.fromarray(a)


def show_image(ax, x: torch.Tensor, title: str | None = None) -> None:
    a = to_numpy_image(x)
    ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


#: the one colour map of non-negative maps (saliency, Grad-CAM, probabilities, ...)
SEQUENTIAL = "inferno"
#: the one colour map of signed maps (CAM, occlusion, gradient × input, IG), centred on 0
DIVERGING = "RdBu_r"


def overlay(ax, image: torch.Tensor, heat: torch.Tensor, *, title: str | None = None, cmap: str | None = None,
            alpha: float = 0.7, vmin: float | None = None, vmax: float | None = None, colorbar: bool = True,
            diverging: bool = False, label: str | None = None):
    """Draw ``heat`` (H×W) over ``image`` (C×H×W) with a colour bar (``label``: its units); returns the mappable.

    Non-negative maps use :data:`SEQUENTIAL`; ``diverging=True`` uses :data:`DIVERGING` centred at zero.
    The opacity grows with |value| (up to ``alpha``), so the photo stays visible where the map is weak.
    """
    plt = _mpl()
    a = to_numpy_image(image)
    h = heat.detach().float().cpu().numpy()
    ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1)
    if diverging:
        m = max(abs(vmin or 0.0), abs(vmax or 0.0)) or float(np.abs(h).max()) or 1.0
        vmin, vmax, cmap = -m, m, cmap or DIVERGING
        strength = np.clip(np.abs(h) / m, 0, 1)
    else:
        cmap = cmap or SEQUENTIAL
        lo = float(h.min()) if vmin is None else vmin
        hi = float(h.max()) if vmax is None else vmax
        strength = np.clip((h - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(h)
    im = ax.imshow(h, cmap=cmap, alpha=(0.2 + (alpha - 0.2) * strength).astype(np.float32), vmin=vmin, vmax=vmax)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        cb = plt.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.solids.set_alpha(1)
        if label:
            cb.set_label(label, fontsize=7)
        cb.ax.tick_params(labelsize=7)
    return im


def image_grid(images: Sequence[torch.Tensor], titles: Sequence[str] | None = None, ncols: int = 6,
               size: float = 1.8, suptitle: str | None = None):
    """A grid figure of C×H×W images in [0, 1]."""
    plt = _mpl()
    n = max(1, len(images))
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            show_image(ax, images[i], titles[i] if titles else None)
        else:
            ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def rescale01(x: torch.Tensor) -> torch.Tensor:
    """Min–max scale to [0, 1] over the whole tensor (a constant tensor gives 0.5)."""
    lo, hi = x.min(), x.max()
    if hi - lo <= 0:
        return torch.full_like(x, 0.5)
    return (x - lo) / (hi - lo)
