#!/usr/bin/env python3
"""Numbers that keep the code in shape: the longest functions, ``_private`` names imported across modules,
imports inside functions, and the lines of chosen files. Standard library only.

    python tools/code_stats.py                       # src/cnnlens
    python tools/code_stats.py --top 5 --lines src/cnnlens/cli/explain.py
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def functions(tree: ast.AST, path: Path):
    """(lines, qualified name, path) of every function, nested ones included."""

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield child.end_lineno - child.lineno + 1, name, path
                yield from walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def private_imports(tree: ast.AST):
    """``from x import _name`` of a module's private name (``__future__`` and dunders left out)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    yield f"{'.' * node.level}{node.module or ''}:{a.name}"


def late_imports(tree: ast.AST) -> int:
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n += sum(isinstance(c, (ast.Import, ast.ImportFrom)) for c in node.body)
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="src/cnnlens")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument(
        "--lines",
        nargs="*",
        default=["src/cnnlens/cli/explain.py", "src/cnnlens/explore/app.py", "src/cnnlens/explore/service.py"],
    )
    args = ap.parse_args(argv)
    fns, priv, late, total = [], [], 0, 0
    for path in sorted(Path(args.root).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        total += text.count("\n")
        tree = ast.parse(text)
        fns += functions(tree, path)
        priv += [(str(path), p) for p in private_imports(tree)]
        late += late_imports(tree)
    print(f"{total} lines in {args.root}")
    print(f"longest functions (of {len(fns)}; {sum(n > 80 for n, _, _ in fns)} over 80 lines):")
    for n, name, path in sorted(fns, key=lambda f: -f[0])[: args.top]:
        print(f"  {n:4d}  {path}:{name}")
    print(f"private names imported across modules: {len(priv)} in {len({f for f, _ in priv})} files")
    print(f"import statements directly inside functions: {late}")
    for f in args.lines:
        p = Path(f)
        print(f"  {p.read_text(encoding='utf-8').count(chr(10)) if p.exists() else '-':>5}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
