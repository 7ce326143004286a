"""`cnnlens --help` imports no torch (it stays well under a second); terminal tables never cut layer names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout


def test_help_and_import_do_not_import_torch():
    out = _run(
        "import sys\n"
        "import cnnlens\n"
        "light = 'torch' not in sys.modules\n"
        "sys.argv = ['cnnlens', '--help']\n"
        "from cnnlens.cli import main\ncode = 0\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('RESULT', light, 'torch' not in sys.modules, code)\n"
    )
    assert "Usage:" in out and "evaluate" in out and "explain" in out
    assert out.strip().splitlines()[-1] == "RESULT True True 0"


def test_lazy_names_still_work():
    out = _run(
        "import cnnlens, cnnlens.evaluation\n"  # cnnlens.scan is the function, the module cnnlens.scanning
        "from cnnlens import scan, Batch, LayerTap, Target\n"
        "import torch\n"
        "class Count:\n    layers = ()\n    def __init__(self): self.n = 0\n"
        "    def update(self, b): self.n += len(b.x)\n    def merge(self, o): self.n += o.n; return self\n"
        "    def compute(self): return self.n\n"
        "data = torch.utils.data.TensorDataset(torch.rand(5, 1, 2, 2), torch.zeros(5).long())\n"
        "net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))\n"
        "print(scan(net, data, [Count()], batch_size=2)[0], cnnlens.scan(net, data, [Count()])[0], "
        "cnnlens.Target.__name__)\n"
    )
    assert out.split() == ["5", "5", "Target"]


def test_layer_table_keeps_full_names_at_80_columns(run_cli, monkeypatch, _effnet):
    monkeypatch.setenv("COLUMNS", "80")
    code, cap = run_cli("layers", "--model", "efficientnet-lite0")
    assert code == 0, cap.err
    names = [n for n, _ in _effnet.named_modules() if n]
    assert "…" not in cap.out
    cells = {c.strip() for line in cap.out.splitlines() for c in line.split("│")}
    missing = [n for n in names if n not in cells]
    assert missing == [] and max(len(line) for line in cap.out.splitlines()) > 80  # wider than 80, nothing cut
