"""Inside the network drawn: mosaics (many small tiles in one image, one matplotlib axes, so large grids stay
fast), class means of neuron statistics, deconvnet projections."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..viz import show_image, subplots


def mosaic(
    tiles: torch.Tensor, ncols: int, tile: int | None = None, pad: int = 2, pad_value: float = 1.0, top: int = 0
) -> torch.Tensor:
    """N×C×h×w tiles in [0, 1] → one C×H×W image, ``ncols`` per row, each tile scaled (nearest) to ``tile`` px
    on its longer side, ``pad`` pixels between tiles and ``top`` extra pixels above each row (for labels)."""
    n, c, h, w = tiles.shape
    if tile is not None and max(h, w) != tile:
        s = tile / max(h, w)
        h2, w2 = max(1, round(h * s)), max(1, round(w * s))
        tiles = F.interpolate(tiles.float(), size=(h2, w2), mode="nearest")
        h, w = h2, w2
    nrows = (n + ncols - 1) // ncols
    H = nrows * (h + pad + top) + pad
    W = ncols * (w + pad) + pad
    out = torch.full((c, H, W), pad_value)
    for i in range(n):
        r, q = divmod(i, ncols)
        y = pad + top + r * (h + pad + top)
        x = pad + q * (w + pad)
        out[:, y : y + h, x : x + w] = tiles[i].float().clamp(0, 1)
    return out


def mosaic_figure(
    tiles: torch.Tensor,
    ncols: int,
    *,
    tile: int = 32,
    labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    scale: float = 1 / 36,
    fontsize: float = 6.0,
    cmap: str | None = None,
):
    """A figure of ``mosaic(tiles)`` with an optional label above each tile and at the left of each row."""
    pad, top = 2, (10 if labels else 0)
    img = mosaic(tiles, ncols, tile=tile, pad=pad, top=top)
    c, H, W = img.shape
    th = (H - pad) // max(1, (len(tiles) + ncols - 1) // ncols) - pad - top
    tw = (W - pad) // ncols - pad
    fig, ax = subplots(
        figsize=(max(2.0, W * scale + (0.6 if row_labels else 0)), max(1.0, H * scale + (0.3 if title else 0)))
    )
    arr = img[0].numpy() if c == 1 else img.permute(1, 2, 0).numpy()
    ax.imshow(arr, cmap=cmap or ("gray" if c == 1 else None), vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if labels:
        for i, lab in enumerate(labels):
            r, q = divmod(i, ncols)
            ax.text(
                pad + q * (tw + pad) + tw / 2,
                pad + r * (th + pad + top) + top - 2,
                lab,
                ha="center",
                va="bottom",
                fontsize=fontsize,
            )
    if row_labels:
        for r, lab in enumerate(row_labels):
            ax.text(-2, pad + top + r * (th + pad + top) + th / 2, lab, ha="right", va="center", fontsize=fontsize + 1)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def class_mean_figure(st, class_names=None, channels=None):
    """Each class's mean activation per channel (a :class:`~cnnlens.inside.NeuronStats`) as a heat map."""
    present = [k for k in range(st.class_mean.shape[0]) if int(st.class_count[k]) > 0] or list(
        range(st.class_mean.shape[0])
    )  # only the classes that occur in the data
    cm = st.class_mean[present] if channels is None else st.class_mean[present][:, list(channels)]
    fig, ax = subplots(figsize=(min(14, 1.5 + 0.18 * cm.shape[1]), 0.3 * cm.shape[0] + 1.2))
    im = ax.imshow(cm.numpy(), aspect="auto", cmap="viridis")
    ax.set_yticks(range(cm.shape[0]))
    ax.set_yticklabels(
        [class_names[k] if class_names and k < len(class_names) else str(k) for k in present], fontsize=7
    )
    ax.set_xlabel(f"channel of {st.layer}")
    ax.set_ylabel("class")
    ax.figure.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    ax.set_title("mean activation per class", fontsize=9)
    fig.tight_layout()
    return fig


def deconv_figure(x, projections, guided=None, labels=None):
    """Rows: images; columns: input, then per channel the deconvnet projection (and guided backprop)."""
    n = x.shape[0]
    per = 2 if guided is not None else 1
    cols = 1 + per * len(projections)
    fig, axes = subplots(n, cols, figsize=(1.3 * cols, 1.35 * n + 0.3), squeeze=False)
    for i in range(n):
        show_image(axes[i, 0], x[i], labels[i] if labels else "input")
        for j, p in enumerate(projections):
            show_image(axes[i, 1 + per * j], p.normalized()[i], f"deconv ch {p.channel}" if i == 0 else None)
            if guided is not None:
                g = guided[j][i]
                m = g.abs().max().clamp_min(1e-12)
                show_image(axes[i, 2 + per * j], (0.5 + g / (2 * m)).clamp(0, 1), "guided bp ⚠" if i == 0 else None)
    fig.tight_layout()
    return fig
