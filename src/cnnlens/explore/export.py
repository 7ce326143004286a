"""``cnnlens explore --export DIR``: the overview and the galleries of the most confused cells as static pages.

The pages are the app's templates rendered with static links (``cell-R-C-P.html``,
``img/...png``); nothing needs a server. The folder is written to a temporary
directory beside ``DIR`` and renamed into place when complete. An existing ``DIR`` is
replaced only when it is empty or a previous explorer export (it holds the marker file
``.cnnlens-explore-export``); any other folder is refused, never deleted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from .app import HERE, Urls, render_cell, render_overview, templates
from .service import Explorer

MARKER = ".cnnlens-explore-export"


class _StaticUrls(Urls):
    def __init__(self, cells: set[tuple[int, int]]):
        super().__init__(static=True)
        self.cells = cells

    def cell(self, r: int, c: int, page: int = 1, sort=None, order=None):
        return super().cell(r, c, page) if (r, c) in self.cells else None


def check_target(out: Path) -> None:
    """Refuse to replace a file, or a non-empty folder that is not a previous explorer export."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--export {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValueError(f"--export {out} is a non-empty folder that is not a cnnlens explore export; "
                         "give a new or empty folder (it would be replaced)")


def export(explorer: Explorer, out: str | os.PathLike, *, cells: int = 6, max_per_cell: int = 96,
           progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the static overview and the galleries of the ``cells`` most confused cells; returns index.html."""
    out = Path(out).expanduser().resolve()
    check_target(out)
    explorer.wait_ready()
    o = explorer.overview()
    chosen = [(p["true"], p["pred"]) for p in o["confused_pairs"][:cells]]
    urls = _StaticUrls(set(chosen))
    env = templates()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "img").mkdir()
        shutil.copytree(HERE / "static", tmp / "static")
        (tmp / MARKER).write_text("written by cnnlens explore --export; this folder is replaced by the next export\n")
        (tmp / "index.html").write_text(render_overview(env, o, urls), encoding="utf-8")
        pages = []
        for r, c in chosen:
            first = explorer.cell(r, c, 1)
            n_pages = min(first["pages"], max(1, (max_per_cell + explorer.page_size - 1) // explorer.page_size))
            pages += [(r, c, p) for p in range(1, n_pages + 1)]
        for i, (r, c, p) in enumerate(pages):
            cell = explorer.cell(r, c, p)
            if p == n_pages_of(pages, r, c) and cell["pages"] > p:
                cell["pages"] = p  # the export stops here
            for s in cell["samples"]:
                (tmp / "img" / f"sample-{s['ref']}.png").write_bytes(explorer.image_png(s["ref"]))
                a = s["true"] if s["true"] != s["pred"] else s["second"]
                (tmp / "img" / f"pair-{s['ref']}-{a}-{s['pred']}.png").write_bytes(explorer.pair_png(s["ref"], a,
                                                                                                     s["pred"]))
            (tmp / f"cell-{r}-{c}-{p}.html").write_text(render_cell(env, cell, urls, explorer.class_names),
                                                        encoding="utf-8")
            if progress is not None:
                progress(i + 1, len(pages))
        old = None
        if out.exists():
            check_target(out)
            old = out.parent / f".{out.name}.old-{os.getpid()}-{int(time.time() * 1e6)}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def n_pages_of(pages: list[tuple[int, int, int]], r: int, c: int) -> int:
    return max(p for rr, cc, p in pages if (rr, cc) == (r, c))
