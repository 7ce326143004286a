#!/usr/bin/env python3
"""Print the import circles of a package (default ``src/cnnlens``); exit 1 if there is one.

Only imports that run when a module is imported count (module level, also inside ``try``/``if`` at module
level, but not under ``if TYPE_CHECKING:``): an import inside a function — a result's ``figure()`` reaching
its drawing, a light CLI entry point — runs late and does not make a circle at import time.
``--late`` also counts the imports inside functions (arrows that point up show as circles there).
``--edges`` prints every arrow. Standard library only.

    python tools/import_graph.py              # no output and exit 0: no circle
    python tools/import_graph.py --late       # the circles with late imports too
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.Module, late: bool):
    """The import statements of a module: module level (recursing into if/try/with), and with ``late`` also
    those inside functions and classes."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _type_checking(node):
            continue
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not late:
            continue
        else:
            stack.extend(ast.iter_child_nodes(node))


def resolve(node: ast.AST, here: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules an import statement loads (``from . import x`` loads the package and ``x``)."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for a in node.names:
            parts = a.name.split(".")
            out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
        return out
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = here.split(".") if is_package else here.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    parts = mod.split(".")
    out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
    for a in node.names:
        if f"{mod}.{a.name}" in known:
            out.add(f"{mod}.{a.name}")
    return out


def graph(root: Path, late: bool = False) -> dict[str, set[str]]:
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in imports(tree, late):
            targets |= resolve(node, name, is_package, known)
        # importing a module first imports its packages: an arrow from a module to its own package is no circle
        edges[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="src/cnnlens", help="the package's folder")
    ap.add_argument("--late", action="store_true", help="also count imports inside functions")
    ap.add_argument("--edges", action="store_true", help="print every arrow")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if not (root / "__init__.py").is_file():
        print(f"{root} is not a package folder (no __init__.py); give e.g. src/cnnlens", file=sys.stderr)
        return 2
    edges = graph(root, late=args.late)
    if args.edges:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{a} -> {b}")
    found = cycles(edges)
    for comp in found:
        print("circle: " + " <-> ".join(comp))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
