#!/usr/bin/env python3
"""Numbers that keep the code in shape: the longest functions, ``_private`` names imported across modules,
imports inside functions, and the lines of chosen files. Standard library only.

    python tools/code_stats.py                       # src/cnnlens
    python tools/code_stats.py --top 5 --lines src/cnnlens/cli/explain.py
    python tools/code_stats.py --max-lines 80        # exit 1 listing each function over 80 lines without a reason

A function's lines are those of its whole ``def`` (decorators left out, docstring and nested functions in).
With ``--max-lines``, a function over the limit passes only if its docstring has a sentence starting
"Long because" (why it reads best whole).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REASON = "Long because"


def functions(tree: ast.AST, path: Path, with_node: bool = False):
    """(lines, qualified name, path) of every function, nested ones included (and the node, ``with_node``)."""

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                n = child.end_lineno - child.lineno + 1
                yield (n, name, path, child) if with_node else (n, name, path)
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


def too_long(root: Path, max_lines: int, skip: list[str]) -> list[str]:
    """``path:line: name is N lines`` for each function over ``max_lines`` whose docstring gives no reason
    (no sentence starting "Long because"), in files outside the ``skip`` folders."""
    skipped = [Path(s).resolve() for s in skip]
    out = []
    for path in sorted(root.rglob("*.py")):
        if any(path.resolve().is_relative_to(s) for s in skipped):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for n, name, _, node in functions(tree, path, with_node=True):
            if n > max_lines and REASON not in " ".join((ast.get_docstring(node) or "").split()):
                out.append(f"{path}:{node.lineno}: {name} is {n} lines (over {max_lines}; split it, or say why not")
                out[-1] += f' in its docstring: "{REASON} …")'
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="src/cnnlens")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument(
        "--lines",
        nargs="*",
        default=["src/cnnlens/cli/explain.py", "src/cnnlens/explore/app.py", "src/cnnlens/explore/service.py"],
    )
    ap.add_argument(
        "--max-lines",
        type=int,
        metavar="N",
        help='only check: exit 1 listing each function over N lines without a "Long because" reason in its docstring',
    )
    ap.add_argument("--skip", action="append", default=[], metavar="DIR", help="a folder --max-lines leaves out")
    args = ap.parse_args(argv)
    if args.max_lines is not None:
        found = too_long(Path(args.root), args.max_lines, args.skip)
        for line in found:
            print(line)
        return 1 if found else 0
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
