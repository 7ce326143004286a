"""`torchrun --nproc_per_node 2 -m cnnlens evaluate` equals one process (gloo on loopback)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import evalnets  # noqa: E402
from torchrun_two import run_two  # noqa: E402

pytestmark = pytest.mark.distributed


def test_two_processes_equal_one(tmp_path, untouched):
    import importlib

    if not hasattr(importlib.import_module("cnnlens.models"), "load_model"):
        pytest.skip("cnnlens.models.load_model is not there yet")
    evalnets.write_colour_folder(tmp_path / "colours")  # 13 images: shards of 7 and 6, no padding possible
    out = tmp_path / "dist"
    p = run_two(
        "-m",
        "cnnlens",
        "evaluate",
        "--model",
        "evalnets:colour_net",
        "--data",
        str(tmp_path / "colours"),
        "--topk",
        "1",
        "2",
        "--batch-size",
        "3",
        "--out",
        str(out),
    )
    assert p.stdout.count("13 samples") == 1  # only rank 0 prints
    dist = json.loads((out / "confusion.json").read_text())
    summary = json.loads((out / "evaluation.json").read_text())
    # one process, in this process
    import cnnlens

    model = untouched(evalnets.colour_net())
    one = cnnlens.evaluate(model, str(tmp_path / "colours"), topk=(1, 2), batch_size=3)
    assert dist["confusion"] == one.confusion.tolist() == evalnets.EXPECTED_CONFUSION
    assert summary["n"] == 13
    assert {int(k): v for k, v in summary["topk_hits"].items()} == one.topk_hits == {1: 11, 2: 12}
    assert {int(k): v for k, v in summary["topk_accuracy"].items()} == one.topk_accuracy
    assert torch.equal(
        torch.tensor(dist["confusion_normalized"]),
        torch.tensor([[round(v, 6) for v in r] for r in one.confusion_normalized.tolist()]),
    )
