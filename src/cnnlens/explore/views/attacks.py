"""Views of the attack on a sample (toward the second class, or ``away``): its job's state and its drawing."""

from __future__ import annotations

from . import Context


def attack(ex, p) -> Context:
    out = ex.attacks.attack(p["ref"], p["toward"])
    if out.get("status") == "done":
        out["png"] = f"/img/sample/{out['ref']}/attack/{out['target']}.png"
    return Context(out)


def attack_png(ex, p) -> bytes:
    return ex.attacks.attack_png(p["ref"], p["toward"])
