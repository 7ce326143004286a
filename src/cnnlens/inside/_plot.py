"""Mosaic figures: many small tiles in one image (one matplotlib axes, so large grids stay fast)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def mosaic(tiles: torch.Tensor, ncols: int, tile: int | None = None, pad: int = 2, pad_value: float = 1.0,
           top: int = 0) -> torch.Tensor:
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
        out[:, y:y + h, x:x + w] = tiles[i].float().clamp(0, 1)
    return out


def mosaic_figure(tiles: torch.Tensor, ncols: int, *, tile: int = 32, labels: Sequence[str] | None = None,
                  row_labels: Sequence[str] | None = None, title: str | None = None, scale: float = 1 / 36,
                  fontsize: float = 6.0, cmap: str | None = None):
    """A figure of ``mosaic(tiles)`` with an optional label above each tile and at the left of each row."""
    from ..viz import subplots

    pad, top = 2, (10 if labels else 0)
    img = mosaic(tiles, ncols, tile=tile, pad=pad, top=top)
    c, H, W = img.shape
    th = (H - pad) // max(1, (len(tiles) + ncols - 1) // ncols) - pad - top
    tw = (W - pad) // ncols - pad
    fig, ax = subplots(figsize=(max(2.0, W * scale + (0.6 if row_labels else 0)), max(1.0, H * scale + (0.3 if title else 0))))
    arr = img[0].numpy() if c == 1 else img.permute(1, 2, 0).numpy()
    ax.imshow(arr, cmap=cmap or ("gray" if c == 1 else None), vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if labels:
        for i, lab in enumerate(labels):
            r, q = divmod(i, ncols)
            ax.text(pad + q * (tw + pad) + tw / 2, pad + r * (th + pad + top) + top - 2, lab, ha="center", va="bottom",
                    fontsize=fontsize)
    if row_labels:
        for r, lab in enumerate(row_labels):
            ax.text(-2, pad + top + r * (th + pad + top) + th / 2, lab, ha="right", va="center", fontsize=fontsize + 1)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
