"""The one check of an image batch that every method shares: something to look at."""

from __future__ import annotations

import torch


def check_not_empty(x: torch.Tensor) -> torch.Tensor:
    """Refuse a batch with no image or an image with no pixel (one line naming the fix); return ``x``.

    >>> check_not_empty(torch.zeros(1, 3, 0, 4))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: x has an empty image (0×4 pixels); pass images at least one pixel high and wide (e.g. resized ...
    """
    if x.dim() >= 1 and x.shape[0] == 0:
        raise ValueError("x holds no image (batch size 0); pass at least one image")
    if x.dim() >= 2 and (x.shape[-1] == 0 or x.shape[-2] == 0):
        raise ValueError(
            f"x has an empty image ({x.shape[-2]}×{x.shape[-1]} pixels); pass images at least one pixel "
            "high and wide (e.g. resized with cnnlens.load_images)"
        )
    return x
