"""The digits CNN and its data: scikit-learn's bundled 8×8 digits, upsampled to 32×32.

The data set ships with scikit-learn (1,797 greyscale images, values 0..16), so
everything here works offline. The split is fixed: 20 % of each class (359
images) is held out (``digits_split("test")``, what ``"digits"`` evaluates on);
the rest (1,438) is for training.

    >>> from cnnlens.models.digits import digits_split
    >>> x, y = digits_split("test")[0]
    >>> tuple(x.shape), 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    ((1, 32, 32), True)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..extras import require
from .spec import ModelSpec

#: side of the upsampled images
SIZE = 32
#: share of each class held out for testing
TEST_FRACTION = 0.2
#: the seed of the fixed split (numpy's legacy RandomState, stable across numpy versions)
SPLIT_SEED = 0
CLASS_NAMES = tuple(str(i) for i in range(10))


class DigitsCNN(nn.Module):
    """conv-ReLU-pool per stage, conv-ReLU last (one stage per width), global average pool, linear: CAM,
    Grad-CAM and deconvnet apply.

    ``features`` is a plain ``nn.Sequential`` of Conv2d / ReLU / MaxPool2d with a
    separate ReLU instance after each conv (no in-place ops); its output
    (64×8×8 for a 32×32 input) is average-pooled by ``pool`` and classified by ``fc``:
    logits = fc(mean_{h,w} features(x)).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip((in_channels, *widths[:-1]), widths, strict=True)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            if i < len(widths) - 1:  # a 2×2 max-pool after every stage but the last
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def grey_digits_spec(name: str, size: int, class_names: tuple[str, ...], **extra: str) -> ModelSpec:
    """The spec of a :class:`DigitsCNN`: 1 channel, size×size, mean/std 0.5, layer names in the PixelModel."""
    return ModelSpec(
        name=name,
        input_size=(size, size),
        channels=1,
        mean=(0.5,),
        std=(0.5,),
        class_names=tuple(class_names),
        last_spatial_layer="net.features",
        classifier="net.fc",
        pooled_layer="net.features",
        extra=dict(extra),
    )


def digits_spec(class_names: tuple[str, ...] = CLASS_NAMES) -> ModelSpec:
    """The spec of ``digits-cnn``: 1 channel, 32×32, mean/std 0.5."""
    return grey_digits_spec(
        "digits-cnn",
        SIZE,
        class_names,
        dataset="sklearn digits, 8×8 upsampled (bilinear) to 32×32",
        test_split="digits_split('test')",
    )


def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Every digit image as N×1×32×32 float in [0, 1] (bilinear upsampling of value/16) and labels."""
    load_digits = require("data", "sklearn.datasets", what="the digits data").load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    # bilinear is a convex combination of neighbours, so the range stays [0, 1]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return x, torch.tensor(d.target, dtype=torch.long)


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of ``split`` ("train" or "test"): a stratified, seeded 80/20 split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rs = np.random.RandomState(SPLIT_SEED)
    test = []
    for c in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == c)
        test.append(rs.permutation(idx)[: int(round(TEST_FRACTION * len(idx)))])
    mask = np.zeros(len(labels), dtype=bool)
    mask[np.concatenate(test)] = True
    return np.flatnonzero(mask if split == "test" else ~mask)


class DigitsDataset(Dataset):
    """(x 1×32×32 float in [0, 1], y int) pairs of one split; ``.x``/``.y`` hold all of it as tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, split: str):
        self.x, self.y, self.split = x, y, split
        self.class_names = CLASS_NAMES

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])

    def __repr__(self) -> str:
        return f"DigitsDataset(split={self.split!r}, n={len(self)})"


def digits_split(split: str = "test") -> DigitsDataset:
    """The fixed ``"train"`` (1,438 images) or held-out ``"test"`` (359 images) split of sklearn's digits.

    >>> len(digits_split("train")), len(digits_split("test"))
    (1438, 359)
    """
    x, y = _all_digits()
    idx = torch.from_numpy(split_indices(y.numpy(), split))
    return DigitsDataset(x[idx].contiguous(), y[idx].contiguous(), split)
