"""Two processes under torchrun give the same dataset search, neuron statistics and influence as one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    out = tmp_path / "dist.pt"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    p = subprocess.run(
        [
            torchrun,
            "--nnodes",
            "1",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            str(TESTS / "inside_dist_worker.py"),
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    two = torch.load(out, weights_only=False)
    assert two["world"] == 2
    sys.path.insert(0, str(TESTS))
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
