"""The microscope as a static site: layer list → channel grid → unit pages, and building-block sample pages.

:func:`precompute` runs the methods (:mod:`cnnlens.inside.microscope`) and keeps each
stage's result in a work directory, so an interrupted run (Ctrl-C) resumes where it
stopped: the dataset scan (one pass for every layer), then per layer the feature
visualisations, the class influence and the building blocks of a few samples.
:func:`write_site` draws everything (:mod:`cnnlens.microscope_draw`) into a new folder and
puts it at the output only when complete, like every cnnlens output
(:func:`cnnlens.report.write_atomically`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jinja2 import Environment, PackageLoader, select_autoescape
from torch import nn

from . import microscope_draw as draw
from .data import as_dataset, dataset_images
from .files import atomic_write
from .inside.fvcache import as_cache
from .inside.microscope import (
    building_blocks,
    class_influence,
    microscope_scan,
    top_maps,
    unit_projections,
)
from .report import write_atomically
from .results import jsonable
from .tap import LayerTap, resolve_layers

# Late (CONTRIBUTING.md, Imports): maximize_channels in the three views, looked up at each call (the explorer's tests
# count its calls through cnnlens.inside.microscope).

log = logging.getLogger(__name__)

#: the file that marks a folder as a microscope site (so it may be replaced by the next run)
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class Settings:
    """What the microscope computes (defaults: fast on digits-cnn, a few minutes on 2 busy CPU cores)."""

    k: int = 9  # top dataset images per channel
    max_channels: int = 64  # channels shown per layer (the first ones; the scan covers all)
    steps: int = 128  # Adam steps of each feature visualisation
    fv_size: int | None = None  # feature visualisation side (default: the model's input size, at most 128)
    diversity: int = 4  # images of the diversity set
    influence_images: int = 64  # images for the class influence (ablation: one forward per channel chunk)
    max_classes: int = 20  # classes for the influence (the most predicted, if the model has more)
    samples: int = 4  # building-block sample pages
    batch_size: int = 64
    seed: int = 0

    def key(self) -> dict:
        return dict(self.__dict__)


def model_hash(model: nn.Module) -> str:
    """A short hash of the model's parameters and buffers (names, shapes and values)."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def layer_slug(name: str) -> str:
    """A layer name as a file name: letters, digits, - and _ kept, anything else (the dots) as -."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


class WorkDir:
    """Stage results of one microscope run, as ``.pt`` files, keyed by model, data, layers and settings."""

    def __init__(self, path: Path, key: dict):
        self.path = Path(path)
        self.key = key
        kf = self.path / "key.json"
        if self.path.is_dir() and not kf.exists() and any(self.path.iterdir()):
            # a run deletes its work folder when done: never adopt a folder with someone else's files
            raise ValueError(
                f"work folder {self.path} holds files that are not a cnnlens microscope run's; "
                "give a new folder with --work"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        if kf.exists():
            try:
                old = json.loads(kf.read_text())
            except ValueError:
                old = None
            if old != key:
                log.info("work directory %s holds another run's results; starting over", self.path)
                for f in self.path.glob("*.pt"):
                    f.unlink()
        kf.write_text(json.dumps(key, indent=1))

    def get(self, name: str):
        f = self.path / f"{name}.pt"
        if not f.exists():
            return None
        try:
            # our own files, written by save() below in this work directory
            return torch.load(f, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a file cut short by an interruption: compute it again
            log.info("work file %s is unreadable; computing it again", f)
            return None

    def save(self, name: str, value) -> None:
        f = self.path / f"{name}.pt"
        atomic_write(f, lambda fh: torch.save(value, fh))  # an interruption leaves the old file or none


@dataclass
class Precomputed:
    """Everything a site needs, in memory (see :func:`precompute`)."""

    scan: Any
    views: dict = field(default_factory=dict)  # layer -> {"plain"|"robust"|"diverse": ChannelViews}
    influence: dict = field(default_factory=dict)  # layer -> ClassInfluence
    blocks: dict = field(default_factory=dict)  # layer -> BuildingBlocks of the samples
    samples: torch.Tensor | None = None
    sample_labels: list = field(default_factory=list)
    shown: dict = field(default_factory=dict)  # layer -> channels shown


def plain_view(model, name: str, chans, st: Settings, size: int, cache=None, progress=None):
    """The plain feature visualisations of ``chans`` (no transformation robustness, no penalty), as the site
    draws them."""
    from .inside.microscope import maximize_channels

    return maximize_channels(
        model, name, chans, st.steps, size=size, seed=st.seed, tv=0.0, cache=cache, progress=progress
    )


def robust_view(model, name: str, chans, st: Settings, size: int, cache=None, progress=None):
    """The feature visualisations of ``chans`` with transformation robustness (jitter, zoom, rotation), as the
    site's cards and the explorer draw them."""
    from .inside.microscope import maximize_channels

    return maximize_channels(
        model, name, chans, st.steps, size=size, seed=st.seed, robust=True, cache=cache, progress=progress
    )


def diverse_view(model, name: str, chans, st: Settings, size: int, plain, cache=None, progress=None):
    """The diversity sets of ``chans`` (robust, ``st.diversity`` images each), the diversity term weighing half of
    each channel's ``plain`` activation, so both matter."""
    from .inside.microscope import maximize_channels

    w = (0.5 * plain.activation[:, 0].abs()).clamp_min(1e-3)
    return maximize_channels(
        model,
        name,
        chans,
        st.steps,
        size=size,
        seed=st.seed + 1,
        robust=True,
        diversity=st.diversity,
        diversity_weight=w,
        cache=cache,
        progress=progress,
    )


def fv_size(model, settings: Settings) -> int:
    """The side of a feature visualisation: the settings', else the model's input size, at most 128."""
    if settings.fv_size:
        return int(settings.fv_size)
    spec = getattr(model, "spec", None)
    size = getattr(spec, "input_size", None) or (128, 128)
    return int(min(128, max(size)))


def precompute(
    model: nn.Module,
    data,
    layers: Sequence[str],
    work: Path,
    settings: Settings | None = None,
    *,
    data_name: str = "",
    progress: Progress | None = None,
    cache=None,
) -> Precomputed:
    """Run every stage (or load it from ``work``): the scan, then per layer the feature visualisations
    (plain, robust, diversity set), the class influence and the building blocks of the samples.

    ``cache``: a folder (or :class:`cnnlens.inside.fvcache.FeatureCache`) keeping every channel's feature
    visualisations across runs, keyed by the model's weights, layer, channel and settings: a second run
    (another dataset, more channels, after the work folder is gone) renders only what it has not seen."""
    st = settings or Settings()
    prog = progress or (lambda stage, done, total: None)
    data = as_dataset(data, model)
    names = resolve_layers(model, layers)
    fv = as_cache(cache, model)
    wd = WorkDir(
        work,
        {"model": model_hash(model), "data": str(data_name), "n": len(data), "layers": names, "settings": st.key()},
    )
    micro = wd.get("scan")
    if micro is None:
        micro = microscope_scan(
            model,
            data,
            names,
            k=st.k,
            batch_size=st.batch_size,
            progress=lambda d, t: prog("dataset scan (all layers at once)", d, t),
        )
        wd.save("scan", micro)
    prog("dataset scan (all layers at once)", 1, 1)
    out = Precomputed(micro)
    # the samples of the building-block pages: the first images of the data
    n_s = min(st.samples, len(data))
    out.samples = dataset_images(data, range(n_s)) if n_s else None
    dataset = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
    out.sample_labels = [int(dataset[i][1]) for i in range(n_s)]
    n_inf = min(st.influence_images, len(data))
    size = fv_size(model, st)
    for li, name in enumerate(names):
        C = micro[name].channels
        chans = list(range(min(C, st.max_channels)))
        out.shown[name] = chans
        stage = f"layer {li + 1}/{len(names)} {name}: feature visualisations"
        out.views[name] = _feature_views(model, name, chans, st, size, fv, wd, lambda i: prog(stage, i, 3))
        stage = f"layer {li + 1}/{len(names)} {name}: class influence and building blocks"
        inf = wd.get(f"influence-{layer_slug(name)}")
        if inf is None:
            labels = [int(dataset[i][1]) for i in range(n_inf)]
            inf = _influence(model, dataset_images(data, range(n_inf)), labels, name, micro[name], chans, st)
            wd.save(f"influence-{layer_slug(name)}", inf)
        out.influence[name] = inf or None
        prog(stage, 1, 2)
        bb = wd.get(f"blocks-{layer_slug(name)}")
        if bb is None:
            samples = out.samples  # drawn when n_s > 0
            bb = building_blocks(model, samples, name) if samples is not None and len(micro[name].shape) == 3 else False
            wd.save(f"blocks-{layer_slug(name)}", bb)
        out.blocks[name] = bb or None
        prog(stage, 2, 2)
    return out


def _feature_views(model, name: str, chans: list[int], st: Settings, size, fv, wd: WorkDir, step) -> dict:
    """A layer's feature visualisations (plain, robust, diversity set), from the work folder or rendered and
    saved there; ``step(i)`` after each of the three."""
    views = wd.get(f"fv-{layer_slug(name)}")
    if views is None:
        views = {}
        views["plain"] = plain_view(model, name, chans, st, size, fv)
        step(1)
        views["robust"] = robust_view(model, name, chans, st, size, fv)
        step(2)
        views["diverse"] = diverse_view(model, name, chans, st, size, views["plain"], fv)
        wd.save(f"fv-{layer_slug(name)}", views)
    step(3)
    return views


def _influence(model, x: torch.Tensor, labels: list[int], name: str, layer_scan, chans: list[int], st: Settings):
    """The class influence of a layer's shown channels on the images ``x``, or False for a layer without a
    spatial grid or without a top image."""
    classes = _classes(model, x, st.max_classes, labels)
    if layer_scan.top.positions.numel() and len(layer_scan.shape) == 3:
        return class_influence(model, x, name, classes, channels=chans, ablation=True, batch_size=st.batch_size)
    return False


def _classes(model, x, limit: int, labels=None) -> list[int]:
    """The classes a class-influence panel names: those the images ``x`` are labelled with (``labels``, −1 for none)
    or predicted as — never a class absent from both —, the ``limit`` most frequent (ties by class index), sorted."""
    with LayerTap(model, [], detach=True) as tap, torch.no_grad():
        logits = tap.run(x[: min(len(x), 64)].to(next(model.parameters()).device))
    K = int(logits.shape[1])
    counts = torch.bincount(logits.argmax(1).cpu(), minlength=K)
    if labels is not None:
        lab = torch.as_tensor(labels).long().view(-1)
        lab = lab[(lab >= 0) & (lab < K)]
        counts = counts + torch.bincount(lab, minlength=K)[:K]
    order = torch.sort(counts, descending=True, stable=True).indices
    return sorted(int(c) for c in order[:limit] if int(counts[c]) > 0)


# ---------------------------------------------------------------------------
# writing the site
def _env():
    return Environment(
        loader=PackageLoader("cnnlens", "templates/microscope"), autoescape=select_autoescape(["html", "j2"])
    )


def write_site(
    model: nn.Module,
    data,
    pre: Precomputed,
    out: Path,
    *,
    model_name: str = "model",
    data_name: str = "",
    class_names: Sequence[str] | None = None,
    progress: Progress | None = None,
    force: bool = False,
    protect: tuple = (),
) -> Path:
    """Draw the site into a new folder and put it at ``out`` when complete; returns index.html.

    Written like every cnnlens output (:func:`cnnlens.report.write_atomically`): ``out`` is replaced
    only when new, empty or a previous cnnlens output holding nothing else (unless ``force``).
    """

    def build(tmp: Path) -> None:
        _write(model, data, pre, tmp, model_name, data_name, class_names, progress or (lambda *a: None))

    return write_atomically(out, build, force=force, protect=protect) / "index.html"


def layer_row(ls) -> dict:
    """A layer's line in the layer list: output shape, receptive field size and stride, channels, dead channels."""
    rf = ls.rf
    return {
        "name": ls.layer,
        "slug": layer_slug(ls.layer),
        "shape": "×".join(str(s) for s in ls.shape),
        "channels": ls.channels,
        "rf": "whole image" if rf.is_global else f"{rf.size[0]}×{rf.size[1]} px",
        "stride": "–" if rf.is_global else f"{rf.stride[0]}×{rf.stride[1]}",
        "dead": int(ls.stats.dead.sum()),
        **concept_row(ls),
    }


def concept_row(ls) -> dict:
    """A layer's network-dissection summary: how many units each concept labels (empty without concepts)."""
    d = getattr(ls, "concepts", None)
    if d is None:
        return {"concepts": None}
    per = d.units_per_concept()
    return {"concepts": ", ".join(f"{k} {v}" for k, v in per.items()) or "none", "labelled": d.labelled}


def unit_concept(ls, c: int) -> dict:
    """A unit's network-dissection label (None when unlabelled or without concepts) and its best IoU."""
    d = getattr(ls, "concepts", None)
    if d is None:
        return {"concept": None, "concept_iou": None}
    u = d.unit(c)
    return {"concept": u["label"], "concept_iou": u["iou"], "concept_best": u["best"]}


def unit_card(ls, c: int, cname, influence=None) -> dict:
    """A channel's statistics as the channel grid and the unit page show them (from the scan alone)."""
    st, row = ls.stats, ls.top.row(c)
    infl = influence.top(c, 5) if influence is not None else []
    return {
        "c": int(c),
        "sel": float(st.selectivity[c]),
        "pref": cname(int(st.preferred_class[c])),
        "mean": float(st.mean[c]),
        "max": float(st.max[c]),
        "sparsity": float(st.sparsity[c]),
        "dead": bool(st.dead[c]),
        "top_act": float(ls.top.activations[row, 0]),
        "labels": [
            f"{float(ls.top.activations[row, s]):.3g} · {cname(int(ls.top.labels[row, s]))}" for s in range(ls.top.k)
        ],
        "influence": [(cname(k), v) for k, v in infl],
        **unit_concept(ls, c),
    }


def _write(model, data, pre: Precomputed, root: Path, model_name, data_name, class_names, prog) -> None:
    data = as_dataset(data, model)
    env = _env()
    (root / "img").mkdir()
    cname = lambda k: class_names[k] if class_names and 0 <= k < len(class_names) else str(k)
    common = {
        "model_name": model_name,
        "data_name": data_name,
        "count": pre.scan.count,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
    }
    layers = [{**layer_row(ls), "shown": len(pre.shown[name])} for name, ls in pre.scan.layers.items()]
    samples = [{"i": i, "label": cname(lab)} for i, lab in enumerate(pre.sample_labels)]
    (root / "index.html").write_text(
        env.get_template("index.html.j2").render(layers=layers, samples=samples, **common), encoding="utf-8"
    )
    data_json = {"model": model_name, "data": data_name, "images": pre.scan.count, "layers": {}}
    for li, name in enumerate(pre.scan.layers):
        ls = pre.scan[name]
        stage = f"layer {li + 1}/{len(pre.scan.layers)} {name}: drawing pages"
        tick = lambda done, total: prog(stage, done, total)
        cards = _unit_pages(model, data, pre, root, env, name, layers[li], cname, class_names, common, tick)
        (root / f"layer-{layer_slug(name)}.html").write_text(
            env.get_template("layer.html.j2").render(layer=layers[li], cards=cards, **common), encoding="utf-8"
        )
        data_json["layers"][name] = {"shape": list(ls.shape), "rf": jsonable(ls.rf), "channels": cards}
    # building-block pages: one per sample, every layer's grid clickable
    for s in samples:
        i = int(s["i"])
        blocks = _sample_blocks(root, pre, i)
        cls = int(pre.blocks[next(iter(pre.blocks))].classes[i]) if pre.blocks else -1
        (root / f"sample-{i}.html").write_text(
            env.get_template("sample.html.j2").render(
                sample=s, blocks=blocks, blocks_json=json.dumps(blocks), predicted=cname(cls), **common
            ),
            encoding="utf-8",
        )
    (root / "microscope.json").write_text(json.dumps(jsonable(data_json), indent=1))


def _unit_pages(
    model, data, pre: Precomputed, root: Path, env, name: str, layer: dict, cname, class_names, common, tick
):
    """A layer's unit pages and their images; the units' cards (for the layer page and microscope.json)."""
    ls = pre.scan[name]
    slug = layer_slug(name)
    chans = pre.shown[name]
    views = pre.views[name]
    imgs, maps = top_maps(model, data, ls, chans)
    cards = []
    d = root / "img" / slug
    d.mkdir(parents=True)
    for r, c in enumerate(chans):
        proj = _unit_images(model, d, name, ls, views, r, c, imgs, maps, class_names, pre.influence[name])
        card_rows = (
            ["patch"]
            + (["deconvnet"] if proj.deconv is not None else [])
            + (["guided backprop"] if proj.guided is not None else [])
        )
        card = {
            **unit_card(ls, c, cname, pre.influence[name]),
            "fv_act": float(views["plain"].activation[r, 0]),
            "fvr_act": float(views["robust"].activation[r, 0]),
            "deconv_error": proj.deconv_error,
            "guided_error": proj.guided_error,
            "proj_rows": card_rows,
        }
        cards.append(card)
        prev = chans[r - 1] if r > 0 else None
        nxt = chans[r + 1] if r + 1 < len(chans) else None
        (root / f"unit-{slug}-{c}.html").write_text(
            env.get_template("unit.html.j2").render(
                layer=layer,
                card=card,
                prev=prev,
                next=nxt,
                k=ls.top.k,
                diversity=views["diverse"].images.shape[1],
                settings=views["plain"].settings,
                rsettings=views["robust"].settings,
                **common,
            ),
            encoding="utf-8",
        )
        tick(r + 1, len(chans))
    return cards


def _unit_images(model, d: Path, name: str, ls, views: dict, r: int, c: int, imgs, maps, class_names, influence):
    """The images of channel c's card and unit page, written to ``d``; its deconvnet and guided-backprop
    projections."""
    st = ls.stats
    fv = views["plain"].of(c)[0]
    # cards show the robust one: transformation robustness removes most of the high-frequency noise
    (d / f"fv-{c}.png").write_bytes(draw.png(draw.image_tile(views["robust"].of(c)[0], 112)))
    (d / f"fvr-{c}.png").write_bytes(draw.png(draw.image_tile(views["robust"].of(c)[0], 160)))
    (d / f"fvp-{c}.png").write_bytes(draw.png(draw.image_tile(fv, 160)))
    for v, im in enumerate(views["diverse"].of(c)):
        (d / f"fvd-{c}-{v}.png").write_bytes(draw.png(draw.image_tile(im, 112)))
    row = ls.top.row(c)
    crops = ls.top.patches(channels=[c], images=imgs[r : r + 1])[0]  # cut from its top images now
    (d / f"top-{c}.png").write_bytes(draw.png(draw.patch_grid(crops, ncols=3, tile=36)))
    (d / f"topbig-{c}.png").write_bytes(draw.png(draw.patch_grid(crops, ncols=9, tile=96, pad=3)))
    (d / f"maps-{c}.png").write_bytes(draw.png(draw.maps_image(imgs[r], maps[r], ncols=9, side=96)))
    (d / f"hist-{c}.png").write_bytes(draw.png(draw.histogram_figure(st, c)))
    (d / f"class-{c}.png").write_bytes(draw.png(draw.class_figure(st, c, class_names, influence)))
    proj = unit_projections(model, imgs[r], name, c, ls.top.positions[row], ls.rf)
    (d / f"proj-{c}.png").write_bytes(draw.png(draw.projections_image(crops, proj.deconv, proj.guided, tile=72)))
    return proj


def _sample_blocks(root: Path, pre: Precomputed, i: int) -> list[dict]:
    """Sample i's building blocks, one entry per layer that has them (its grid drawn over the image)."""
    assert pre.samples is not None  # the precompute draws the sample images
    blocks = []
    for name, bb in pre.blocks.items():
        if bb is None:
            continue
        slug = layer_slug(name)
        shown = set(pre.shown[name])
        g = bb.grid
        img = f"img/{slug}/sample-{i}.png"
        draw.grid_overlay(pre.samples[i], g, 288).save(root / img)
        A, Ct = bb.activations[i], bb.contributions[i]
        cells = []
        for a in range(g[0]):
            row = []
            for b in range(g[1]):
                top = [t for t in bb.at(i, a, b, k=len(A)) if t["channel"] in shown and t["activation"] > 0][:6]
                row.append([[t["channel"], round(t["activation"], 4), round(t["contribution"], 4)] for t in top])
            cells.append(row)
        blocks.append(
            {
                "name": name,
                "slug": slug,
                "grid": list(g),
                "img": img,
                "cells": cells,
                "total": [[round(float(v), 4) for v in r] for r in Ct.sum(0)],
            }
        )
    return blocks
