"""Run two processes under torchrun on the loopback (gloo), as the distributed tests do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import free_port

TESTS = Path(__file__).parent


def run_two(*args: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 ARGS`` on 127.0.0.1 with a free port, the tests folder on PYTHONPATH; skips
    the test where torchrun is not installed and fails it, with the end of stderr, where torchrun fails."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",
        COLUMNS="200",
    )
    env.pop("WORLD_SIZE", None)
    cmd = [torchrun, "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(free_port()), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p
