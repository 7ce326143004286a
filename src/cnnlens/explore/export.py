"""``cnnlens explore --export DIR``: the overview and the galleries of the most confused cells as static pages.

The pages are the app's templates rendered with static links (``cell-R-C-P.html``,
``img/...png``); nothing needs a server. The folder is written atomically, as the
report is (:func:`cnnlens.report.write_atomically`): an existing ``DIR`` is replaced
only when it is empty or a previous cnnlens output holding nothing else; any other
folder is refused (unless ``force``), never deleted, and the current directory, home
and a folder holding an input never replaced.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..report import check_out_dir, write_atomically
from .app import HERE
from .render import Urls, render_cell, render_overview, templates
from .service import Explorer


class _StaticUrls(Urls):
    def __init__(self, cells: set[tuple[int, int]]):
        super().__init__(static=True)
        self.cells = cells

    def cell(self, r: int, c: int, page: int = 1, sort=None, order=None):
        return super().cell(r, c, page) if (r, c) in self.cells else None


def export(
    explorer: Explorer,
    out: str | os.PathLike,
    *,
    cells: int = 6,
    max_per_cell: int = 96,
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    protect: tuple = (),
) -> Path:
    """Write the static overview and the galleries of the ``cells`` most confused cells; returns index.html."""
    check_out_dir(out, force=force, protect=protect)  # before the wait for the scan
    explorer.wait_ready()
    o = explorer.overview()
    chosen = [(p["true"], p["pred"]) for p in o["confused_pairs"][:cells]]
    urls = _StaticUrls(set(chosen))
    env = templates()

    def build(tmp: Path) -> None:
        (tmp / "img").mkdir()
        shutil.copytree(HERE / "static", tmp / "static")
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
                (tmp / "img" / f"pair-{s['ref']}-{a}-{s['pred']}.png").write_bytes(
                    explorer.pair_png(s["ref"], a, s["pred"])
                )
            (tmp / f"cell-{r}-{c}-{p}.html").write_text(
                render_cell(env, cell, urls, explorer.class_names), encoding="utf-8"
            )
            if progress is not None:
                progress(i + 1, len(pages))

    return write_atomically(out, build, force=force, protect=protect) / "index.html"


def n_pages_of(pages: list[tuple[int, int, int]], r: int, c: int) -> int:
    return max(p for rr, cc, p in pages if (rr, cc) == (r, c))
