"""tools/import_graph.py: finds import circles (CI fails on one) and finds none in src/cnnlens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "import_graph.py"


def run(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_no_circle_in_cnnlens_also_counting_late_imports():
    out = run("src/cnnlens", "--late")
    assert out.returncode == 0 and out.stdout == "", out.stdout


def test_a_circle_is_found_and_a_late_import_is_not_one(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "a.py").write_text("from .sub.b import f\n")
    (pkg / "sub" / "b.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    from .. import c\ndef f():\n    from ..a import g\n"
    )
    (pkg / "c.py").write_text("from .sub import b\n")
    assert run(pkg).returncode == 0  # b → a only inside a function; b → c only for the type checker
    out = run(pkg, "--late")
    assert out.returncode == 1 and out.stdout.strip() == "circle: pkg.a <-> pkg.sub <-> pkg.sub.b"
    (pkg / "c.py").write_text("try:\n    from .sub.b import f\nexcept ImportError:\n    pass\n")
    (pkg / "sub" / "b.py").write_text("from ..c import f\n")
    out = run(pkg)
    assert out.returncode == 1 and out.stdout.strip() == "circle: pkg.c <-> pkg.sub <-> pkg.sub.b"
    edges = run(pkg, "--edges").stdout
    assert "pkg.a -> pkg.sub.b" in edges and "pkg.sub -> pkg.sub.b" in edges


def test_every_import_resolves_also_inside_functions(tmp_path):
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    ok = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_imports.py")], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert ok.returncode == 0, ok.stdout
    pkg = tmp_path / "pk"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .gone import g\n    from os import not_there\n")
    bad = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_imports.py"), str(pkg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        f"{pkg / 'a.py'}:2: no module pk.gone (No module named 'pk.gone')",
        f"{pkg / 'a.py'}:3: os has no not_there",
    ]


def test_contributing_layout_table_matches_the_tree(tmp_path):
    layout = [sys.executable, str(ROOT / "tools" / "check_layout.py")]
    ok = subprocess.run(layout, capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and ok.stdout == "", ok.stdout
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "b.py", "sub/__init__.py", "sub/c.py"):
        (pkg / f).write_text("")
    doc = tmp_path / "C.md"
    doc.write_text(
        "Layout:\n\n| layer | module | what |\n| --- | --- | --- |\n| core | `a.py`, `gone.py` | a |\n"
        f"| core | `sub/c.py` | {'x' * 200} |\n| core | `b.py` |\n\nAfter the table: `b.py`.\n"
    )
    bad = subprocess.run([*layout, pkg, "--contributing", doc], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        f"{doc}:5: `gone.py` is not in {pkg}",
        f"{doc}:6: a row is one line of at most 160 characters (this one 224)",
        f"{doc}:7: a row has three cells (layer | module | what), this one 2",
        f"{doc}: the layout table does not name the module `b.py` of {pkg}",
    ]


def test_a_long_function_needs_a_reason_in_its_docstring(tmp_path):
    stats = [sys.executable, str(ROOT / "tools" / "code_stats.py")]
    pkg = tmp_path / "pkg"
    (pkg / "skipped").mkdir(parents=True)
    body = "".join(f"    x{i} = {i}\n" for i in range(6))
    (pkg / "a.py").write_text(f'def short():\n    """Fine."""\n\n\ndef long():\n    """Too long."""\n{body}')
    (pkg / "b.py").write_text(f'def whole():\n    """One loop. Long because\n    it reads best whole."""\n{body}')
    (pkg / "skipped" / "c.py").write_text(f"def other():\n{body}")
    out = subprocess.run([*stats, pkg, "--max-lines", "5", "--skip", pkg / "skipped"], capture_output=True, text=True)
    why = 'split it, or say why not in its docstring: "Long because …"'
    assert out.returncode == 1 and out.stdout.splitlines() == [f"{pkg / 'a.py'}:5: long is 8 lines (over 5; {why})"]
    ok = subprocess.run([*stats, pkg, "--max-lines", "8", "--skip", pkg / "skipped"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == ""
