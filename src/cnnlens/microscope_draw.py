"""Drawing for the microscope: a unit's pictures and plots as PIL images, matplotlib figures or PNG bytes.

The static site (:mod:`cnnlens.microscope_site`) and the explorer draw through these, so a
unit looks the same everywhere. Torch in; PIL and matplotlib only here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib
import torch
import torch.nn.functional as F
from PIL import ImageDraw

from .figures.inside import mosaic
from .viz import show_image, subplots, to_pil


def png(image) -> bytes:
    """PNG bytes of a matplotlib figure or a PIL image."""
    buf = io.BytesIO()
    if hasattr(image, "savefig"):
        image.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    else:
        image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _upscale(x: torch.Tensor, side: int) -> torch.Tensor:
    """C×h×w → C×H×W with the longer side ``side`` (nearest for enlarging: pixels stay visible)."""
    h, w = x.shape[-2:]
    s = side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    mode = "nearest" if s >= 1 else "area"
    return F.interpolate(x[None].float(), size=size, mode=mode)[0]


def image_tile(x: torch.Tensor, side: int = 128):
    """One C×H×W image in [0, 1] as a PIL image whose longer side is ``side`` px."""
    return to_pil(_upscale(x.detach().float().cpu().clamp(0, 1), side))


def signed_tile(r: torch.Tensor, side: int = 128):
    """A signed C×H×W map (deconvnet, guided backprop) shown as 0.5 + r / (2·max|r|): grey = 0."""
    r = r.detach().float().cpu()
    m = r.abs().max().clamp_min(1e-12)
    return image_tile((0.5 + r / (2 * m)).clamp(0, 1), side)


def patch_grid(crops: torch.Tensor, ncols: int = 3, tile: int = 48, pad: int = 2):
    """k×C×h×w patches as one PIL mosaic, ``ncols`` per row, each ``tile`` px on its longer side."""
    return to_pil(mosaic(crops.detach().float().cpu(), ncols, tile=tile, pad=pad, pad_value=1.0))


def heat_tiles(
    images: torch.Tensor,
    maps: torch.Tensor,
    side: int = 96,
    alpha: float = 0.55,
    cmap: str = "inferno",
    vmax: float | None = None,
) -> torch.Tensor:
    """Images (N×C×H×W) with their activation maps (N×h×w, bilinear to the image, one colour scale from 0
    to ``vmax`` = the largest value) blended over them: N×3×S×S tiles, ``side`` px on the longer side."""
    lut = torch.tensor(matplotlib.colormaps[cmap](torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)
    vmax = float(maps.max()) if vmax is None else vmax
    vmax = vmax if vmax > 0 else 1.0
    out = []
    for im, m in zip(images, maps, strict=True):
        base = _upscale(im.float().clamp(0, 1), side)
        base = base.expand(3, *base.shape[-2:]) if base.shape[0] == 1 else base
        h = F.interpolate(m[None, None].float(), size=base.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        idx = (h.clamp(0, vmax) / vmax * 255).round().long()
        col = lut[idx].permute(2, 0, 1)
        out.append((1 - alpha) * base + alpha * col)
    return torch.stack(out)


def maps_image(images: torch.Tensor, maps: torch.Tensor, ncols: int = 9, side: int = 96):
    """Whole images with a unit's activation map over each (one colour scale), as one PIL mosaic."""
    return to_pil(mosaic(heat_tiles(images, maps, side), ncols, pad=3, pad_value=1.0))


def maps_figure(
    images: torch.Tensor, maps: torch.Tensor, titles: Sequence[str] | None = None, ncols: int = 3, size: float = 1.9
):
    """A matplotlib figure of :func:`heat_tiles` with a title over each image."""
    tiles = heat_tiles(images, maps, 128)
    n = len(tiles)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        show_image(axes.flat[i], tiles[i], titles[i] if titles else None)
    fig.tight_layout()
    return fig


def histogram_figure(stats, channel: int, size=(3.6, 2.2)):
    """The channel's activation histogram over the dataset (log counts), with mean and sparsity."""
    fig, ax = subplots(figsize=size)
    e = stats.edges
    centers = ((e[1:] + e[:-1]) / 2).numpy()
    h = stats.histogram[channel].double().numpy()
    ax.bar(centers, h, width=float(e[1] - e[0]), color="tab:red" if bool(stats.dead[channel]) else "tab:blue")
    if h.max() > 0:
        ax.set_yscale("log")
    ax.axvline(float(stats.mean[channel]), color="k", lw=0.8, ls="--")
    w = float(e[1] - e[0])  # the edges are the layer's: show this channel's range
    ax.set_xlim(float(e[0]) - w, min(float(e[-1]), float(stats.max[channel]) + 2 * w) + w)
    ax.set_xlabel("activation", fontsize=8)
    ax.set_ylabel("count (log)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(
        f"mean {float(stats.mean[channel]):.3g} · sparsity {float(stats.sparsity[channel]):.2f}"
        f" · max {float(stats.max[channel]):.3g}",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def _class_ticks(ax, labels: Sequence[str], width: float, fontsize: float = 7) -> None:
    """Class names under the bars without overlap: level when each fits its bar's slot, else slanted at 45°
    (anchored at the tick), or upright when even that is too tight; names past 22 characters are cut with "…"."""
    labels = [t if len(t) <= 22 else t[:21] + "…" for t in labels]
    ax.set_xticks(range(len(labels)))
    slot = 0.75 * width * 72 / max(1, len(labels))  # points per bar (the axes take about ¾ of the figure)
    longest = max((len(t) for t in labels), default=0) * 0.62 * fontsize  # an estimate of the widest label
    if longest <= 0.9 * slot:
        ax.set_xticklabels(labels, fontsize=fontsize)
    elif slot * 0.7 >= 1.6 * fontsize:
        ax.set_xticklabels(labels, fontsize=fontsize, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticklabels(labels, fontsize=fontsize, rotation=90)


def class_figure(
    stats, channel: int, class_names: Sequence[str] | None = None, influence=None, top: int = 12, size=(3.8, 2.4)
):
    """Mean activation per class (the most driven ``top`` classes) with the selectivity index; with
    ``influence`` (:class:`cnnlens.inside.ClassInfluence`) a second panel: the classes the unit drives."""
    cm = stats.class_mean[:, channel]
    seen = stats.class_count > 0
    order = [
        int(i)
        for i in torch.sort(
            torch.where(seen, cm, torch.full_like(cm, -float("inf"))), descending=True, stable=True
        ).indices[:top]
        if bool(seen[i])
    ]
    name = lambda k: class_names[k] if class_names and k < len(class_names) else str(k)
    panels = 2 if influence is not None else 1
    fig, axes = subplots(1, panels, figsize=(size[0] * panels, size[1]), squeeze=False)
    ax = axes[0, 0]
    ax.bar(range(len(order)), [float(cm[i]) for i in order], color="tab:green")
    _class_ticks(ax, [name(i) for i in order], size[0])
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"mean activation per class · selectivity {float(stats.selectivity[channel]):.2f}", fontsize=8)
    if influence is not None:
        ax = axes[0, 1]
        rows = influence.top(channel, top)
        vals = [v for _, v in rows]
        ax.bar(range(len(rows)), vals, color=["tab:purple" if v >= 0 else "tab:gray" for v in vals])
        _class_ticks(ax, [name(c) for c, _ in rows], size[0])
        ax.axhline(0, color="k", lw=0.5)
        ax.tick_params(axis="y", labelsize=7)
        what = "drop of the class score when zeroed" if influence.ablation is not None else "a·∂y/∂a"
        ax.set_title(f"classes it drives ({what})", fontsize=8)
    fig.tight_layout()
    return fig


def _signed01(t: torch.Tensor) -> torch.Tensor:
    """Per image 0.5 + r / (2·max|r|): grey = 0."""
    m = t.abs().flatten(1).max(1).values.clamp_min(1e-12).view(-1, *[1] * (t.dim() - 1))
    return (0.5 + t / (2 * m)).clamp(0, 1)


def projections_image(crops: torch.Tensor, deconv: torch.Tensor | None, guided: torch.Tensor | None, tile: int = 72):
    """Rows (as one PIL mosaic): the top patches, their deconvnet projections, their guided backprop
    (signed, grey = 0), each cropped to the unit's receptive field."""
    rows = [crops.float()]
    for t in (deconv, guided):
        if t is not None:
            rows.append(_signed01(t.float()))
    n = len(crops)
    return to_pil(mosaic(torch.cat(rows), n, tile=tile, pad=3, pad_value=1.0))


def projections_figure(
    crops: torch.Tensor, deconv: torch.Tensor | None, guided: torch.Tensor | None, size: float = 1.0
):
    """A matplotlib figure of :func:`projections_image` with the rows labelled."""
    rows = [("patch", crops.float())]
    if deconv is not None:
        rows.append(("deconvnet", _signed01(deconv.float())))
    if guided is not None:
        rows.append(("guided bp", _signed01(guided.float())))
    n = len(crops)
    fig, axes = subplots(len(rows), n, figsize=(size * n + 0.6, size * len(rows) + 0.2), squeeze=False)
    for r, (label, t) in enumerate(rows):
        for i in range(n):
            show_image(axes[r, i], t[i])
        axes[r, 0].text(-0.1, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def grid_overlay(image: torch.Tensor, grid: tuple[int, int], side: int = 256):
    """An image upscaled to ``side`` px with the layer's grid drawn over it (for clicking a position)."""
    im = image_tile(image, side).convert("RGB")
    d = ImageDraw.Draw(im)
    W, H = im.size
    gh, gw = grid
    for i in range(1, gh):
        y = round(i * H / gh)
        d.line([(0, y), (W, y)], fill=(90, 140, 220), width=1)
    for j in range(1, gw):
        x = round(j * W / gw)
        d.line([(x, 0), (x, H)], fill=(90, 140, 220), width=1)
    return im
