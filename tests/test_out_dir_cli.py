"""`--out` never loses a user's files: the cases of the data-loss report, run through the CLI."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")


def _photo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    return path.read_bytes()


def _explain(run_cli, image, out, *more):
    return run_cli("explain", image, "--model", "digits-cnn", "--methods", "saliency", "--out", out, *more)


def test_explain_refuses_a_folder_with_the_users_files_and_leaves_them(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo = _photo(tmp_path / "photos" / "chelsea.png")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_bytes(b"do not lose me\n")
    (precious / "chelsea.png").write_bytes(photo)
    code, cap = _explain(run_cli, "photos/chelsea.png", "precious")
    assert code == 2
    assert "holds files that are not a cnnlens output (chelsea.png, notes.txt)" in cap.err and "--force" in cap.err
    assert sorted(p.name for p in precious.iterdir()) == ["chelsea.png", "notes.txt"]
    assert (precious / "notes.txt").read_bytes() == b"do not lose me\n" and (
        precious / "chelsea.png"
    ).read_bytes() == photo
    # a second run over its own report is fine; --force replaces the folder whole
    code, _ = _explain(run_cli, "photos/chelsea.png", "fresh")
    assert code == 0 and (tmp_path / "fresh" / "index.html").exists()
    code, _ = _explain(run_cli, "photos/chelsea.png", "fresh")
    assert code == 0
    code, _ = _explain(run_cli, "photos/chelsea.png", "precious", "--force")
    assert code == 0 and not (precious / "notes.txt").exists() and (precious / "index.html").exists()


@pytest.mark.parametrize("out", [".", "sub", "..", "~"])
def test_explain_never_replaces_cwd_an_input_folder_or_home_even_with_force(tmp_path, run_cli, monkeypatch, out):
    home = tmp_path / "home"
    work = home / "work"
    photo = _photo(work / "sub" / "chelsea.png")
    (work / "notes.txt").write_bytes(b"mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    code, cap = _explain(run_cli, "sub/chelsea.png", out, "--force")
    assert code == 2 and "which a report must never replace" in cap.err
    assert (work / "sub" / "chelsea.png").read_bytes() == photo and (work / "notes.txt").read_bytes() == b"mine"
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "sub"]


def test_a_glob_input_protects_its_folder(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo = _photo(tmp_path / "photos" / "a.png")
    code, cap = _explain(run_cli, "photos/*.png", "photos", "--force")
    assert code == 2 and "the input photos" in cap.err
    assert (tmp_path / "photos" / "a.png").read_bytes() == photo


def test_the_report_folder_gets_the_users_permissions(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "a.png")
    old = os.umask(0o002)
    try:
        code, _ = _explain(run_cli, "a.png", "rep")
    finally:
        os.umask(old)
    assert code == 0 and stat.S_IMODE((tmp_path / "rep").stat().st_mode) == 0o775
