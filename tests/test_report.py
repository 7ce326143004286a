"""The HTML report: content, atomic writes, and a real browser."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from browser import check_page
from PIL import Image

from cnnlens.report import Report


def _report(title="t"):
    rep = Report(title)
    sec = rep.section(
        "Evaluation",
        intro="<p>What a <code>confusion</code> matrix shows.</p>",
        settings={"model": "digits-cnn", "topk": [1, 3], "eps": [0.0, 8 / 255], "fill": {"value": 0.5}},
    )
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


def test_rewrite_replaces_a_previous_report_but_not_files_added_to_it(tmp_path):
    out = tmp_path / "rep"
    _report("first").write(out)
    _report("second").write(out)  # a previous report and nothing else: replaced
    assert "second" in (out / "index.html").read_text()
    (out / "stale.png").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"previous cnnlens output plus other files \(stale.png\).*--force"):
        _report("third").write(out)
    assert (out / "stale.png").read_bytes() == b"x" and "second" in (out / "index.html").read_text()
    _report("third").write(out, force=True)
    assert not (out / "stale.png").exists() and "third" in (out / "index.html").read_text()


def _user_files(folder):
    files = {"notes.txt": b"my notes\n", "chelsea.jpg": bytes(range(256)) * 4, "sub/deep.csv": b"a,b\n1,2\n"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def _assert_files(folder, files):
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, rel


def test_a_folder_with_user_files_is_refused_and_left_byte_for_byte(tmp_path):
    out = tmp_path / "precious"
    files = _user_files(out)
    with pytest.raises(ValueError, match=r"holds files that are not a cnnlens output \(chelsea.jpg, notes.txt, sub\)"):
        _report().write(out)
    _assert_files(out, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # no temporary left behind
    # a manifest of someone else's is not a cnnlens output
    (out / ".cnnlens.json").write_text('{"files": []}')
    with pytest.raises(ValueError, match="not a cnnlens output"):
        _report().write(out)
    _assert_files(out, files)


def test_an_empty_folder_is_used_and_gets_the_usual_permissions(tmp_path):
    import os
    import stat

    out = tmp_path / "empty"
    out.mkdir()
    old = os.umask(0o022)
    try:
        _report().write(out)
    finally:
        os.umask(old)
    assert (out / "index.html").exists()
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0700


def test_cwd_home_and_folders_holding_an_input_are_never_replaced_even_with_force(tmp_path, monkeypatch):
    work = tmp_path / "work"
    files = _user_files(work)
    monkeypatch.chdir(work)
    for target in (".", str(work), str(tmp_path)):
        for force in (False, True):
            with pytest.raises(
                ValueError,
                match="the current directory, which a report must never replace|"
                "a folder that holds the current directory",
            ):
                _report().write(target, force=force)
    _assert_files(work, files)
    home = tmp_path / "home"
    home_files = _user_files(home)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ValueError, match="your home directory"):
        _report().write("~", force=True)
    _assert_files(home, home_files)
    monkeypatch.chdir(tmp_path / "home")
    for force in (False, True):
        with pytest.raises(ValueError, match="a folder that holds the input .*sub/deep.csv"):
            _report().write(work / "sub", force=force, protect=(work / "sub" / "deep.csv",))
        with pytest.raises(ValueError, match="is the input"):
            _report().write(work / "sub", force=force, protect=(work / "sub",))
    _assert_files(work, files)
    # a folder beside the inputs is fine
    _report().write(work / "report", protect=(work / "sub" / "deep.csv",))
    _assert_files(work, files)


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
