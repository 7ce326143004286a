"""`torchrun --nproc_per_node 2 -m cnnlens explore --scan-only` writes the store one process writes."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import evalnets  # noqa: E402
from torchrun_two import run_two  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM samples ORDER BY idx").fetchall()


def test_two_processes_write_the_store_of_one(tmp_path, untouched):
    evalnets.write_colour_folder(tmp_path / "colours")  # 13 images: shards of 7 and 6
    p = run_two(
        "-m",
        "cnnlens",
        "explore",
        "--scan-only",
        "--model",
        "evalnets:colour_net",
        "--data",
        str(tmp_path / "colours"),
        "--batch-size",
        "3",
        "--cache",
        str(tmp_path / "dist"),
    )
    assert p.stderr.count("13 samples") == 1  # only rank 0 reports
    (dist,) = (tmp_path / "dist").glob("scan-*.sqlite")
    import cnnlens
    from cnnlens.explore import build_store

    model = untouched(cnnlens.load_model("evalnets:colour_net"))  # as the command loads it
    one = build_store(model, str(tmp_path / "colours"), tmp_path / "one", batch_size=3)
    assert dist.name == one.path.name  # same model, same files: the same key
    a, b = _rows(dist), _rows(one.path)
    assert len(a) == len(b) == 13
    for ra, rb in zip(
        a, b, strict=True
    ):  # classes and paths exactly; probabilities to float32 rounding (other batches)
        ints = (0, 1, 2, 3, 4, 9, 10)  # idx, path, true, pred, second, true_rank, top_classes
        assert [ra[i] for i in ints] == [rb[i] for i in ints]
        assert [*ra[5:9], *json.loads(ra[11])] == pytest.approx([*rb[5:9], *json.loads(rb[11])], abs=1e-5)
    assert one.confusion().tolist() == evalnets.EXPECTED_CONFUSION
