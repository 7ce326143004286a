"""Result values: frozen records that know how to save themselves.

Every method returns one value. Tensors stay tensors (on CPU, detached);
``to_dict()`` gives a JSON-ready summary and ``save(dir)`` writes JSON plus the
tensors as ``.pt``; ``Explanation.figure(x)`` draws the maps over their images.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch


def jsonable(v: Any, max_elems: int = 4096) -> Any:
    """Convert tensors, numpy values, dataclasses and paths to plain JSON values.

    Large tensors become a summary ({shape, dtype}) so JSON stays small; non-finite
    floats become None.
    """
    import numpy as np

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
        raise ValueError(f"figure() needs the {n} {what} images as N×C×H×W of size {hw}, got {got}; "
                         f"pass the x you {what}")
    return images.detach().float().cpu(), (list(names) if names is not None else [f"#{i}" for i in range(n)])


class Result:
    """Mixin for result dataclasses: ``to_dict``, ``save``."""

    def to_dict(self) -> dict:
        return jsonable(self)

    def save(self, directory: str | Path, stem: str | None = None) -> Path:
        """Write ``<stem>.json`` (summary) and ``<stem>.pt`` (tensors) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        stem = stem or type(self).__name__.lower()
        (d / f"{stem}.json").write_text(json.dumps(self.to_dict(), indent=2))
        tensors = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if torch.is_tensor(getattr(self, f.name))}
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

    def figure(self, images: torch.Tensor, names: Sequence[str] | None = None,
               class_names: Sequence[str] | None = None):
        """A matplotlib figure: each map over its image (N×C×H×W in [0, 1]) with a colour bar,
        the explained class in the title; occlusion adds its probability map below.

        Signed maps (CAM, occlusion, gradient × input, IG) use a red–blue scale centred at 0;
        pixel-gradient maps are shown clipped at the 99.5th percentile of |value| (``maps`` is not).

        >>> e = cnnlens.attribution.gradcam(model, x)                        # doctest: +SKIP
        >>> e.figure(x, class_names=model.spec.class_names).savefig("gradcam.png")  # doctest: +SKIP
        """
        from .attribution.report import method_figure

        images, names = figure_inputs(images, names, len(self), tuple(self.maps.shape[-2:]), "explained")
        extra = "probability" if "probability" in self.extras else None
        return method_figure(images, names, self, class_names=class_names, extra=extra)

    def normalized(self) -> torch.Tensor:
        """Maps scaled to [0, 1] per sample (an all-zero map stays zero, never NaN)."""
        m = self.maps.float()
        flat = m.reshape(m.shape[0], -1)
        lo = flat.min(1, keepdim=True).values
        hi = flat.max(1, keepdim=True).values
        span = (hi - lo)
        out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
        return out.view_as(m)
