"""The units area (the microscope joined into the explorer): the layers shown, one scan of them, a layer's
channels, a unit's page (top patches, maps, histogram, classes, class influence, projections) and a sample's
building blocks. Model work runs in the worker; results are cached under ``results/.../micro/<key>/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import torch

from .. import microscope_draw as draw
from ..data import dataset_images
from ..files import atomic_write
from ..inside.microscope import (
    MicroscopeScan,
    building_blocks,
    class_influence,
    default_layers,
    microscope_scan,
    top_maps,
    unit_projections,
)
from ..microscope_site import layer_row, layer_slug, unit_card
from ..tap import LayerTap
from .errors import BadRequest, Computing, NotFound
from .workspace import Workspace, scaled

#: top dataset images per channel on the unit pages; images for the class influence; channels per position
UNIT_K, INFLUENCE_IMAGES, BLOCKS_K = 9, 64, 6
#: a unit page's images computed in the worker (the top patches are drawn from the scan)
UNIT_IMAGES = ("maps", "hist", "class", "proj", "fv", "views")


class Units:
    """The layers, their channels and a unit's values and images; the microscope scan, run once."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._layers: list[str] | None = None
        self._micro: MicroscopeScan | None = None
        self._influence_logits: torch.Tensor | None = None  # the model's logits on influence_images()

    def unit_layers(self) -> list[str]:
        """The layers the explorer shows units of: up to 3 spatial activation layers (as ``cnnlens microscope``)."""
        if self._layers is None:
            self.ws.ready()  # the store's scan first (its page shows the progress), then one forward here

            def run(report):
                try:
                    return default_layers(self.ws.model)
                except ValueError:  # no activation module to show
                    return []

            self._layers = list(self.ws.worker.run("unit-layers", run))
        return self._layers

    def check_layer(self, name: Any) -> str:
        s = str(name)
        layers = self.unit_layers()
        if s not in layers:
            known = s in dict(self.ws.model.named_modules())
            raise NotFound(
                f"{'layer' if known else 'no layer'} {s[:60]!r}"
                f"{' is not among the layers shown' if known else ''}; layers: {', '.join(layers) or 'none'}"
            )
        return s

    def check_channel(self, layer: str, channel: Any) -> int:
        C = self.micro_scan()[layer].channels
        s = str(channel)
        if not re.fullmatch(r"[0-9]{1,9}", s) or int(s) >= C:
            raise NotFound(f"no channel {s[:30]!r}; layer {layer} has channels 0..{C - 1}")
        return int(s)

    def micro_dir(self) -> Path:
        key = json.dumps(
            {"layers": self.unit_layers(), "k": UNIT_K, "bins": 40, "patches": "cut when drawn"}, sort_keys=True
        )
        return self.ws.results / "micro" / hashlib.sha1(key.encode()).hexdigest()[:12]

    def unit_dir(self, layer: str, c: int) -> Path:
        """Where the unit's drawings and values are kept (``layer`` and ``c`` validated)."""
        return self.micro_dir() / layer_slug(layer) / str(c)

    def microscope(self) -> dict:
        """The state of the microscope scan (ONE scan over the dataset for every shown layer), started if needed."""
        if self._micro is not None:
            return {"status": "done", "progress": 1.0, "error": None}
        layers = self.unit_layers()
        if not layers:
            raise NotFound("the model has no spatial activation layers to show units of")
        path = self.micro_dir() / "scan.pt"
        ws = self.ws

        def run(report):
            m = None
            if path.is_file():
                try:  # our own file, written below under the cache
                    m = torch.load(path, map_location="cpu", weights_only=False)
                except Exception:  # noqa: BLE001 - cut short: scan again
                    m = None
            if m is None:
                m = microscope_scan(
                    ws.model,
                    ws.dataset,
                    layers,
                    k=UNIT_K,
                    batch_size=ws.model_batch,
                    device=ws.device,
                    progress=scaled(report),
                )
                buf = io.BytesIO()
                torch.save(m, buf)
                atomic_write(path, buf.getvalue())
            self._micro = m
            return True

        return ws.worker.submit("microscope", run).to_dict()

    def micro_scan(self) -> MicroscopeScan:
        """The microscope scan, or Computing (a "computing" page) while the worker runs it."""
        st = self.microscope()
        if self._micro is None:
            if st["status"] == "error":
                raise BadRequest(f"the microscope scan failed: {st['error']}", 500)
            raise Computing(f"the microscope scan is running ({100 * st['progress']:.0f} %)", "/api/microscope")
        return self._micro

    def layers(self) -> dict:
        m = self.micro_scan()
        return {
            "model": self.ws.model_name,
            "data": self.ws.data_label,
            "images": m.count,
            "layers": [layer_row(m[n]) for n in m.layers],
        }

    def layer(self, name: Any) -> dict:
        name = self.check_layer(name)
        ls = self.micro_scan()[name]
        cn = self.ws.class_name()
        return {**layer_row(ls), "k": ls.top.k, "cards": [unit_card(ls, c, cn) for c in range(ls.channels)]}

    def top_png(self, layer: Any, channel: Any, big: bool = False) -> bytes:
        """A channel's top-k dataset patches (drawn from the scan; no model work)."""
        layer = self.check_layer(layer)
        c = self.check_channel(layer, channel)
        ls = self.micro_scan()[layer]
        crops = ls.top.patches(self.ws.dataset, [c])[0]  # cut from the dataset's images (the scan keeps no pixels)
        img = draw.patch_grid(crops, ncols=9, tile=96, pad=3) if big else draw.patch_grid(crops, ncols=3, tile=36)
        return draw.png(img)

    def influence_images(self) -> list[int]:
        """The dataset indices the class influence is measured on: :data:`INFLUENCE_IMAGES` spread evenly over the
        dataset (a folder's first images are all of its first class)."""
        n = self.ws.n
        m = min(INFLUENCE_IMAGES, n)
        return sorted({round(i * (n - 1) / max(1, m - 1)) for i in range(m)}) if m > 1 else list(range(m))

    def present_classes(self, limit: int | None = None) -> list[int]:
        """The classes that occur in the data (as labels; for unlabelled data, as predictions), most frequent
        first (ties by index), at most ``limit``: what a unit page names."""
        cm = self.ws.ready().confusion()
        support = cm.sum(1)
        if int(support.sum()) == 0:
            support = cm.sum(0)
        order = torch.sort(support, descending=True, stable=True).indices
        out = [int(c) for c in order if int(support[c]) > 0]
        return out[:limit] if limit else out

    def influence(self, layer: str, c: int, report=None):
        """The class influence (ablation) of channel ``c`` of ``layer`` on the (at most 20 most frequent) classes of
        the data, over :meth:`influence_images` (worker only): a channel's values do not depend on the others, so a
        unit page costs one forward and one ablated forward per image, not one per channel of the layer."""
        ws = self.ws
        x = dataset_images(ws.dataset, self.influence_images())
        classes = sorted(self.present_classes(20))
        if not classes:
            return None
        with ws.lock:
            logits = self._influence_logits
        if logits is None:  # the same for every layer and channel: one plain forward, once, in the same batches
            dev = next(ws.model.parameters()).device
            with LayerTap(ws.model, [], detach=True) as tap, torch.no_grad():
                logits = torch.cat(
                    [tap.run(x[s : s + ws.model_batch].to(dev)) for s in range(0, len(x), ws.model_batch)]
                ).cpu()
            with ws.lock:
                self._influence_logits = logits
        return class_influence(
            ws.model,
            x,
            layer,
            classes,
            channels=[c],
            ablation=True,
            taylor=False,
            batch_size=ws.model_batch,
            logits=logits,
            progress=report,
        )

    def unit(self, layer: Any, channel: Any) -> dict:
        """A unit page's values (``status: done``) or its job's state: top patches, activation maps over the
        top images, histogram, per-class means and selectivity, class influence (computed in the worker)."""
        layer = self.check_layer(layer)
        c = self.check_channel(layer, channel)
        ls = self.micro_scan()[layer]
        d = self.unit_dir(layer, c)
        meta = d / "unit.json"
        row = ls.top.row(c)
        out = {
            "layer": layer,
            "channel": c,
            "channels": ls.channels,
            "k": ls.top.k,
            "top_indices": ls.top.indices[row].tolist(),
            "top_activations": [float(v) for v in ls.top.activations[row]],
            "top_labels": ls.top.labels[row].tolist(),
            "class_means": ls.stats.class_mean[:, c].tolist()
            if getattr(ls.stats, "class_mean", None) is not None
            else None,
        }
        out["views_done"] = (d / "views.json").is_file()
        if meta.is_file():
            return {**out, "status": "done", "progress": 1.0, **json.loads(meta.read_text())}
        job = self.ws.worker.submit(f"unit/{layer}/{c}", lambda report: self._draw_unit(layer, c, report))
        return {**out, **job.to_dict()}

    def _draw_unit(self, layer: str, c: int, report) -> dict:
        """Compute and keep a unit page's images and values (worker only)."""
        ws = self.ws
        ls = self.micro_scan()[layer]
        d = self.unit_dir(layer, c)
        row = ls.top.row(c)
        inf = None
        report(0.01)
        if len(ls.shape) == 3:
            inf = self.influence(layer, c, scaled(report, 0.01, 0.5))
        report(0.5)
        imgs, maps = top_maps(ws.model, ws.dataset, ls, [c], batch_size=ws.model_batch)
        report(0.8)
        atomic_write(d / "maps.png", draw.png(draw.maps_image(imgs[0], maps[0], ncols=9, side=96)))
        atomic_write(d / "hist.png", draw.png(draw.histogram_figure(ls.stats, c)))
        atomic_write(d / "class.png", draw.png(draw.class_figure(ls.stats, c, ws.class_names, inf)))
        # deconvnet and guided backprop of the unit on its top images, cut to its receptive field
        # in groups of a quarter of the model batch (4 images at 224²): each backward keeps the whole graph, and
        # every image's projection is its own (on digits-sized images: one group, as before)
        g = max(1, ws.model_batch // 4)
        parts = [
            unit_projections(ws.model, imgs[0][s : s + g], layer, c, ls.top.positions[row][s : s + g], ls.rf)
            for s in range(0, len(imgs[0]), g)
        ]
        deconvs = [p.deconv for p in parts if p.deconv is not None]
        guideds = [p.guided for p in parts if p.guided is not None]
        proj = (
            parts[0]
            if len(parts) == 1
            else type(parts[0])(
                parts[0].layer,
                parts[0].channel,
                None if len(deconvs) < len(parts) else torch.cat(deconvs),
                None if len(guideds) < len(parts) else torch.cat(guideds),
                parts[0].deconv_error,
                parts[0].guided_error,
            )
        )
        crops = ls.top.patches(channels=[c], images=imgs)[0]
        atomic_write(d / "proj.png", draw.png(draw.projections_image(crops, proj.deconv, proj.guided, tile=72)))
        info = {
            "card": unit_card(ls, c, ws.class_name(), inf),
            "influence": [[k, v] for k, v in inf.top(c, len(inf.classes))] if inf is not None else None,
            "influence_images": len(self.influence_images()),
            "projections": [
                n
                for n, v in (("patch", crops), ("deconvnet", proj.deconv), ("guided backprop", proj.guided))
                if v is not None
            ],
            "projection_errors": [e for e in (proj.deconv_error, proj.guided_error) if e],
        }
        atomic_write(d / "unit.json", json.dumps(info).encode())
        return info

    def unit_png(self, layer: Any, channel: Any, what: Any) -> bytes:
        layer = self.check_layer(layer)
        c = self.check_channel(layer, channel)
        if what in ("top", "topbig"):
            return self.top_png(layer, c, big=what == "topbig")
        if what not in UNIT_IMAGES:
            raise NotFound(f"no unit image {str(what)[:30]!r}; images: top, topbig, {', '.join(UNIT_IMAGES)}")
        path = self.unit_dir(layer, c) / f"{what}.png"
        if not path.is_file():
            raise NotFound(f"unit {layer}/{c} is not computed yet; request /api/unit/{layer}/{c} first")
        return path.read_bytes()

    def blocks(self, ref: Any, layer: Any) -> dict:
        """Building blocks of a sample at ``layer``: per grid position, the channels that fire most there and
        their contribution A·∂y/∂A to the predicted class (one forward and backward, in the worker)."""
        ws = self.ws
        ref, layer = ws.check_ref(ref), self.check_layer(layer)
        path = ws.results / ref / f"blocks-{layer_slug(layer)}.json"
        if path.is_file():
            return json.loads(path.read_text())

        def run(report):
            bb = building_blocks(ws.model, ws.device_tensor(ref), layer)
            g = bb.grid
            cells = [
                [
                    [
                        [t["channel"], round(t["activation"], 5), round(t["contribution"], 5)]
                        for t in bb.at(0, i, j, k=BLOCKS_K)
                        if t["activation"] > 0
                    ]
                    for j in range(g[1])
                ]
                for i in range(g[0])
            ]
            out = {
                "ref": ref,
                "layer": layer,
                "grid": list(g),
                "class": int(bb.classes[0]),
                "class_name": ws.class_names[int(bb.classes[0])],
                "cells": cells,
                "total": [[round(float(v), 5) for v in r] for r in bb.contributions[0].sum(0)],
            }
            atomic_write(path, json.dumps(out).encode())
            return out

        return ws.worker.run(f"blocks/{ref}/{layer}", run)
