"""The explorer's HTML: the Jinja environment, the links (live or static), the confusion matrix's colours.

The live app (:mod:`~cnnlens.explore.app`) and the static export (:mod:`~cnnlens.explore.export`) render the same
templates; only their :class:`Urls` differ.
"""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, select_autoescape


def templates() -> Environment:
    env = Environment(
        loader=PackageLoader("cnnlens.explore", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * float(v):.1f} %"
    env.filters["f3"] = lambda v: "–" if v is None else f"{float(v):.3f}"
    return env


class Urls:
    """Links of the live app, or of a static export (``static=True``: files next to each other, no samples)."""

    def __init__(self, static: bool = False):
        self.static = static

    def home(self) -> str:
        return "index.html" if self.static else "/"

    def asset(self, name: str) -> str:
        return f"static/{name}" if self.static else f"/static/{name}"

    def cell(self, r: int, c: int, page: int = 1, sort: str | None = None, order: str | None = None) -> str | None:
        if self.static:
            return f"cell-{r}-{c}-{page}.html"
        q = [f"page={page}"] if page != 1 else []
        if sort:
            q.append(f"sort={sort}")
        if order:
            q.append(f"order={order}")
        return f"/cell/{r}/{c}" + ("?" + "&".join(q) if q else "")

    def sample(self, ref: str) -> str | None:
        return None if self.static else f"/sample/{ref}"

    def image(self, ref: str) -> str:
        return f"img/sample-{ref}.png" if self.static else f"/img/sample/{ref}.png"

    def pair(self, ref: str, a: int, b: int) -> str:
        return f"img/pair-{ref}-{a}-{b}.png" if self.static else f"/img/sample/{ref}/pair.png?a={a}&b={b}"


BLUE, ORANGE = (33, 102, 172), (214, 96, 77)


def colour(v: float, rgb: tuple[int, int, int] = BLUE) -> str:
    """A white → ``rgb`` background for a value in [0, 1] (the matrix cells)."""
    v = max(0.0, min(1.0, float(v)))
    r, g, b = (round(255 + (a - 255) * v) for a in rgb)
    return f"rgb({r},{g},{b})"


def matrix_cells(o: dict) -> list[list[dict]]:
    """The overview's matrix cells with their colours: the diagonal in blue, the confusions in red, each on its own
    scale (the largest diagonal / off-diagonal value is full colour; any confusion gets at least a light tint)."""
    raw, norm = o["confusion"], o["confusion_normalized"]
    m = len(raw)
    scale = {}
    for key, M in (("raw", raw), ("norm", norm)):
        diag = max([M[i][i] for i in range(m)] + [1e-12])
        off = max([M[i][j] for i in range(m) for j in range(m) if i != j] + [1e-12])
        scale[key] = (diag, off)

    def bg(key, v, i, j):
        if v == 0:
            return "rgb(255,255,255)"
        diag, off = scale[key]
        return colour(v / diag) if i == j else colour(0.15 + 0.85 * v / off, ORANGE)

    return [
        [
            {"raw": v, "norm": norm[i][j], "bg_raw": bg("raw", v, i, j), "bg_norm": bg("norm", norm[i][j], i, j)}
            for j, v in enumerate(row)
        ]
        for i, row in enumerate(raw)
    ]


def render_overview(env: Environment, o: dict, urls: Urls) -> str:
    """The overview page of the explorer's :meth:`overview` ``o``."""
    return env.get_template("overview.html.j2").render(o=o, cells=matrix_cells(o), urls=urls, title="overview")


def render_cell(env: Environment, cell: dict, urls: Urls, names) -> str:
    """A cell's gallery page of the explorer's :meth:`cell` ``cell``."""
    return env.get_template("cell.html.j2").render(
        c=cell, urls=urls, title=f"{cell['true_name']} → {cell['pred_name']}", names=names
    )
