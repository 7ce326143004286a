"""Views of the samples area: the overview, the confusion matrix downloads, a cell's gallery, a sample, images."""

from __future__ import annotations

from ..explanations import ACTIONS, SETTINGS
from ..render import matrix_cells
from . import Context


def status(ex, p) -> Context:
    return Context(ex.status())


def overview(ex, p) -> Context:
    o = ex.samples.overview()
    return Context(o, "overview.html.j2", "overview", "o", extra=lambda: {"cells": matrix_cells(o)})


def confusion_json(ex, p) -> Context:
    headers = {"Content-Disposition": 'attachment; filename="confusion.json"'}
    return Context(ex.samples.confusion_table(), headers=headers)


def confusion_csv(ex, p) -> str:
    return ex.samples.confusion_csv()


def cell(ex, p) -> Context:
    c = ex.samples.cell(p["r"], p["c"], p.get("page", "1"), p.get("sort", "confidence"), p.get("order"))
    title = f"{c['true_name']} → {c['pred_name']}"
    return Context(c, "cell.html.j2", title, "c", extra=lambda: {"names": ex.class_names})


def sample(ex, p) -> Context:
    s = ex.samples.sample(p["ref"])
    extra = lambda: {  # noqa: E731
        "actions": ACTIONS,
        "names": ex.class_names,
        "settings": SETTINGS,
        "unit_layers": ex.units.unit_layers(),
    }
    return Context(s, "sample.html.j2", f"sample {s['ref']}", "s", extra=extra)


def image(ex, p) -> bytes:
    return ex.samples.image_png(p["ref"])


def pair(ex, p) -> bytes:
    return ex.samples.pair_png(p["ref"], p.get("a"), p.get("b"))


def favicon(ex, p) -> None:
    return None
