"""The attacks area: the smallest ε that changes a sample's class (``minimal_eps``), a job of its own.

The attack goes to the second class, or (``away``, on a misclassified sample) to the most likely class that is
neither the prediction nor the true class; its drawing and values are cached as ``results/.../<ref>/attack-second``
(or ``attack-away``) ``.png`` and ``.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..attacks import minimal_eps
from ..files import atomic_write
from ..report import png_bytes
from .errors import BadRequest, NotFound
from .samples import Samples
from .workspace import Workspace, scaled

#: where an attack may go: to the second class, or away from both the prediction and the true class
TOWARD = ("second", "away")


class Attacks:
    """Attack a sample in the worker (polled: ``status`` queued → running → done | error), its cached PNG."""

    def __init__(self, ws: Workspace, samples: Samples):
        self.ws, self.samples = ws, samples

    def paths(self, ref: str, toward: str) -> tuple[Path, Path]:
        stem = self.ws.results / ref / f"attack-{toward}"
        return stem.with_suffix(".png"), stem.with_suffix(".json")

    def target(self, ref: str, toward: Any) -> tuple[int, str]:
        """(class, toward) of an attack on the validated ``ref``; ``toward``: ``second`` or ``away``."""
        if toward not in TOWARD:
            raise NotFound(f"no attack toward {str(toward)[:40]!r}; attacks go toward: {', '.join(TOWARD)}")
        if toward == "away":
            away = self.samples.sample(ref)["away"]
            if away is None:
                raise BadRequest(
                    "target=away is for a misclassified sample with a known true class; this one is "
                    "not: attack the second class (no target)"
                )
            return away, "away"
        return self.samples.resolve_target(ref, "second")

    def attack(self, ref: Any, toward: Any = "second") -> dict:
        """The cached result of the attack (``status: done``) or its job's status (queued / running / error)."""
        ref = self.ws.check_ref(ref)
        cls, kind = self.target(ref, toward)
        _, meta = self.paths(ref, kind)
        out = {"ref": ref, "method": "attack", "target": kind, "class": cls, "class_name": self.ws.class_names[cls]}
        if meta.is_file():
            info = json.loads(meta.read_text())
            if "error" in info:
                return {**out, "status": "error", "error": info["error"]}
            return {**out, "status": "done", "progress": 1.0, **info}
        job = self.ws.worker.submit(f"attack/{ref}/{kind}", lambda report: self.run(ref, cls, kind, report))
        return {**out, **job.to_dict()}

    def attack_png(self, ref: Any, toward: Any = "second") -> bytes:
        ref = self.ws.check_ref(ref)
        cls, kind = self.target(ref, toward)
        png, _ = self.paths(ref, kind)
        if not png.is_file():
            raise NotFound(
                f"attack toward class {cls} of sample {ref} is not computed yet; request its JSON endpoint first"
            )
        return png.read_bytes()

    def run(self, ref: str, cls: int, kind: str, report: Callable[[float], None]) -> dict:
        """Attack ``ref`` toward ``cls`` (worker only); write its drawing and values (or its error)."""
        ws = self.ws
        png_path, meta_path = self.paths(ref, kind)
        x = ws.device_tensor(ref)
        names = ws.class_names
        label = f"#{ref}" if not ref.startswith("u") else "upload"
        t0 = time.perf_counter()
        try:
            r = minimal_eps(ws.model, x, target=cls if kind == "away" else "second", progress=scaled(report, span=0.95))
            fig = r.figure(x.cpu(), names=[label], class_names=names)
            eps = float(r.eps[0])
            assert r.classes is not None  # cnnlens's attacks record each image's goal class
            info = {
                "eps": eps if eps != float("inf") else None,
                "eps_255": eps * 255 if eps != float("inf") else None,
                "success": bool(r.success[0]),
                "pred_after": int(r.pred_after[0]),
                "pred_after_name": names[int(r.pred_after[0])],
                "toward": int(r.classes[0]),
                "toward_name": names[int(r.classes[0])],
            }
        except ValueError as err:  # an attack that does not apply to this model: kept as its message
            atomic_write(meta_path, json.dumps({"error": str(err).strip().splitlines()[0]}).encode())
            raise
        info["seconds"] = round(time.perf_counter() - t0, 3)
        atomic_write(png_path, png_bytes(fig))
        atomic_write(meta_path, json.dumps(info).encode())
        return info
