"""Shared fixtures.

Every model handed out by a fixture here is *watched*: at the end of the test it
must be exactly as it was at the start (state_dict bit-identical, training flags,
requires_grad and .grad unchanged, no hook left). Tests that build their own
model call ``untouched(model)`` to get the same check.
"""

from __future__ import annotations

import os

import pytest
import torch
from modelstate import assert_unchanged, snapshot
from torch import nn

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def untouched():
    watched: list[tuple[nn.Module, dict]] = []

    def watch(model: nn.Module) -> nn.Module:
        watched.append((model, snapshot(model)))
        return model

    yield watch
    for model, snap in watched:
        assert_unchanged(model, snap, type(model).__name__)


@pytest.fixture
def one_thread():
    """Seeded, on one torch thread: tiny nets run fastest so (thread start-up dominates, and
    two threads crawl when the cores are shared); the thread count is restored after."""
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``cnnlens ARGS...`` in this process; returns (exit code, captured output)."""

    def run(*args):
        import sys

        from cnnlens.cli import main

        monkeypatch.setattr(sys, "argv", ["cnnlens", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr()

    return run


@pytest.fixture(scope="session")
def _digits_model():
    import cnnlens

    return cnnlens.load_model("digits-cnn")


@pytest.fixture(scope="session")
def _effnet():
    import cnnlens

    return cnnlens.load_model("efficientnet-lite0")


@pytest.fixture
def digits_model(_digits_model, untouched):
    """The shipped digits CNN (eval mode), checked for side effects after the test."""
    return untouched(_digits_model)


@pytest.fixture
def effnet(_effnet, untouched):
    """EfficientNet-Lite0 with ImageNet weights, checked for side effects after the test."""
    return untouched(_effnet)


class TinyGapNet(nn.Module):
    """conv → ReLU → conv → ReLU → global average pool → linear: CAM and Grad-CAM apply."""

    def __init__(self, cin: int = 3, c1: int = 4, c2: int = 5, k: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(cin, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, k)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def tiny_gap_net(untouched):
    return untouched(TinyGapNet())
