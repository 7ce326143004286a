"""Result values: frozen records that know how to save themselves.

Every method returns one value. Tensors stay tensors (on CPU, detached);
``to_dict()`` gives a JSON-ready summary and ``save(dir)`` writes JSON plus the
tensors as ``.pt``; ``Explanation.figure(x)`` draws the maps over their images.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import inspect
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib), in preview() and figure().


def jsonable(v: Any, max_elems: int = 4096) -> Any:
    """Convert tensors, numpy values, dataclasses and paths to plain JSON values.

    Large tensors become a summary ({shape, dtype}) so JSON stays small; non-finite
    floats become None.
    """
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: jsonable(getattr(v, f.name), max_elems) for f in dataclasses.fields(v)}
    if torch.is_tensor(v):
        v = v.detach().cpu()
        if v.numel() > max_elems:
            return {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
        return jsonable(v.tolist() if v.dim() else v.item(), max_elems)
    if isinstance(v, np.ndarray):
        return jsonable(torch.from_numpy(np.ascontiguousarray(v)), max_elems)
    if isinstance(v, np.generic):
        return jsonable(v.item(), max_elems)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): jsonable(x, max_elems) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x, max_elems) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    return repr(v)


def figure_inputs(images: Any, names: Sequence[str] | None, n: int, hw: tuple, what: str):
    """The images a result is drawn over (float, CPU) and their names (``#i`` by default), checked
    against the result: n images of size hw, else a one-line error naming the fix."""
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[0] != n or tuple(images.shape[-2:]) != hw:
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(
            f"figure() needs the {n} {what} images as N×C×H×W of size {hw}, got {got}; pass the x you {what}"
        )
    return images.detach().float().cpu(), (list(names) if names is not None else [f"#{i}" for i in range(n)])


def layer_entry(layers: dict, layer: str, done: str = "scanned") -> Any:
    """``layers[layer]``, or the one entry whose dotted name ends with ``.layer``; else a KeyError naming them."""
    if layer in layers:
        return layers[layer]
    hits = [n for n in layers if n.endswith("." + layer)]
    if len(hits) == 1:
        return layers[hits[0]]
    raise KeyError(f"layer {layer!r} was not {done}; {done}: {', '.join(layers)}")


def describe(v: Any, width: int = 80) -> str:
    """One short line about a value of a result: a tensor's dtype, shape and range, a list's length, a
    dict's keys or items, a nested result's headline (never the numbers of a large tensor)."""
    if torch.is_tensor(v):
        t = v.detach()
        text = f"{str(t.dtype).replace('torch.', '')} {'×'.join(map(str, t.shape)) or 'scalar'}"
        if 0 < t.numel() <= 8 and t.dim() <= 1:
            vals = [round(x, 4) if isinstance(x, float) else x for x in t.reshape(-1).tolist()]
            text += f" {vals if t.dim() else vals[0]}"
        elif t.numel() and t.is_floating_point():
            finite = t[torch.isfinite(t)]
            if finite.numel():
                text += f", range [{float(finite.min()):.3g}, {float(finite.max()):.3g}]"
    elif isinstance(v, Result):
        text = v.headline()
    elif isinstance(v, dict):
        if all(isinstance(x, (str, int, float, bool)) or x is None for x in v.values()):
            text = ", ".join(f"{k}={x:.4g}" if isinstance(x, float) else f"{k}={x!r}" for k, x in v.items()) or "{}"
        else:
            text = f"{len(v)} entries: " + ", ".join(map(str, v))
    elif isinstance(v, (list, tuple)):
        items = ", ".join(repr(x) if isinstance(x, (str, int, float, bool)) else type(x).__name__ for x in v[:6])
        text = f"{type(v).__name__} of {len(v)}" + (f": {items}{', …' if len(v) > 6 else ''}" if v else "")
    else:
        text = repr(v)
    return text if len(text) <= width else text[: width - 1] + "…"


class Result:
    """Mixin for result dataclasses: ``to_dict``, ``save``, a short ``repr`` and a rich display in Jupyter.

    ``repr(result)`` is a few lines (what it is, the shapes, the settings), never a wall of tensor numbers;
    ``_repr_html_`` is the same as a compact table with the result's picture inline (``preview()``).
    """

    # every Result is a dataclass (declared for the type checker, which reads dataclasses.fields(self))
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # @dataclass writes a field-by-field __repr__ unless the class has its own: give it the short one
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = Result.__repr__

    def headline(self) -> str:
        """The first line of the repr: the type and, where it has one, the number of items."""
        try:
            return f"{type(self).__name__} of {len(self)}"  # type: ignore[arg-type]
        except TypeError:
            return type(self).__name__

    def describe_fields(self) -> list[tuple[str, str]]:
        """(field, one-line description) for the repr and the HTML display; empty and None fields left out."""
        out = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None or (isinstance(v, (dict, list, tuple)) and not v):
                continue
            out.append((f.name, describe(v)))
        return out

    def __repr__(self) -> str:
        rows = self.describe_fields()
        lines = [self.headline()] + [f"  {k}: {v}" for k, v in rows[:8]]
        if len(rows) > 8:
            lines.append(f"  … and {len(rows) - 8} more: {', '.join(k for k, _ in rows[8:])}"[:90])
        return "\n".join(lines)

    def preview(self):
        """The picture shown in Jupyter: ``figure()`` where it needs no argument, else None."""
        fig = getattr(self, "figure", None)
        if fig is None:
            return None
        params = inspect.signature(fig).parameters.values()
        if any(p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params):
            return None
        return fig()

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
            f"{html.escape(v)}</td></tr>"
            for k, v in self.describe_fields()
        )
        img = ""
        picture = self.preview()
        if picture is not None:
            buf = io.BytesIO()
            if hasattr(picture, "savefig"):
                picture.savefig(buf, format="png", dpi=72, bbox_inches="tight")
            else:
                picture.save(buf, format="PNG")
            img = (
                f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" '
                f'style="max-width:100%" alt="{html.escape(type(self).__name__)}">'
            )
        return (
            f"<div class='cnnlens-result'><strong>{html.escape(self.headline())}</strong>"
            f"<table>{rows}</table>{img}</div>"
        )

    def to_dict(self) -> dict:
        return jsonable(self)

    def save(self, directory: str | Path, stem: str | None = None) -> Path:
        """Write ``<stem>.json`` (summary) and ``<stem>.pt`` (tensors) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        stem = stem or type(self).__name__.lower()
        (d / f"{stem}.json").write_text(json.dumps(self.to_dict(), indent=2))
        tensors = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if torch.is_tensor(getattr(self, f.name))
        }
        if tensors:
            torch.save(tensors, d / f"{stem}.pt")
        return d / f"{stem}.json"


@dataclasses.dataclass(frozen=True)
class Explanation(Result):
    """What an attribution method returns.

    maps: N×H×W at input resolution (float32, CPU).
    method: the method's name.
    classes: the explained class of each sample (LongTensor N).
    layer: the layer read, where the method reads one.
    settings: the settings that ran.
    raw: the map at its native resolution (CAM grid, occlusion positions), if different.
    extras: method-specific values (e.g. ``probability`` for occlusion,
        ``completeness_gap`` for integrated gradients, ``empty`` flags).
    """

    maps: torch.Tensor
    method: str
    classes: torch.Tensor
    layer: str | None = None
    settings: dict = dataclasses.field(default_factory=dict)
    raw: torch.Tensor | None = None
    extras: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return self.maps.shape[0]

    def headline(self) -> str:
        h, w = self.maps.shape[-2:]
        return (
            f"Explanation: {self.method} of {len(self)} image(s), {h}×{w}"
            + (f", layer {self.layer!r}" if self.layer else "")
            + (f" — ⚠ {self.extras['completeness_note']}" if self.extras.get("complete") is False else "")
        )

    def preview(self):
        """The maps alone (no images are kept), side by side on the method's colour scale (at most 8)."""
        from .viz import heat_strip

        return heat_strip(self.maps[:8], signed=bool((self.maps < 0).any()))

    def figure(
        self, images: torch.Tensor, names: Sequence[str] | None = None, class_names: Sequence[str] | None = None
    ):
        """A matplotlib figure: each map over its image (N×C×H×W in [0, 1]) with a colour bar,
        the explained class in the title; occlusion adds its probability map below.

        Signed maps (CAM, occlusion, gradient × input, IG) use a red–blue scale centred at 0;
        pixel-gradient maps are shown clipped at the 99.5th percentile of |value| (``maps`` is not).

        >>> e = cnnlens.attribution.gradcam(model, x)                        # doctest: +SKIP
        >>> e.figure(x, class_names=model.spec.class_names).savefig("gradcam.png")  # doctest: +SKIP
        """
        from .figures.attribution import method_figure

        images, names = figure_inputs(images, names, len(self), tuple(self.maps.shape[-2:]), "explained")
        extra = "probability" if "probability" in self.extras else None
        return method_figure(images, names, self, class_names=class_names, extra=extra)

    def normalized(self) -> torch.Tensor:
        """Maps scaled to [0, 1] per sample (an all-zero map stays zero, never NaN)."""
        m = self.maps.float()
        flat = m.reshape(m.shape[0], -1)
        lo = flat.min(1, keepdim=True).values
        hi = flat.max(1, keepdim=True).values
        span = hi - lo
        out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
        return out.view_as(m)
