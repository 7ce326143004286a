"""The explanations area: an attribution method on a sample, run in the worker (polled), scored and drawn.

Each result is cached as ``results/.../<ref>/<method>-<class>.png`` and ``.json``: the drawing (the map, its
deletion and insertion curves, the object cut from it) and the values (the AUCs, the layer, the settings).
The old URL of the attack (``method/attack``) is served by :class:`~cnnlens.explore.attacks.Attacks`.
"""

from __future__ import annotations

import difflib
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..attribution import METHODS, faithfulness
from ..attribution.completeness import incomplete_note
from ..attribution.segment import BACKGROUND_QUANTILE, FOREGROUND_QUANTILE, segment
from ..extras import MissingExtra
from ..figures.attribution import method_figure
from ..figures.metrics import draw_objects
from ..files import atomic_write
from ..metrics import box_from_map, localisation_iou
from ..report import png_bytes
from .attacks import Attacks
from .errors import NotFound
from .samples import Samples
from .workspace import Workspace, scaled

#: what the sample page can run: every attribution method, and the attack to the second class
ACTIONS = tuple(METHODS) + ("attack",)
#: settings the explorer runs the slower methods with (documented in the page)
SETTINGS: dict[str, dict] = {
    "smoothgrad": {"n": 16},
    "integrated_gradients": {"steps": 32},
    "augmented_gradcam": {"augmentations": 16},
}
FAITH_STEPS = 16


def check_action(method: Any) -> str:
    """A method's name (hyphens or underscores) among :data:`ACTIONS`, or NotFound naming the close ones."""
    s = str(method).replace("-", "_")
    if s not in ACTIONS:
        # named as on the command line (hyphens); hyphens and underscores are both accepted
        known = [a.replace("_", "-") for a in ACTIONS]
        close = difflib.get_close_matches(s.replace("_", "-")[:40], known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise NotFound(f"no method {str(method)[:40]!r}; {hint}methods: {', '.join(known)}")
    return s


class Explanations:
    """An attribution method toward a class of a sample: its cached result, or its job's status."""

    def __init__(self, ws: Workspace, samples: Samples, attacks: Attacks):
        self.ws, self.samples, self.attacks = ws, samples, attacks

    def paths(self, ref: str, action: str, cls: int) -> tuple[Path, Path]:
        stem = self.ws.results / ref / f"{action}-{cls}"
        return stem.with_suffix(".png"), stem.with_suffix(".json")

    def method(self, ref: Any, method: Any, target: Any = "predicted") -> dict:
        """The cached result of a method (``status: done``) or its job's status (queued / running / error);
        ``attack`` is the attack's (toward the second class, or ``target=away``)."""
        ref, action = self.ws.check_ref(ref), check_action(method)
        if action == "attack":
            return self.attacks.attack(ref, "away" if target == "away" else "second")
        cls, kind = self.samples.resolve_target(ref, target)
        _, meta = self.paths(ref, action, cls)
        out = {"ref": ref, "method": action, "target": kind, "class": cls, "class_name": self.ws.class_names[cls]}
        if meta.is_file():
            info = json.loads(meta.read_text())
            if "error" in info:
                return {**out, "status": "error", "error": info["error"]}
            return {**out, "status": "done", "progress": 1.0, **info}
        job = self.ws.worker.submit(f"{action}/{ref}/{cls}", lambda report: self.run(ref, action, cls, report))
        return {**out, **job.to_dict()}

    def method_png(self, ref: Any, method: Any, target: Any = "predicted") -> bytes:
        ref, action = self.ws.check_ref(ref), check_action(method)
        if action == "attack":
            return self.attacks.attack_png(ref, "away" if target == "away" else "second")
        cls, _ = self.samples.resolve_target(ref, target)
        png, _ = self.paths(ref, action, cls)
        if not png.is_file():
            raise NotFound(
                f"{action} toward class {cls} of sample {ref} is not computed yet; request its JSON endpoint first"
            )
        return png.read_bytes()

    def run(self, ref: str, action: str, cls: int, report: Callable[[float], None]) -> dict:
        """Run ``action`` toward ``cls`` on ``ref`` (worker only); write its drawing and values (or its error)."""
        png_path, meta_path = self.paths(ref, action, cls)
        x = self.ws.device_tensor(ref)
        t0 = time.perf_counter()
        try:
            fig, info = self._explain(ref, action, cls, x, report)
        except ValueError as err:  # a method that does not apply to this model: kept as its message
            atomic_write(meta_path, json.dumps({"error": str(err).strip().splitlines()[0]}).encode())
            raise
        info["seconds"] = round(time.perf_counter() - t0, 3)
        atomic_write(png_path, png_bytes(fig))
        atomic_write(meta_path, json.dumps(info).encode())
        return info

    def _explain(self, ref: str, action: str, cls: int, x: torch.Tensor, report: Callable[[float], None]):
        """The method's map, scored by deletion and insertion and drawn: (figure, values)."""
        ws, names = self.ws, self.ws.class_names
        fn = METHODS[action]
        kw = dict(SETTINGS.get(action, {}))
        if "progress" in inspect.signature(fn).parameters:
            kw["progress"] = scaled(report, span=0.7)
        e = fn(ws.model, x, target=cls, **kw)
        report(0.75)
        f = faithfulness(ws.model, x, e, steps=FAITH_STEPS)
        label = f"#{ref}" if not ref.startswith("u") else "upload"
        extra = "probability" if "probability" in e.extras else None
        fig = method_figure(x.cpu().float(), [label], e, f, class_names=names, extra=extra)
        objects, drawn = self.objects(ref, e, x)
        draw_objects(fig.axes[0], **drawn)
        p_max = float(torch.cat([f.deletion.scores[0], f.insertion.scores[0]]).max())
        info = {
            "deletion_auc": float(f.deletion_auc[0]),
            "insertion_auc": float(f.insertion_auc[0]),
            # both AUCs round to 0 when the model gives the class no probability with or without the
            # pixels: they cannot rank this map then, and the page says so
            "auc_note": (
                f"the model gives {names[cls]} a probability of at most {p_max:.1e} with or "
                "without the pixels, so deletion and insertion cannot rank this map"
            )
            if p_max < 0.01
            else None,
            "layer": e.layer,
            "settings": {k: v for k, v in kw.items() if k != "progress"},
            "empty": bool(e.extras["empty"][0]) if torch.is_tensor(e.extras.get("empty")) else False,
            "note": incomplete_note(e.extras),
            **objects,
        }
        return fig, info

    def objects(self, ref: str, e, x: torch.Tensor) -> tuple[dict, dict]:
        """The object cut from a map: the box of Zhou et al. 2016, the outline of the map-seeded GrabCut mask
        (Simonyan et al. 2014, with the ``segment`` extra) and, where the dataset knows the sample's box
        (``.boxes``, as cluttered digits), the box's IoU with it; (JSON fields, :func:`draw_objects` arguments)."""
        try:
            box = box_from_map(e)[0]
        except MissingExtra as err:  # no scikit-image: nothing to cut
            return {"objects": str(err).splitlines()[0]}, {}
        out: dict = {"box": box.tolist()}
        words = ["dashed yellow: the box of the largest region above 20 % of the map's maximum (Zhou et al. 2016)"]
        try:
            mask = segment(e, x.cpu())[0]
            words.append(
                f"cyan: the outline of GrabCut seeded by the map's top {100 * (1 - FOREGROUND_QUANTILE):.0f} % "
                f"and bottom {100 * BACKGROUND_QUANTILE:.0f} % (Simonyan et al. 2014)"
            )
            out["mask_pixels"] = int(mask.sum())
        except MissingExtra:
            mask = None
            words.append("pip install 'cnnlens[segment]' for the GrabCut outline")
        truth = getattr(self.ws.dataset, "boxes", None)
        true_box = None
        if truth is not None and not ref.startswith("u"):
            true_box = torch.as_tensor(truth)[int(ref)]
            out["iou"] = float(localisation_iou(e, true_box[None]).scores[0])
            words.append(f"white: the true box, IoU {out['iou']:.2f}")
        out["objects"] = "; ".join(words) + "."
        return out, {"box": box, "mask": mask, "true_box": true_box}
