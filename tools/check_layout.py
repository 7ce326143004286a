#!/usr/bin/env python3
"""Check that CONTRIBUTING.md's layout table matches the tree of ``src/cnnlens``; exit 1 listing what does not.

The table is the first Markdown table after the line starting "Layout"; its second column names modules in
backticks, relative to ``src/cnnlens`` (``tap.py``, ``models/``, ``attribution/report.py``, ``templates/``).

- every module and package directly under ``src/cnnlens`` (``__init__.py`` and ``__main__.py`` aside) is named
  by some row (a package also by one of its files, ``cli/common.py``);
- every name in the module column exists;
- each row is one line: three cells, at most ``MAX_ROW`` characters, no ``<br>``.

Standard library only.

    python tools/check_layout.py                     # no output and exit 0: the table matches
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

MAX_ROW = 160


def layout_rows(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each body row of the layout table (header and separator left out)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Layout")), None)
    if start is None:
        return []
    rows: list[tuple[int, str]] = []
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.startswith("|"):
            rows.append((i + 1, line))
        elif rows:
            break
    return rows[2:]  # the header and the | --- | line


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def check(root: Path, contributing: Path) -> list[str]:
    rows = layout_rows(contributing.read_text(encoding="utf-8"))
    if not rows:
        return [f"{contributing}: no layout table (a Markdown table after a line starting 'Layout')"]
    problems: list[str] = []
    named: set[str] = set()
    for lineno, row in rows:
        where = f"{contributing}:{lineno}"
        parts = cells(row)
        if len(parts) != 3:
            problems.append(f"{where}: a row has three cells (layer | module | what), this one {len(parts)}")
            continue
        if len(row) > MAX_ROW or "<br" in row:
            problems.append(f"{where}: a row is one line of at most {MAX_ROW} characters (this one {len(row)})")
        for name in re.findall(r"`([^`]+)`", parts[1]):
            named.add(name.rstrip("/"))
            path = root / name
            if not (path.is_dir() if name.endswith("/") else path.is_file()):
                problems.append(f"{where}: `{name}` is not in {root}")
    tops = {p.name for p in root.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    tops |= {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    for top in sorted(tops):
        if not any(n == top or n.startswith(top + "/") for n in named):
            kind = "package" if (root / top).is_dir() else "module"
            problems.append(f"{contributing}: the layout table does not name the {kind} `{top}` of {root}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="src/cnnlens", help="the package's folder")
    ap.add_argument("--contributing", default="CONTRIBUTING.md", help="the file holding the layout table")
    args = ap.parse_args(argv)
    problems = check(Path(args.root), Path(args.contributing))
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
