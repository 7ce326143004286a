"""`cnnlens explore` on the command line: --scan-only, --export (atomic, never replaces a foreign folder),
the --host warning and a busy port; and the overview of a model with more than 30 classes."""

from __future__ import annotations

import re
import socket

import pytest
import torch
from torch import nn

from cnnlens.explore.app import make_app
from cnnlens.explore.export import export
from cnnlens.explore.service import Explorer
from cnnlens.report import MANIFEST


def test_scan_only_fills_the_store_and_prints_the_evaluation(run_cli, tmp_path):
    code, out = run_cli("explore", "--model", "digits-cnn", "--data", "digits", "--cache", tmp_path, "--scan-only")
    assert code == 0, out.err
    assert "359 samples, 10 classes" in out.err and "top-1: 98.05%" in out.err
    assert len(list(tmp_path.glob("scan-*.sqlite"))) == 1 and not list(tmp_path.glob("*.partial.sqlite"))


def test_host_warning_url_and_a_busy_port(run_cli, tmp_path, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))  # do not serve: check what would run
    code, out = run_cli(
        "explore", "--model", "digits-cnn", "--data", "digits", "--cache", tmp_path, "--host", "0.0.0.0", "--port", "0"
    )
    assert code == 0, out.err
    assert "warning" in out.err and "anyone who can reach this machine" in out.err
    assert calls == [{"host": "0.0.0.0", "port": 0, "log_level": "warning"}]
    calls.clear()
    code, out = run_cli("explore", "--model", "digits-cnn", "--data", "digits", "--cache", tmp_path, "--port", "0")
    assert code == 0 and "warning" not in out.err and "http://127.0.0.1:0/" in out.err
    assert calls[0]["host"] == "127.0.0.1"  # local by default
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out = run_cli("explore", "--model", "digits-cnn", "--data", "digits", "--cache", tmp_path, "--port", port)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in out.err


def test_export_writes_static_pages_atomically_and_refuses_a_foreign_folder(run_cli, tmp_path):
    out = tmp_path / "site"
    code, res = run_cli(
        "explore",
        "--model",
        "digits-cnn",
        "--data",
        "digits",
        "--cache",
        tmp_path / "c",
        "--export",
        out,
        "--cells",
        "3",
    )
    assert code == 0, res.err
    html = (out / "index.html").read_text()
    links = set(re.findall(r'href="(cell-\d+-\d+-\d+\.html)"', html))
    assert len({link.rsplit("-", 1)[0] for link in links}) == 3  # the three most confused cells link
    for link in links:
        page = (out / link).read_text()
        for src in re.findall(r'src="([^"]+)"', page):
            assert (out / src).is_file(), src  # every image of the gallery is there
        assert "/sample/" not in page and "http" not in page  # no server, no network
    assert (out / "static" / "explore.css").is_file() and (out / MANIFEST).is_file()
    # again: a previous export is replaced; one with a file added to it only with --force
    again = ("explore", "--model", "digits-cnn", "--data", "digits", "--cache", tmp_path / "c", "--export", out)
    again += ("--cells", "1")
    code, _ = run_cli(*again)
    assert code == 0
    (out / "stale.html").write_text("old")
    code, res = run_cli(*again)
    assert code == 2 and "plus other files (stale.html)" in res.err and (out / "stale.html").read_text() == "old"
    code, _ = run_cli(*again, "--force")
    assert code == 0 and not (out / "stale.html").exists()
    # a folder with the user's files is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    code, res = run_cli(
        "explore", "--model", "digits-cnn", "--data", "digits", "--cache", tmp_path / "c", "--export", mine
    )
    assert code == 2 and "not a cnnlens output" in res.err
    assert f"--export {mine.resolve()}" in res.err and "--out" not in res.err and "force=True" not in res.err
    assert "or --force to replace it" in res.err
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"] and (mine / "thesis.tex").read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_failed_export_leaves_the_previous_one(tmp_path, monkeypatch):
    from cnnlens.explore import export as export_mod

    data = torch.utils.data.TensorDataset(torch.rand(30, 1, 4, 4), torch.arange(30) % 3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    ex = Explorer(model, data, tmp_path / "cache")
    try:
        export(ex, tmp_path / "site")
        before = sorted(p.name for p in (tmp_path / "site").iterdir())

        def boom(*a, **k):
            raise RuntimeError("disk full")

        monkeypatch.setattr(export_mod, "render_cell", boom)
        with pytest.raises(RuntimeError, match="disk full"):
            export(ex, tmp_path / "site")
        assert sorted(p.name for p in (tmp_path / "site").iterdir()) == before
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site")]
    finally:
        ex.close()


def test_more_than_30_classes_show_the_most_confused_submatrix_search_and_pairs(tmp_path):
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.rand(300, 1, 4, 4, generator=g), torch.randint(0, 40, (300,), generator=g)
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 40))
    ex = Explorer(model, data, tmp_path)
    try:
        ex.start_scan()
        ex.wait_ready()
        with TestClient(make_app(ex)) as client:
            o = client.get("/api/overview").json()
            C = ex.store.confusion()
            # the classes by confusions (row and column off the diagonal), then support, then index
            off = C.clone()
            off.fill_diagonal_(0)
            key = lambda i: (-int(off[i].sum() + off[:, i].sum()), -int(C[i].sum()), i)  # noqa: E731
            assert o["submatrix"] and o["classes"] == sorted(range(40), key=key)[:20]
            ix = torch.tensor(o["classes"])
            assert o["confusion"] == C[ix][:, ix].tolist()
            counts = [p["count"] for p in o["confused_pairs"]]
            assert counts == sorted(counts, reverse=True) and sum(counts) == int(C.sum() - C.diag().sum())
            html = client.get("/").text
            assert 'id="class-search"' in html and 'id="pairs"' in html
            assert html.count("<tr data-names=") == min(200, len(counts)) + 40  # pairs table + per-class table
    finally:
        ex.close()
