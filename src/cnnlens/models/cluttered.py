"""Cluttered digits: a test bed where the evidence is known, and the small CNN trained on it.

Every image is a 64×64 grey canvas holding one of scikit-learn's 8×8 digits,
upsampled (bilinear) to 24×24 and placed at a random position, among clutter:
random fragments (6 to 10 pixels a side, of the 24) of *other* digits and
Gaussian noise. The label is the placed digit; its bounding box (the tight box
of its ink, ``value > 0.1``) is known, so an explanation can be scored against
it (pointing game, relevance mass / rank accuracy in :mod:`cnnlens.metrics`).

Everything is deterministic (numpy's legacy ``RandomState``, stable across
numpy versions) and made from the fixed digits split: the ``"train"`` split
draws its digits and fragments from the digits' training images (3 canvases
per digit, 4,314 images), the held-out ``"test"`` split from the held-out
digits only (2 canvases per digit, 718 images), so no digit image is seen in
both.

    >>> from cnnlens.models.cluttered import cluttered_digits
    >>> ds = cluttered_digits("test")
    >>> x, y = ds[0]; x0, y0, x1, y1 = ds.boxes[0].tolist()
    >>> tuple(x.shape), ds.masks.shape[1:]
    ((1, 64, 64), torch.Size([64, 64]))
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..extras import require
from .digits import CLASS_NAMES, DigitsCNN, grey_digits_spec, split_indices
from .spec import ModelSpec

#: canvas side
SIZE = 64
#: side of the placed digit
DIGIT = 24
#: canvases per source digit in each split
COPIES = {"train": 3, "test": 2}
#: seeds of the generator per split
SEEDS = {"train": 1, "test": 2}
#: clutter: fragments per canvas and their side in pixels (inclusive ranges), noise std
FRAGMENTS = (3, 6)
FRAGMENT_SIDE = (6, 10)
NOISE = 0.08
#: a pixel belongs to the digit's ink when its value exceeds this (defines the box)
INK = 0.1


class ClutteredDigitsCNN(DigitsCNN):
    """Four conv-ReLU stages (three max-pools), global average pool, linear: CAM and Grad-CAM apply.

    The last conv's receptive field is 38 pixels, enough for a 24-pixel digit;
    its 8×8 output (for 64×64 input) is averaged by ``pool`` and classified by
    ``fc``: logits = fc(mean_{h,w} features(x)). The digits CNN with one stage more.
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64), num_classes: int = 10, in_channels: int = 1):
        super().__init__(widths, num_classes, in_channels)


def cluttered_spec(class_names: tuple[str, ...] = CLASS_NAMES) -> ModelSpec:
    """The spec of ``cluttered-digits-cnn``: 1 channel, 64×64, mean/std 0.5."""
    return grey_digits_spec(
        "cluttered-digits-cnn",
        SIZE,
        class_names,
        dataset="cluttered-digits: one 24×24 digit on a 64×64 canvas among fragments of others and noise",
        test_split="cluttered_digits('test')",
    )


class ClutteredDigits(Dataset):
    """(x 1×64×64 float in [0, 1], y int) pairs of one split, with the digit's box.

    ``.x``/``.y`` hold the split as tensors; ``.boxes`` is N×4 long
    (x0, y0, x1, y1) in pixels, end exclusive: the digit's ink is
    ``x[:, y0:y1, x0:x1]``; ``.masks`` is the same as N×H×W bool. ``.ink``
    (N×H×W bool) is the digit's own pixels (value > :data:`INK` before the
    noise: the object's segmentation mask), ``.clutter`` the fragments' pixels
    (same rule) — the concepts of network dissection on this test bed.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        boxes: torch.Tensor,
        split: str,
        ink: torch.Tensor | None = None,
        clutter: torch.Tensor | None = None,
    ):
        self.x, self.y, self.boxes, self.split = x, y, boxes, split
        self.ink, self.clutter = ink, clutter
        self.class_names = CLASS_NAMES

    @property
    def masks(self) -> torch.Tensor:
        return boxes_to_masks(self.boxes, (SIZE, SIZE))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])

    def __repr__(self) -> str:
        return f"ClutteredDigits(split={self.split!r}, n={len(self)})"


def boxes_to_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N×4 boxes (x0, y0, x1, y1; end exclusive) → N×H×W bool masks."""
    H, W = size
    b = torch.as_tensor(boxes).long().view(-1, 4)
    ys = torch.arange(H).view(1, H, 1)
    xs = torch.arange(W).view(1, 1, W)
    return (
        (xs >= b[:, 0, None, None])
        & (xs < b[:, 2, None, None])
        & (ys >= b[:, 1, None, None])
        & (ys < b[:, 3, None, None])
    )


@functools.lru_cache(maxsize=1)
def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All digits as N×24×24 float32 in [0, 1] (bilinear from value/16) and their labels."""
    load_digits = require("data", "sklearn.datasets", what="the cluttered-digits data").load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return x[:, 0].numpy(), d.target.astype(np.int64)


def _make(split: str) -> tuple[torch.Tensor, ...]:
    """(x, y, boxes, ink, clutter) of a split: ink/clutter are the digit's / the fragments' pixels."""
    images, labels = _digit_images()
    idx = split_indices(labels, split)
    rs = np.random.RandomState(SEEDS[split])
    n = len(idx) * COPIES[split]
    xs = np.zeros((n, SIZE, SIZE), dtype=np.float32)
    ys = np.zeros(n, dtype=np.int64)
    boxes = np.zeros((n, 4), dtype=np.int64)
    ink = np.zeros((n, SIZE, SIZE), dtype=bool)
    clutter = np.zeros((n, SIZE, SIZE), dtype=bool)
    order = np.concatenate([rs.permutation(idx) for _ in range(COPIES[split])])
    for k, i in enumerate(order):
        canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
        # clutter first: fragments of other digits (of this split), placed anywhere outside the digit's square
        r0, c0 = rs.randint(0, SIZE - DIGIT + 1, size=2)
        for _ in range(rs.randint(FRAGMENTS[0], FRAGMENTS[1] + 1)):
            j = idx[rs.randint(len(idx))]
            while labels[j] == labels[i]:
                j = idx[rs.randint(len(idx))]
            h, w = rs.randint(FRAGMENT_SIDE[0], FRAGMENT_SIDE[1] + 1, size=2)
            fr, fc = rs.randint(0, DIGIT - h + 1), rs.randint(0, DIGIT - w + 1)
            piece = images[j, fr : fr + h, fc : fc + w]
            for _try in range(20):
                pr, pc = rs.randint(0, SIZE - h + 1), rs.randint(0, SIZE - w + 1)
                if pr + h <= r0 or pr >= r0 + DIGIT or pc + w <= c0 or pc >= c0 + DIGIT:
                    break
            else:
                continue  # no room outside the digit: drop this fragment
            np.maximum(canvas[pr : pr + h, pc : pc + w], piece, out=canvas[pr : pr + h, pc : pc + w])
            clutter[k, pr : pr + h, pc : pc + w] |= piece > INK
        digit = images[i]
        np.maximum(canvas[r0 : r0 + DIGIT, c0 : c0 + DIGIT], digit, out=canvas[r0 : r0 + DIGIT, c0 : c0 + DIGIT])
        canvas = np.clip(canvas + rs.normal(0.0, NOISE, size=canvas.shape).astype(np.float32), 0.0, 1.0)
        rows = np.flatnonzero((digit > INK).any(1))
        cols = np.flatnonzero((digit > INK).any(0))
        boxes[k] = (c0 + cols[0], r0 + rows[0], c0 + cols[-1] + 1, r0 + rows[-1] + 1)
        ink[k, r0 : r0 + DIGIT, c0 : c0 + DIGIT] = digit > INK
        xs[k], ys[k] = canvas, labels[i]
    return (
        torch.from_numpy(xs).unsqueeze(1),
        torch.from_numpy(ys),
        torch.from_numpy(boxes),
        torch.from_numpy(ink),
        torch.from_numpy(clutter),
    )


def fragment_canvases(
    digit: int | None,
    n: int,
    *,
    seed: int = 0,
    split: str = "train",
    pieces: tuple[int, int] = (2, 4),
    side: tuple[int, int] = (10, 16),
) -> torch.Tensor:
    """Concept images for TCAV: n 64×64 canvases (N×1×64×64 in [0, 1]) of ``pieces`` fragments (``side``
    pixels a side, of the 24) of digits of class ``digit`` — or of any class for ``digit=None``, a random
    concept — placed anywhere, with the test bed's noise; drawn from the digits of ``split``.

    >>> fragment_canvases(3, 4).shape
    torch.Size([4, 1, 64, 64])
    """
    images, labels = _digit_images()
    idx = split_indices(labels, split)
    if digit is not None:
        idx = idx[labels[idx] == digit]
        if len(idx) == 0:
            raise ValueError(f"digit must be one of 0–9 or None, got {digit!r}")
    rs = np.random.RandomState(seed)
    out = np.zeros((n, SIZE, SIZE), dtype=np.float32)
    for k in range(n):
        for _ in range(rs.randint(pieces[0], pieces[1] + 1)):
            j = idx[rs.randint(len(idx))]
            h, w = rs.randint(side[0], side[1] + 1, size=2)
            fr, fc = rs.randint(0, DIGIT - h + 1), rs.randint(0, DIGIT - w + 1)
            pr, pc = rs.randint(0, SIZE - h + 1), rs.randint(0, SIZE - w + 1)
            np.maximum(
                out[k, pr : pr + h, pc : pc + w],
                images[j, fr : fr + h, fc : fc + w],
                out=out[k, pr : pr + h, pc : pc + w],
            )
        out[k] = np.clip(out[k] + rs.normal(0.0, NOISE, size=(SIZE, SIZE)).astype(np.float32), 0.0, 1.0)
    return torch.from_numpy(out).unsqueeze(1)


@functools.lru_cache(maxsize=2)
def _cached(split: str) -> tuple[torch.Tensor, ...]:
    return _make(split)


def cluttered_digits(split: str = "test") -> ClutteredDigits:
    """The fixed ``"train"`` (4,314 images) or held-out ``"test"`` (718 images) split of cluttered digits.

    >>> len(cluttered_digits("train")), len(cluttered_digits("test"))
    (4314, 718)
    """
    if split not in COPIES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, y, b, ink, clutter = _cached(split)
    return ClutteredDigits(x.clone(), y.clone(), b.clone(), split, ink.clone(), clutter.clone())
