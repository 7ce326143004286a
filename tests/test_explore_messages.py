"""The explorer's one-line messages for a new user's mistakes: a flat folder, folder names mixing two kinds, an
image over Pillow's limit, Ctrl-C during a scan, a refused --export folder."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image


def _images(folder, n=3, size=40):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(folder / f"im{i}.png")


def test_a_flat_folder_says_it_has_no_labels_and_writes_no_store(run_cli, tmp_path):
    _images(tmp_path / "flat")
    code, out = run_cli(
        "explore", "--model", "digits-cnn", "--data", tmp_path / "flat", "--cache", tmp_path / "c", "--scan-only"
    )
    assert code == 2, out.err
    err = " ".join(out.err.split())
    assert "cnnlens explore needs labelled data, and a flat folder of images has none" in err
    assert "outside the model" not in err
    assert not list(tmp_path.rglob("*.sqlite"))  # neither a store nor a .partial.sqlite


def test_folder_names_mixing_a_class_name_and_a_wordnet_id_are_named_without_a_stray_ellipsis():
    from cnnlens.data import _folder_label_map

    class Spec:
        class_names = ("tabby", "espresso", "tiger cat")

    class M:
        spec = Spec()

    with pytest.raises(ValueError) as e:
        _folder_label_map(["n07920052", "tabby"], M())
    msg = str(e.value)
    assert "(n07920052, tabby)" in msg and "..." not in msg
    assert "n07920052 is not one of its class names" in msg and "all by class name" in msg


def test_the_decompression_bomb_message_names_one_limit(tmp_path):
    import struct
    import zlib

    import cnnlens
    from cnnlens.explore.service import BadRequest, decode_upload

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    model = cnnlens.load_model("digits-cnn")
    for side in (40000, 12000):  # Pillow's error (past twice its limit) and its warning (past the limit)
        ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
        bomb = (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + chunk(b"IEND", b"")
        )
        with pytest.raises(BadRequest) as e:
            decode_upload(bomb, model)
        msg = str(e.value)
        numbers = {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]{6,}", msg)}
        assert numbers == {side * side, Image.MAX_IMAGE_PIXELS}, msg  # the image's size and ONE limit
        assert f"at most {Image.MAX_IMAGE_PIXELS:,} pixels" in msg


def test_ctrl_c_during_the_scan_exits_non_zero_and_says_how_to_resume(run_cli, tmp_path, monkeypatch):
    import cnnlens.explore.store as store

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "build_store", interrupted)
    code, out = run_cli("explore", "--model", "digits-cnn", "--data", "digits", "--cache", tmp_path, "--scan-only")
    assert code == 130
    assert "interrupted" in out.err and "run the same command again to resume" in " ".join(out.err.split())


def test_ctrl_c_while_serving_before_the_scan_ends_exits_non_zero(run_cli, tmp_path, monkeypatch):
    import threading

    import uvicorn

    import cnnlens.explore.workspace as workspace

    release = threading.Event()

    def slow_store(*a, **k):  # the scan is still running when the server stops
        release.wait(20)
        raise ValueError("the test stopped the scan")

    monkeypatch.setattr(workspace, "build_store", slow_store)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)  # as if Ctrl-C stopped the server at once
    try:
        code, out = run_cli("explore", "--model", "digits-cnn", "--data", "digits", "--cache", tmp_path, "--port", "0")
    finally:
        release.set()
    assert code == 130
    assert "run the same command again to resume" in " ".join(out.err.split())


def test_a_method_typo_gets_did_you_mean_in_one_spelling_on_the_cli_and_the_web(run_cli, tmp_path):
    from cnnlens.explore.service import ACTIONS, Explorer, NotFound

    code, out = run_cli(
        "explain",
        "--model",
        "digits-cnn",
        "--data",
        "digits",
        "--n",
        "1",
        "--methods",
        "gradcm",
        "--out",
        tmp_path / "o",
    )
    err = " ".join(out.err.split())
    assert code == 2 and "did you mean gradcam" in err
    assert "integrated-gradients" in err and "integrated_gradients" not in err  # one spelling: hyphens
    ex = Explorer.__new__(Explorer)  # check_action reads nothing of the instance
    for bad in ("gradcm", "integrated_gradient"):
        with pytest.raises(NotFound) as e:
            ex.check_action(bad)
        msg = str(e.value)
        assert "did you mean" in msg and "_" not in msg.split("methods:")[1], msg
    assert (
        ex.check_action("integrated-gradients") == ex.check_action("integrated_gradients") == "integrated_gradients"
        and "integrated_gradients" in ACTIONS
    )


def test_the_leaderboard_bolds_a_method_only_where_its_interval_clears_the_next_one():
    from cnnlens.metrics.benchmark import Leaderboard
    from cnnlens.metrics.result import Aggregate

    def agg(mean, half):
        return Aggregate(mean=mean, low=mean - half, high=mean + half, std=half, n=16, undefined=0)

    aggs = {
        "saliency": {"deletion_auc": agg(0.905, 0.13), "insertion_auc": agg(0.80, 0.01)},
        "gradcam": {"deletion_auc": agg(0.906, 0.13), "insertion_auc": agg(0.60, 0.05)},
        "ig": {"deletion_auc": agg(0.95, 0.13), "insertion_auc": agg(0.78, 0.015)},
    }
    lb = Leaderboard(
        methods=list(aggs),
        metrics=["deletion_auc", "insertion_auc"],
        scores={},
        aggregates=aggs,
        seconds_per_map={m: 0.1 for m in aggs},
        higher_is_better={"deletion_auc": False, "insertion_auc": True},
        n=16,
    )
    assert lb.best("deletion_auc") == "saliency" and lb.clear_best("deletion_auc") is None  # all overlap
    assert lb.clear_best("insertion_auc") is None  # 0.80 ± 0.01 vs 0.78 ± 0.015 overlap
    aggs["ig"]["insertion_auc"] = agg(0.70, 0.02)
    assert lb.clear_best("insertion_auc") == "saliency"  # 0.79 > 0.72: apart
    aggs["gradcam"]["deletion_auc"] = agg(0.30, 0.05)
    assert lb.clear_best("deletion_auc") == "gradcam"  # 0.35 < 0.775: apart, lower is better
