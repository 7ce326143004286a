"""Views of the units area: the microscope scan, the layers, a layer, a unit, their images, feature
visualisations and a sample's building blocks."""

from __future__ import annotations

from ..errors import BadRequest, Computing
from . import Context


def microscope(ex, p) -> Context:
    return Context(ex.units.microscope())


def layers(ex, p) -> Context:
    return Context(ex.units.layers(), "layers.html.j2", "units", "o")


def layer(ex, p) -> Context:
    lay = ex.units.layer(p["name"])
    return Context(lay, "layer.html.j2", f"layer {lay['name']}", "layer")


def unit(ex, p) -> Context:
    u = ex.units.unit(p["name"], p["channel"])

    def extra() -> dict:
        """The page waits for the unit's job ("computing", polling its JSON); then shows its layer's row too."""
        if u["status"] == "error":
            raise BadRequest(f"unit {u['layer']}/{u['channel']} failed: {u['error']}", 500)
        if u["status"] != "done":
            msg = f"computing unit {u['layer']}/{u['channel']} ({u['status']})"
            raise Computing(msg, f"/unit/{u['layer']}/{u['channel']}.json")
        row = next(r for r in ex.units.layers()["layers"] if r["name"] == u["layer"])
        return {"layer": row, "names": ex.class_names}

    return Context(u, "unit.html.j2", f"unit {u['layer']}/{u['channel']}", "u", extra=extra)


def unit_png(ex, p) -> bytes:
    return ex.units.unit_png(p["name"], p["channel"], p["what"])


def feature_vis(ex, p) -> Context:
    return Context(ex.features.feature_vis(p["name"], p["channel"]))


def feature_views(ex, p) -> Context:
    return Context(ex.features.feature_views(p["name"], p["channel"]))


def layer_fv(ex, p) -> Context:
    return Context(ex.features.layer_fv(p["name"], p["start"]))


def cancel_layer_fv(ex, p) -> Context:
    if not p["start"]:
        raise BadRequest("cancel with a POST (Content-Type application/json)", 405)
    return Context(ex.features.cancel_layer_fv(p["name"]))


def blocks(ex, p) -> Context:
    layer = p.get("layer")
    if layer is None:
        layer = (ex.units.unit_layers() or [None])[-1]
    return Context(ex.units.blocks(p["ref"], layer))
