"""`cnnlens layers`: the dotted layer names of a model with their output shapes (one dry forward)."""

from __future__ import annotations

from .common import (
    UserError,
    app,
    model_options,
    print_table,
)
from .options import Device, Model, Pretrained, TrustPickle, Weights
from .session import open_model

# Imported late, inside functions: torch, cnnlens.tap (imports torch), rich.table (≈7 ms). `cnnlens --help` imports
# this module, and torch alone would add ≈2 s to it.


def _shape(v) -> str:
    import torch

    if torch.is_tensor(v):
        return "×".join(str(d) for d in v.shape)
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_shape(u) for u in v) + ")"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_shape(u)}" for k, u in v.items()) + "}"
    return type(v).__name__


def layer_table(model, x) -> list[dict]:
    """One row per module (``named_modules`` order): name, type, output shape, own parameters, calls.

    Runs one forward on ``x`` under :class:`~cnnlens.tap.LayerTap` (hooks removed,
    flags restored). A module that never runs has shape ``—`` and 0 calls.
    """
    import torch

    from ..tap import LayerTap

    mods = {n: m for n, m in model.named_modules() if n}
    seen: dict[str, dict] = {}

    def recorder(name):
        def edit(module, inputs, output):
            row = seen.get(name)
            if row is None:
                seen[name] = {
                    "name": name,
                    "type": type(module).__name__,
                    "shape": _shape(output),
                    "calls": 1,
                    "params": sum(p.numel() for p in module.parameters(recurse=False)),
                }
            else:
                row["calls"] += 1
            return output

        return edit

    with LayerTap(model, edits={n: recorder(n) for n in mods}, detach=True) as tap, torch.no_grad():
        tap.run(x)
    return [
        seen.get(n)
        or {
            "name": n,
            "type": type(m).__name__,
            "shape": "—",
            "calls": 0,
            "params": sum(p.numel() for p in m.parameters(recurse=False)),
        }
        for n, m in mods.items()
    ]


@app.command()
@model_options
def layers(
    *,
    model: Model,
    weights: Weights = None,
    pretrained: Pretrained = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
) -> None:
    """List the model's dotted layer names with their output shapes (for --layer options)."""
    import torch
    from rich.table import Table

    m = open_model(model, weights, pretrained, trust_pickle, device).model
    spec = getattr(m, "spec", None)
    if spec is not None:  # --input-size / --channels set the spec
        c, (h, w) = spec.channels, spec.input_size
    else:
        raise UserError("the model has no spec with its input size; give --input-size C,H,W")
    p = next(m.parameters(), None)
    x = torch.zeros(1, c, h, w, device=p.device if p is not None else "cpu")
    rows = layer_table(m, x)
    marks: dict[str, list[str]] = {}
    if spec is not None:
        for label, name in (
            ("last spatial", spec.last_spatial_layer),
            ("classifier", spec.classifier),
            ("pooled (CAM)", spec.pooled_layer),
        ):
            if name:
                marks.setdefault(name, []).append(label)
    t = Table(title=f"{model}: layers (dry run on 1×{c}×{h}×{w})", title_justify="left")
    widest = max((len(r["name"]) for r in rows), default=5)
    t.add_column("layer", min_width=widest)
    t.add_column("type")
    t.add_column("output")
    t.add_column("params", justify="right")
    t.add_column("note")
    for r in rows:
        note = marks.get(r["name"], [])
        if r["calls"] > 1:
            note = [*note, f"runs {r['calls']}× (cannot be tapped)"]
        elif r["calls"] == 0:
            note = [*note, "not run by forward()"]
        t.add_row(r["name"], r["type"], r["shape"], f"{r['params']:,}" if r["params"] else "", ", ".join(note))
    print_table(t)
