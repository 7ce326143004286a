"""Figure helpers shared by every section: tensors to images, heat-map overlays, grids.

Torch in; numpy and matplotlib only here, at the edge.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib
import matplotlib.figure as _mpl_figure
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

#: keyword arguments of ``pyplot.subplots`` that belong to the figure, not to ``Figure.subplots``
_FIGURE_KW = ("figsize", "dpi", "facecolor", "edgecolor", "layout")


class Figure(_mpl_figure.Figure):
    """A ``matplotlib.figure.Figure`` that shows itself in Jupyter (``_repr_png_``) without pyplot.

    IPython draws a plain Figure only once the inline backend has registered its formatter, which happens
    when pyplot is imported; this one displays either way, once.
    """

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def subplots(nrows: int = 1, ncols: int = 1, **kwargs):
    """A new figure and its axes, as ``pyplot.subplots`` gives, drawn on a :class:`Figure` (no pyplot state).

    Outside pyplot: the user's backend is never touched, nothing is added to pyplot's list of open figures
    (no "more than 20 figures" warning, no leak), and in Jupyter a returned figure displays once.
    """
    fig = Figure(**{k: kwargs.pop(k) for k in _FIGURE_KW if k in kwargs})
    return fig, fig.subplots(nrows, ncols, **kwargs)


def to_numpy_image(x: torch.Tensor) -> np.ndarray:
    """C×H×W (or H×W) tensor in [0, 1] → H×W×3 (or H×W) float numpy array, clipped to [0, 1]."""
    x = x.detach().float().cpu()
    if x.dim() == 3:
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    return x.clamp(0, 1).numpy()


def to_pil(x: torch.Tensor):
    """C×H×W tensor in [0, 1] → PIL image."""
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


def overlay(
    ax,
    image: torch.Tensor,
    heat: torch.Tensor,
    *,
    title: str | None = None,
    cmap: str | None = None,
    alpha: float = 0.7,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    diverging: bool = False,
    label: str | None = None,
):
    """Draw ``heat`` (H×W) over ``image`` (C×H×W) with a colour bar (``label``: its units); returns the mappable.

    Non-negative maps use :data:`SEQUENTIAL`; ``diverging=True`` uses :data:`DIVERGING` centred at zero.
    The opacity grows with |value| (up to ``alpha``), so the photo stays visible where the map is weak.
    """
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
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.solids.set_alpha(1)
        if label:
            cb.set_label(label, fontsize=7)
        cb.ax.tick_params(labelsize=7)
    return im


def image_grid(
    images: Sequence[torch.Tensor],
    titles: Sequence[str] | None = None,
    ncols: int = 6,
    size: float = 1.8,
    suptitle: str | None = None,
):
    """A grid figure of C×H×W images in [0, 1]."""
    n = max(1, len(images))
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)), squeeze=False)
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


def colormap_rgb(values: torch.Tensor, cmap: str = SEQUENTIAL, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """H×W values → H×W×3 float RGB in [0, 1] through a matplotlib colour map (no figure is made)."""
    v = values.detach().float().cpu().numpy()
    span = vmax - vmin
    u = np.clip((v - vmin) / span, 0.0, 1.0) if span > 0 else np.full_like(v, 0.5)
    return matplotlib.colormaps[cmap](u)[..., :3]


def heat_strip(maps: torch.Tensor, *, signed: bool = False, size: int = 96, gap: int = 4):
    """N×H×W maps side by side as one PIL image (each on its own scale, ``size`` px high; signed maps on
    :data:`DIVERGING` centred at 0, others on :data:`SEQUENTIAL`): a result's picture when no image is kept."""
    tiles = []
    for m in maps.detach().float().cpu():
        if signed:
            r = float(m.abs().max()) or 1.0
            rgb = colormap_rgb(m, DIVERGING, -r, r)
        else:
            rgb = colormap_rgb(m, SEQUENTIAL, float(m.min()), float(m.max()))
        tile = Image.fromarray((rgb * 255).round().astype(np.uint8))
        tiles.append(tile.resize((max(1, round(size * m.shape[1] / m.shape[0])), size), Image.Resampling.NEAREST))
    strip = Image.new("RGB", (sum(t.width for t in tiles) + gap * max(0, len(tiles) - 1), size), "white")
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + gap
    return strip


def overlay_array(
    image: torch.Tensor,
    heat: torch.Tensor,
    *,
    cmap: str = SEQUENTIAL,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    diverging: bool = False,
) -> np.ndarray:
    """``heat`` (H×W) over ``image`` (C×H×W in [0, 1]) as an H×W×3 array, the way :func:`overlay` draws it:
    ``(1 − α)·image + α·cmap((heat − vmin)/(vmax − vmin))`` with the one colour map of each kind of map
    (:data:`SEQUENTIAL`; ``diverging`` centres :data:`DIVERGING` at 0), as everywhere in cnnlens.

    For pages that need many small images fast (no matplotlib figure: about a millisecond each).

    >>> a = overlay_array(torch.zeros(1, 2, 2), torch.ones(2, 2), vmin=0, vmax=1, alpha=0.5)
    >>> a[0, 0].round(3).tolist()     # half of inferno's top colour (pale yellow) over black
    [0.494, 0.499, 0.322]
    """
    a = to_numpy_image(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if diverging:
        m = float(heat.abs().max()) or 1.0
        vmin, vmax, cmap = -m, m, DIVERGING
    if vmin is None:
        vmin = float(heat.min())
    if vmax is None:
        vmax = float(heat.max())
    return (1 - alpha) * a + alpha * colormap_rgb(heat, cmap, vmin, vmax)


def panels_image(
    panels: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    size: int = 150,
    gap: int = 12,
    bars: Sequence[tuple[str, float, float] | None] | None = None,
):
    """H×W×3 arrays side by side, each scaled to ``size`` px, with a title above and, where given,
    a colour bar ``(cmap, vmin, vmax)`` with its end values beside it. Returns a PIL image."""
    font = ImageFont.load_default(size=12)
    bar_w, label_w, top = 10, 44, 20
    bars = list(bars or [None] * len(panels))
    widths = [size + (gap // 2 + bar_w + label_w if b else 0) for b in bars]
    W = sum(widths) + gap * (len(panels) + 1)
    H = size + top + gap
    out = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(out)
    x = gap
    for arr, title, bar, w in zip(panels, titles, bars, widths, strict=True):
        im = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))
        out.paste(im.resize((size, size), Image.Resampling.NEAREST), (x, top))
        draw.text((x + size // 2, top - 4), title, fill="black", font=font, anchor="ms")
        if bar:
            cmap, lo, hi = bar
            ramp = colormap_rgb(torch.linspace(1, 0, size).view(-1, 1).expand(size, bar_w), cmap, 0.0, 1.0)
            bx = x + size + gap // 2
            out.paste(Image.fromarray((ramp * 255).round().astype(np.uint8)), (bx, top))
            draw.text((bx + bar_w + 3, top), f"{hi:.2g}", fill="black", font=font, anchor="lt")
            draw.text((bx + bar_w + 3, top + size), f"{lo:.2g}", fill="black", font=font, anchor="lb")
        x += w + gap
    return out
