"""Tiny hand-built nets for the attribution tests (each with a known analytic answer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from inside_nets import seeded_  # noqa: F401 (re-exported for the attribution tests)
from torch import nn


class LinearNet(nn.Module):
    """f(x) = W · vec(x) + b: every gradient method has a closed form."""

    def __init__(self, c: int = 1, h: int = 4, w: int = 4, k: int = 3, seed: int = 0):
        super().__init__()
        self.shape = (c, h, w)
        self.fc = nn.Linear(c * h * w, k)
        seeded_(self, seed)

    def forward(self, x):
        return self.fc(x.flatten(1))

    def weight_map(self, c: int) -> torch.Tensor:
        return self.fc.weight[c].detach().view(*self.shape)


class OneConvNet(nn.Module):
    """conv(1→2, 3×3, pad 1) → ReLU → flatten → linear: Grad-CAM ≠ CAM here, computed by hand in the test."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2 * 4 * 4, 2)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            # small integers / halves, so the hand computation is exact in float32
            self.conv.weight.copy_(torch.randint(-2, 3, self.conv.weight.shape, generator=g).float() / 2)
            self.conv.bias.copy_(torch.tensor([0.5, -0.5]))
            self.fc.weight.copy_(torch.randint(-3, 4, self.fc.weight.shape, generator=g).float() / 2)
            self.fc.bias.copy_(torch.tensor([1.0, -1.0]))

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


class InplaceReluNet(nn.Module):
    """Conv blocks with in-place ReLUs (one ReLU module reused twice) and a GAP head."""

    def __init__(self, seed: int = 1):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.c3 = nn.Conv2d(4, 5, 3, padding=1)
        self.act3 = nn.ReLU6(inplace=True)
        self.fc = nn.Linear(5, 3)
        seeded_(self, seed)

    def forward(self, x):
        h = self.act(self.c1(x))
        h = self.act(self.c2(h))
        h = self.act3(self.c3(h))
        return self.fc(h.mean((2, 3)))


class FunctionalReluNet(nn.Module):
    """Applies ReLU functionally (F.relu in forward, no nn.ReLU module)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        seeded_(self, 2)

    def forward(self, x):
        return self.fc(F.relu(self.c1(x)).mean((2, 3)))


class Boom(nn.Module):
    """Always raises inside its forward."""

    def forward(self, x):
        raise RuntimeError("boom inside the model")


class BoomGapNet(nn.Module):
    """A GAP net whose head raises: every method's forward fails while its hooks are attached."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4))
        self.boom = Boom()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        a = self.features(x)
        self.boom(a)
        return self.fc(a.mean((2, 3)))


class LeftHalfNet(nn.Module):
    """A conv net that only sees the left half of the image (the right half is cropped away)."""

    def __init__(self, seed: int = 4):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        seeded_(self, seed)

    def forward(self, x):
        w = x.shape[-1] // 2
        return self.fc(self.act(self.c(x[..., :w])).mean((2, 3)))


class SmoothGapNet(nn.Module):
    """conv → tanh → conv → tanh → GAP → linear: a smooth integrand, so quadrature errors fall steadily."""

    def __init__(self, seed: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 5, 3, padding=1), nn.Tanh()
        )
        self.fc = nn.Linear(5, 3)
        seeded_(self, seed, scale=0.8)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))
