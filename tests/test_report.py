"""The HTML report: content, atomic writes, and a real browser."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from PIL import Image

from cnnlens.report import Report
from browser import check_page


def _report(title="t"):
    rep = Report(title)
    sec = rep.section("Evaluation", intro="<p>What a <code>confusion</code> matrix shows.</p>",
                      settings={"model": "digits-cnn", "topk": [1, 3], "eps": [0.0, 8 / 255], "fill": {"value": 0.5}})
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    sec.figure(fig, "a line")
    sec.gallery([(Image.new("RGB", (8, 8), (255, 0, 0)), "red"), (Image.new("L", (8, 8), 128), "grey")], "two")
    sec.table([["0", 0.98765], ["1", 1.0]], header=["class", "recall"])
    sec.data("accuracy", 0.5)
    return rep


def test_report_writes_page_images_and_results(tmp_path):
    index = _report().write(tmp_path / "rep")
    html = index.read_text()
    assert "What a <code>confusion</code> matrix shows." in html
    assert "<th>model</th><td>digits-cnn</td>" in html
    # settings read as a person writes them; results.json keeps the exact values
    assert "<th>topk</th><td>1, 3</td>" in html and "<th>eps</th><td>0, 0.03137</td>" in html
    assert "<th>fill</th><td>value=0.5</td>" in html
    assert "0.9877" in html  # floats rounded to 4 significant digits
    imgs = sorted(p.name for p in (tmp_path / "rep" / "images").iterdir())
    assert len(imgs) == 3 and all(Image.open(tmp_path / "rep" / "images" / n).size[0] > 0 for n in imgs)
    res = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert res["sections"]["Evaluation"]["accuracy"] == 0.5
    assert res["sections"]["Evaluation"]["settings"]["topk"] == [1, 3]
    assert res["sections"]["Evaluation"]["settings"]["eps"] == [0.0, 8 / 255]


def test_failed_write_leaves_the_previous_report(tmp_path, monkeypatch):
    out = tmp_path / "rep"
    _report("good").write(out)
    good = (out / "index.html").read_text()
    rep = _report("bad")
    monkeypatch.setattr(Report, "render_html", lambda self: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        rep.write(out)
    assert (out / "index.html").read_text() == good
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temporary left behind


def test_rewrite_replaces_whole_directory(tmp_path):
    out = tmp_path / "rep"
    _report().write(out)
    (out / "stale.png").write_bytes(b"x")
    _report().write(out)
    assert not (out / "stale.png").exists()


def test_out_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    with pytest.raises(ValueError, match="is a file; give a directory"):
        _report().write(f)
    assert f.read_text() == "keep me"


@pytest.mark.browser
def test_report_opens_in_a_real_browser(tmp_path):
    index = _report().write(tmp_path / "rep")
    info = check_page(index)
    assert info["images"] == 3 and info["broken"] == []
    assert info["console_errors"] == []
    assert info["external"] == []
    assert info["sections"] == ["Evaluation"]
