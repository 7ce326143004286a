"""Tiny hand-built nets for the cnnlens.inside tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.models.spec import ModelSpec, PixelModel


def seeded_(module: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


class ChainNet(nn.Module):
    """conv-ReLU-pool ×2, conv-ReLU, GAP, linear on 1×16×16 (a small digits-cnn)."""

    def __init__(self, seed: int = 0, cin: int = 1, widths=(4, 6, 5), k: int = 3):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            nn.Conv2d(cin, a, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(a, b, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(b, c, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, k)
        seeded_(self, seed)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def pixel_chain_net(seed: int = 0) -> PixelModel:
    spec = ModelSpec("chain", (16, 16), 1, (0.5,), (0.25,), ("a", "b", "c"))
    return PixelModel(ChainNet(seed), spec).eval()


class Block(nn.Module):
    """A residual block with a strided 1×1 shortcut: out = relu(b(a(x)) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 3, stride, 1)
        self.b = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.b(torch.relu(self.a(x))) + self.shortcut(x))


class Crop(nn.Module):
    """x[:, :, 1:, 1:]"""

    def forward(self, x):
        return x[:, :, 1:, 1:]


class OddNet(nn.Module):
    """Residual blocks, functional padding (TF 'same'), dilation, a non-square kernel,
    average pooling, a concatenation of two branches and a strided slice."""

    def __init__(self, seed: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2)  # padded functionally in forward: (0, 1, 0, 1)
        self.block1 = Block(4, 6, 2)
        self.dil = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.wide = nn.Conv2d(6, 4, (1, 5), padding=(0, 2))
        self.narrow = nn.Conv2d(6, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.crop = Crop()
        self.head = nn.Linear(8, 2)
        seeded_(self, seed)

    def forward(self, x):
        x = self.stem(F.pad(x, (0, 1, 0, 1)))
        x = self.block1(x)
        x = torch.relu(self.dil(x))
        x = torch.cat([self.wide(x), self.narrow(x)], 1)
        x = self.pool(x)
        x = self.crop(x)
        return self.head(x.mean((2, 3)))


class Upsampler(nn.Module):
    """conv → bilinear upsampling → conv: a path receptive_field does not model."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3)
        self.c2 = nn.Conv2d(2, 2, 3)

    def forward(self, x):
        return self.c2(F.interpolate(self.c1(x), scale_factor=2.0, mode="bilinear")).mean((2, 3))
