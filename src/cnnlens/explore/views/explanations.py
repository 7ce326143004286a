"""Views of an attribution method on a sample: its job's state (polled by the sample page) and its drawing."""

from __future__ import annotations

from . import Context


def method(ex, p) -> Context:
    target = p.get("target", "predicted")
    out = ex.explanations.method(p["ref"], p["method"], target)
    if out.get("status") == "done":
        out["png"] = f"/img/sample/{out['ref']}/method/{out['method']}.png?target={target}"
    return Context(out)


def method_png(ex, p) -> bytes:
    return ex.explanations.method_png(p["ref"], p["method"], p.get("target", "predicted"))
