"""Feature visualisation in the explorer: a channel's robust image (the unit and layer pages), its plain image and
diversity set (the unit page, on request), a layer's render of every channel (queued, batched, cancellable).

The optimisations are kept in ``<cache>/fv`` (:class:`~cnnlens.inside.fvcache.FeatureCache`, shared with
``cnnlens microscope --cache <cache>/fv``); the drawings next to the unit's others.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from .. import microscope_draw as draw
from ..files import atomic_write
from ..inside.fvcache import FeatureCache
from ..microscope_site import Settings, diverse_view, fv_size, plain_view, robust_view
from .units import Units
from .worker import error_line
from .workspace import Workspace, scaled

#: feature visualisations rendered by one call of maximize_channels in the explorer's worker (channels of one layer
#: queued together: the layer page's "render" button, several unit pages): 16 per optimisation at 128², two
#: optimisations side by side on 2 cores
FV_GROUP = 32


class FeatureVis:
    """The feature visualisations of the units: cached, or a job in the worker (polled)."""

    def __init__(self, ws: Workspace, units: Units):
        self.ws, self.units = ws, units
        self.runs: dict[str, tuple[float, float]] = {}  # layer -> (start time, work done then): the render's ETA

    def cache(self) -> FeatureCache:
        """The feature visualisations kept across datasets and runs in ``<cache>/fv``, keyed by the model's
        weights, layer, channel and settings (the microscope site's views: ``cnnlens microscope --cache
        <cache>/fv`` shares them)."""
        return FeatureCache(self.ws.cache / "fv", mhash=self.ws.mhash)

    def feature_vis(self, layer: Any, channel: Any, background: bool = False) -> dict:
        """The channel's feature visualisation (robust, :func:`maximize_channels` with the microscope site's
        settings), cached; requested lazily by the unit and layer pages and run in the worker — the job that runs
        first also takes the other queued channels of its layer (up to :data:`FV_GROUP`), so they render in
        batched optimisations (a batch of images, one channel objective each)."""
        layer = self.units.check_layer(layer)
        c = self.units.check_channel(layer, channel)
        meta = self.units.unit_dir(layer, c) / "fv.json"
        out = {"layer": layer, "channel": c, "png": f"/img/unit/{layer}/{c}/fv.png"}
        if meta.is_file():
            return {**out, "status": "done", "progress": 1.0, **json.loads(meta.read_text())}
        worker = self.ws.worker

        def run(report):
            others = worker.claim(f"fv/{layer}/", FV_GROUP - 1)
            try:
                infos = self.render(
                    layer,
                    [c] + [int(j.key.rsplit("/", 1)[1]) for j in others],
                    lambda f: [r(f) for r in [report] + [j.report for j in others]],
                )
            except BaseException as e:  # the claimed jobs fail with this one
                for j in others:
                    j.finish(error=error_line(e, j.key))
                raise
            for j, info in zip(others, infos[1:], strict=True):
                j.finish(info)
            return infos[0]

        # a layer's render (the layer page's button) runs behind the pages' own requests; a unit page's does not
        return {**out, **worker.submit(f"fv/{layer}/{c}", run, background=background).to_dict()}

    def feature_views(self, layer: Any, channel: Any) -> dict:
        """The channel's other feature visualisations for its unit page, as ``cnnlens microscope`` draws them: plain
        (no transformation robustness, no penalty) and a diversity set of :attr:`Settings.diversity` robust images
        pushed apart (weight ½ of the plain image's activation); one strip, computed in the worker when asked for,
        the optimisations kept in ``CACHE/fv``."""
        layer = self.units.check_layer(layer)
        c = self.units.check_channel(layer, channel)
        d = self.units.unit_dir(layer, c)
        meta = d / "views.json"
        out = {"layer": layer, "channel": c, "png": f"/img/unit/{layer}/{c}/views.png"}
        if meta.is_file():
            return {**out, "status": "done", "progress": 1.0, **json.loads(meta.read_text())}
        model = self.ws.model

        def run(report):
            st = Settings()
            size = fv_size(model, st)
            plain = plain_view(model, layer, [c], st, size, self.cache(), scaled(report, span=0.5))
            div = diverse_view(model, layer, [c], st, size, plain, self.cache(), scaled(report, 0.5, 0.5))
            strip = torch.cat([plain.of(c), div.of(c)])  # plain, then the set
            d.mkdir(parents=True, exist_ok=True)
            atomic_write(d / "views.png", draw.png(draw.patch_grid(strip, ncols=len(strip), tile=128, pad=4)))
            info = {
                "plain_activation": float(plain.activation[0, 0]),
                "diverse_activations": [float(v) for v in div.activation[0]],
                "diversity": st.diversity,
            }
            atomic_write(meta, json.dumps(info).encode())
            return info

        return {**out, **self.ws.worker.submit(f"views/{layer}/{c}", run).to_dict()}

    def render(self, layer: str, channels: list[int], report) -> list[dict]:
        """Render and store the feature visualisations of ``channels`` of ``layer`` (worker only)."""
        st = Settings()
        model = self.ws.model
        v = robust_view(model, layer, channels, st, fv_size(model, st), self.cache(), scaled(report))
        infos = []
        for i, ch in enumerate(channels):
            d = self.units.unit_dir(layer, ch)
            d.mkdir(parents=True, exist_ok=True)
            atomic_write(d / "fv.png", draw.png(draw.image_tile(v.of(ch)[0], 160)))
            info = {"activation": float(v.activation[i, 0]), "steps": st.steps, "seed": st.seed, "robust": True}
            atomic_write(d / "fv.json", json.dumps(info).encode())
            infos.append(info)
        return infos

    def layer_fv(self, layer: Any, start: bool = False) -> dict:
        """Every channel's feature-visualisation status for the layer page (``start``: queue the missing ones;
        they then render :data:`FV_GROUP` channels per optimisation), with ``eta``: the seconds left, estimated
        from the work done since the render started (channels done, and the running ones' progress), once there
        is some; None before."""
        layer = self.units.check_layer(layer)
        rows = []
        for c in range(self.units.micro_scan()[layer].channels):
            if start or (self.units.unit_dir(layer, c) / "fv.json").is_file():
                rows.append(self.feature_vis(layer, c, background=True))
                continue
            job = self.ws.worker.get(f"fv/{layer}/{c}")
            rows.append(
                {
                    "layer": layer,
                    "channel": c,
                    "png": f"/img/unit/{layer}/{c}/fv.png",
                    **(job.to_dict() if job is not None else {"status": "missing", "progress": 0.0, "error": None}),
                }
            )
        done = sum(r["status"] == "done" for r in rows)
        work = done + sum(r["progress"] for r in rows if r["status"] == "running")
        pending = sum(r["status"] in ("queued", "running") for r in rows)
        now = time.monotonic()
        if start:
            self.runs[layer] = (now, work)
        eta = None
        run = self.runs.get(layer)
        if pending and run is not None and work - run[1] > 0.05 and now - run[0] > 1.0:
            eta = (now - run[0]) / (work - run[1]) * (len(rows) - work)
        return {
            "layer": layer,
            "channels": rows,
            "done": done,
            "total": len(rows),
            "pending": pending,
            "eta": None if eta is None else round(eta, 1),
            "cancelled": sum(r["status"] == "cancelled" for r in rows),
        }

    def cancel_layer_fv(self, layer: Any) -> dict:
        """Cancel a layer's feature-visualisation render: queued channels never start, the running optimisation
        stops at its next step; what is done stays done (and cached)."""
        layer = self.units.check_layer(layer)
        n = self.ws.worker.cancel(f"fv/{layer}/")
        self.runs.pop(layer, None)
        return {"layer": layer, "cancelled": n}
