"""Two processes under torchrun give the same dataset search, neuron statistics and influence as one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from torchrun_two import run_two  # noqa: E402

pytestmark = pytest.mark.distributed


def test_two_processes_equal_one(tmp_path):
    out = tmp_path / "dist.pt"
    run_two(str(TESTS / "inside_dist_worker.py"), str(out))
    two = torch.load(out, weights_only=False)
    assert two["world"] == 2
    from inside_dist_worker import run_scan

    search, stats, infl = run_scan()
    # one image per forward in both runs, so activations are bit-identical and the search is exactly equal
    for f in ("activations", "indices", "positions", "labels", "crops", "boxes", "clipped", "class_histogram"):
        assert torch.equal(getattr(two["search"], f), getattr(search, f)), f
    for f in ("histogram", "below", "above", "class_count", "dead", "preferred_class"):
        assert torch.equal(getattr(two["stats"], f), getattr(stats, f)), f
    for f in ("mean", "var", "sparsity", "min", "max", "class_mean", "selectivity"):
        assert torch.allclose(getattr(two["stats"], f), getattr(stats, f), rtol=1e-6, atol=1e-7), f
    assert two["stats"].count == stats.count == 21 * 4 * 4
    assert two["influence"].count == infl.count == 21
    for f in ("gradient", "taylor", "ablation"):
        assert torch.allclose(getattr(two["influence"], f), getattr(infl, f), rtol=1e-6, atol=1e-7), f
