"""The microscope: every channel of chosen layers, from one dataset scan and one batched optimisation.

What OpenAI Microscope showed for a fixed zoo of models, for the user's own model and data:

- :func:`microscope_scan` — ONE streaming scan (:func:`cnnlens.scanning.scan`) that keeps,
  for every channel of every chosen layer, its top-k dataset images (index, position
  of its strongest unit, activation; the receptive-field patch is cut from the
  dataset when drawn, :meth:`SearchResult.patches`) and its statistics
  (histogram, mean, sparsity, mean activation per class and the class-selectivity
  index). Memory is O(layers × channels × (k + classes)) numbers, whatever the dataset
  and image size; the accumulator merges, so the scan runs sharded under ``torchrun``.

  Class selectivity (Morcos et al. 2018), per channel:
  ``(μ_max − μ_rest) / (μ_max + μ_rest)`` where μ_c is the channel's mean
  image-level activation ``mean_ij a_ij(x)`` over the images of class c, μ_max the
  largest class mean and μ_rest the mean of the other classes' means: 0 when every
  class drives the channel equally, 1 when only one does (for non-negative
  activations, e.g. after a ReLU).
- :func:`maximize_channels` — feature visualisations of many channels in one
  optimisation: a batch of images, one channel objective each (as Lucent's batched
  objectives), plain, with transformation robustness, or a diversity set per channel.
- :func:`building_blocks` — for a sample and a layer, at each position, the channels
  that fire most and their contribution ``A_k(i, j) · ∂y/∂A_k(i, j)`` to the class score
  (Olah et al. 2018, "Building Blocks").
- :func:`class_influence`, :func:`top_maps`, :func:`unit_projections` — the rest of a
  unit page: the classes a channel drives, its activation maps over its top images,
  deconvnet and guided backprop of its top patches.
"""

from __future__ import annotations

import copy
import logging
import math
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..autograd import needs_autograd
from ..batching import check_batch_size, num_threads
from ..data import as_dataset, data_input_size, dataset_images
from ..rectifiers import guided_relus
from ..results import Result, layer_entry
from ..scanning import Batch, scan
from ..tap import LayerRef, LayerTap, resolve_layer, resolve_layers
from .deconv import deconvnet
from .dissect import DissectionAccumulator, cluttered_segments
from .fvcache import as_cache
from .receptive import ReceptiveField, input_shape
from .search import SearchAccumulator, SearchResult
from .stats import NeuronStats, StatsAccumulator

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib) in figure(); cnnlens.attribution in building_blocks
# and unit_projections (start-up: `import cnnlens.inside` does not load it, 0.1–0.2 s); maximize in _render, looked up
# when a render starts (the tests count its calls through cnnlens.inside.maximize).

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# one scan for every channel of every chosen layer
@dataclass(frozen=True)
class LayerScan(Result):
    """One layer's part of a microscope scan.

    shape: (C, H, W) of the layer's output for one image; rf: its receptive field;
    top: each channel's top-k images and patches (:class:`SearchResult`);
    stats: per-channel statistics (:class:`NeuronStats`: histogram, class means, selectivity);
    concepts: each unit's network-dissection label and IoU (:class:`~cnnlens.inside.dissect.LayerDissection`),
    when the data has concept masks, else None.
    """

    layer: str
    shape: tuple[int, ...]
    rf: ReceptiveField
    top: SearchResult
    stats: NeuronStats
    concepts: Any = None

    @property
    def channels(self) -> int:
        return self.shape[0]


@dataclass(frozen=True)
class MicroscopeScan(Result):
    """Per-layer top-k patches and statistics of every channel, from one scan (layers in the order given)."""

    layers: dict
    count: int
    settings: dict = field(default_factory=dict)

    def __getitem__(self, layer: str) -> LayerScan:
        return layer_entry(self.layers, layer, "scanned")


class MicroscopeAccumulator:
    """Top-k patches (:class:`SearchAccumulator`) and statistics (:class:`StatsAccumulator`) of every
    channel of several layers, fed by one forward per batch; ``merge`` combines shards.

        acc = MicroscopeAccumulator(model, ["features.1", "features.4"], edges=layer_edges(model, data, ...))
        (micro,) = scan(model, data, [acc])
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[LayerRef],
        k: int = 9,
        *,
        edges: dict,
        input_size: tuple[int, int] | None = None,
        num_classes: int | None = None,
        max_crop: int | None = None,
        zero: float = 0.0,
        rfs: dict | None = None,
        patches: bool = False,
    ):
        names = resolve_layers(model, layers)
        missing = [n for n in names if n not in edges]
        if missing:
            raise ValueError(f"no histogram edges for layer(s) {', '.join(missing)}; build them with layer_edges()")
        self.layers = tuple(names)
        self.k = int(k)
        rfs = rfs or {}  # receptive fields known already (by layer name), else traced here
        # patches=False: each channel's top-k as (image index, position, activation), the patches cut when drawn
        self.search = {
            n: SearchAccumulator(
                model, n, k=k, input_size=input_size, max_crop=max_crop, rf=rfs.get(n), patches=patches
            )
            for n in names
        }
        self.stats = {n: StatsAccumulator(n, edges[n], num_classes=num_classes, zero=zero) for n in names}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.count = 0

    def update(self, batch: Batch) -> None:
        self.count += int(batch.x.shape[0])
        for n in self.layers:
            a = batch.acts[n]
            self.shapes.setdefault(n, tuple(a.shape[1:]))
            self.stats[n].update(batch)  # first: its pass over the layer leaves each image's maxima for the search
            self.search[n].update(batch)

    def merge(self, other: MicroscopeAccumulator) -> MicroscopeAccumulator:
        if self.layers != other.layers:
            raise ValueError("cannot merge microscope scans of different layers")
        for n in self.layers:
            self.search[n].merge(other.search[n])
            self.stats[n].merge(other.stats[n])
        for n, s in other.shapes.items():
            self.shapes.setdefault(n, s)
        self.count += other.count
        return self

    def compute(self) -> MicroscopeScan:
        if not self.shapes:
            raise ValueError("the microscope scan saw no images: the dataset (or this shard) is empty")
        out = {}
        for n in self.layers:
            top = self.search[n].compute()
            out[n] = LayerScan(n, self.shapes[n], top.rf, top, self.stats[n].compute())
        return MicroscopeScan(out, self.count, settings={"k": self.k})


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@needs_autograd
def layer_edges(model: nn.Module, data, layers: Sequence[LayerRef], bins: int = 40, look: int = 64) -> dict:
    """Histogram bin edges per layer from ONE forward over the first ``look`` samples (as
    :func:`cnnlens.inside.stats.default_edges`, for many layers at once): [min(0, lo), hi + 10 % of the span]."""
    names = resolve_layers(model, layers)
    dataset = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
    try:
        available = len(dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; an unsized one raises here, caught below
        xs = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(min(look, available))])
    except Exception as e:  # noqa: BLE001
        raise ValueError("cannot look at the first samples to choose histogram bins; pass edges=...") from e

    # in batches (64 images of 224² through EfficientNet at once took 2 GB); only each layer's extremes are kept
    bs = check_batch_size(None, xs[:1])
    ext: dict = {}
    with LayerTap(model, names, detach=True) as tap, torch.no_grad():
        for s0 in range(0, len(xs), bs):
            tap.run(xs[s0 : s0 + bs].to(_device(model)))
            for n in names:
                a = tap[n]
                lo, hi = float(a.min()), float(a.max())
                old = ext.get(n)
                ext[n] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    out = {}
    for n, (amin, amax) in ext.items():
        lo, hi = min(0.0, amin), amax
        if hi <= lo:
            hi = lo + 1.0
        out[n] = torch.linspace(lo, hi + 0.1 * (hi - lo), bins + 1, dtype=torch.float64)
    return out


@needs_autograd
def microscope_scan(
    model: nn.Module,
    data,
    layers: Sequence[LayerRef],
    k: int = 9,
    *,
    bins: int = 40,
    edges: dict | None = None,
    batch_size: int = 64,
    device=None,
    progress=None,
    max_crop: int | None = None,
    patches: bool = False,
    concepts: Any = None,
    layout: str | dict | None = None,
) -> MicroscopeScan:
    """Every channel of every layer in ``layers``: top-k images and statistics, in ONE scan over ``data``.

    Each channel keeps its top-k as (image index, position, activation); its patches are cut from ``data`` when
    drawn (``.top.patches(data, channels)``), so the result stays small on a real network (``patches=True`` keeps
    float32 patches in ``.top.crops``, as :func:`dataset_search` does). ``layout``: "nchw" / "nhwc" for a layer
    output that reads both ways (see :func:`cnnlens.scanning.scan`).

    ``concepts``: network dissection (Bau et al. 2017, :mod:`cnnlens.inside.dissect`) in the same scan —
    ``(segments, names)`` (N×H×W concept labels, −1 for none), ``False`` for none, or ``None`` (the default):
    the data's own concepts where it has them (cluttered digits: the ten digits and the clutter). Each
    :class:`LayerScan` then has ``.concepts``: every unit's label and IoU.

    Example::

        micro = microscope_scan(cnnlens.load_model("digits-cnn"), "digits", ["features.1", "features.4"])
        micro["features.4"].top.patches("digits", [5])[0]   # channel 5's nine best patches (9×1×h×w)
        micro["features.4"].stats.selectivity     # per channel, (μ_max − μ_rest)/(μ_max + μ_rest)
    """
    data = as_dataset(data, model)
    names = resolve_layers(model, layers)
    if edges is None:
        edges = layer_edges(model, data, names, bins)
    spec = getattr(model, "spec", None)
    acc = MicroscopeAccumulator(
        model,
        names,
        k,
        edges=edges,
        input_size=data_input_size(data, model),
        num_classes=getattr(spec, "num_classes", None) or None,
        max_crop=max_crop,
        patches=patches,
    )
    dis = _dissection(data, names, concepts)
    res, *more = scan(
        model,
        data,
        [acc] + ([dis] if dis is not None else []),
        batch_size=batch_size,
        device=device,
        progress=progress,
        layout=layout,
    )
    if more:
        found = more[0].layers
        res = MicroscopeScan(
            {n: replace(ls, concepts=found.get(n)) for n, ls in res.layers.items()},
            res.count,
            settings={**res.settings, "dissection": more[0].settings},
        )
    return res


def _dissection(data, names: list[str], concepts: Any):
    """The dissection accumulator for ``microscope_scan(concepts=...)``, or None."""
    if concepts is False:
        return None
    if concepts is None:
        if getattr(data, "ink", None) is None or getattr(data, "clutter", None) is None:
            return None
        concepts = cluttered_segments(data)
    if not isinstance(concepts, tuple) or len(concepts) != 2:
        raise TypeError("concepts must be (segments N×H×W, names), False, or None (the data's own)")
    return DissectionAccumulator(names, concepts[0], concepts[1])


# ---------------------------------------------------------------------------
# batched feature visualisation
@dataclass(frozen=True)
class ChannelViews(Result):
    """Feature visualisations of channels of one layer.

    images: C×S×Cin×H×W (S images per channel: 1, or a diversity set); activation: C×S,
    each image's mean activation of its channel (the channel objective, without penalties);
    start / objective: C×S, the whole objective J (with penalties and diversity) on the
    starting noise and on the result; settings: what ran.
    """

    layer: str
    channels: tuple[int, ...]
    images: torch.Tensor
    activation: torch.Tensor
    start: torch.Tensor
    objective: torch.Tensor
    settings: dict = field(default_factory=dict)

    def of(self, channel: int) -> torch.Tensor:
        """S×Cin×H×W images of one channel."""
        if channel not in self.channels:
            raise ValueError(f"channel {channel} was not visualised; visualised: {list(self.channels)[:10]}...")
        return self.images[self.channels.index(channel)]

    def figure(self, ncols: int = 8):
        from ..viz import image_grid

        imgs = [im for row in self.images for im in row]
        S = self.images.shape[1]
        titles = [f"ch {c}" + (f" #{s}" if S > 1 else "") for c in self.channels for s in range(S)]
        return image_grid(imgs, titles, ncols=ncols)


def robust_transforms(size: int) -> dict:
    """Transformation robustness for an image of side ``size`` (as Lucent's standard transforms,
    scaled): jitter by up to size/16 px, zoom ×[0.9, 1.1], rotate ±10°."""
    return {"jitter": max(1, int(size) // 16), "scale": 0.1, "rotate": 10}


def _mean_channel(model, layer, images, channels) -> torch.Tensor:
    with LayerTap(model, [layer], stop_after=layer, detach=True) as tap, torch.no_grad():
        tap.run(images.to(_device(model)))
        a = tap[layer].float()
    idx = torch.as_tensor(channels, device=a.device)
    return a[torch.arange(len(idx), device=a.device), idx].flatten(1).mean(1).cpu()


#: input values per optimisation of :func:`maximize_channels` on the CPU (16 images of 3×128×128): a forward and a
#: backward per step keep every activation, so the best batch is not the forward-only rule's; 16 was fastest per
#: channel in ``benchmarks/bench_microscope.py`` and ``benchmarks/whole_layer.py`` (docs/benchmarks.md, the microscope)
FV_BATCH_VALUES = 16 * 3 * 128 * 128
#: the arrays a channel's render gives (and the cache keeps), in :class:`ChannelViews`' order
_ARRAYS = ("images", "activation", "start", "objective")


@needs_autograd
def maximize_channels(
    model: nn.Module,
    layer: LayerRef,
    channels: Sequence[int] | None = None,
    steps: int = 128,
    *,
    size: int | tuple[int, int] | None = None,
    robust: bool = False,
    diversity: int = 1,
    diversity_weight: float | Sequence[float] | torch.Tensor = 1.0,
    batch_size: int | None = None,
    lr: float = 0.05,
    param: str = "fourier",
    seed: int = 0,
    redirect_relu: bool = True,
    cache=None,
    progress: Callable[[int, int], None] | None = None,
    **settings: Any,
) -> ChannelViews:
    """Feature visualisations of many channels in one optimisation: x*_c = argmax_x mean_ij a_c,ij(x).

    A batch of images, one channel objective each (``batch_size`` channels per
    optimisation; default on the CPU: :data:`FV_BATCH_VALUES` input values per optimisation,
    16 channels at 3×128×128 — measured fastest, larger batches only thrash the caches;
    on a GPU :func:`cnnlens.batching.check_batch_size`'s rule; on a CPU with several torch threads,
    several optimisations run side by side on private copies of the model, one thread each); with
    ``diversity=n`` each channel gets a set of n images and the objective ``mean a_c + w_c · diversity`` (−mean
    cosine similarity of the set's Gram matrices at the layer) pushes them apart. ``robust=True`` adds
    random jitter, zoom and rotation before each step (:func:`robust_transforms`).
    Other keywords go to :func:`maximize` (``tv``, ``l2_decay``, ``blur_every``, ...).
    ``redirect_relu`` (default on): a channel that is inactive on the starting noise still
    gets a gradient (see :func:`maximize`), so no visualisation stays grey.

    Every channel (or diversity set) starts from the noise a render of that channel alone
    would draw with this seed and sees the same transforms, so channel c's images equal
    ``maximize(model, objectives.channel(layer, c), noise="shared", ...)`` (``noise=n`` for a set of n)
    up to float rounding — batching changes the speed, not the result.

    ``cache``: a folder (or a :class:`cnnlens.inside.fvcache.FeatureCache`) where each channel's result is
    kept under a key of the model's weights, the layer, the channel and every setting here; channels
    found there are not rendered again.

    Example::

        v = maximize_channels(model, "features.4", range(32), steps=128, robust=True, cache="fv-cache")
        v.images[5, 0]      # channel 5's visualisation; v.activation[5, 0] its mean activation
    """
    name, (cin, H, W), chans, n, w, per = _check_channels(
        model, layer, channels, size, settings.get("channels"), diversity, diversity_weight, batch_size
    )
    if robust:
        for key, v in robust_transforms(min(H, W)).items():
            settings.setdefault(key, v)
    settings.pop("channels", None)
    settings_out = {"steps": steps, "size": [H, W], "robust": robust, "diversity": n, "batch_size": per, "lr": lr}
    settings_out |= {"redirect_relu": redirect_relu, "param": param, "seed": seed, **settings}
    if n > 1:
        settings_out["diversity_weight"] = w.tolist()

    store = as_cache(cache, model)
    found, keys = _cached(store, name, chans, settings_out, (n, cin, H, W), w)
    todo = [i for i, c in enumerate(chans) if c not in found]
    fresh = {}
    if todo:
        how = (steps, H, W, lr, param, seed, redirect_relu, progress, settings)
        fresh = _render(model, name, [chans[i] for i in todo], w[todo], n, per, *how)
    if store is not None:
        for c, arrays in fresh.items():
            store.save(name, c, keys[c], arrays)
    rows = [found[c] if c in found else fresh[c] for c in chans]
    as_stored = store is not None  # float32 as stored, so a result read back equals the one computed
    cat = {k: torch.stack([r[k].float() if as_stored else r[k] for r in rows]) for k in _ARRAYS}
    if progress is not None and not todo:
        progress(len(chans) * steps, len(chans) * steps)
    return ChannelViews(
        name, tuple(chans), cat["images"], cat["activation"], cat["start"], cat["objective"], settings_out
    )


def _check_channels(model, layer, channels, size, in_channels, diversity, diversity_weight, batch_size):
    """:func:`maximize_channels`' settings checked: (layer name, input (C, H, W), channels, images per channel,
    diversity weight per channel, channels per optimisation)."""
    name, _ = resolve_layer(model, layer)
    cin, H, W = input_shape(model, size, in_channels)
    with LayerTap(model, [name], stop_after=name, detach=True) as tap, torch.no_grad():
        tap.run(torch.full((1, cin, H, W), 0.5, device=_device(model)))
        C = tap[name].shape[1]
    chans = list(range(C)) if channels is None else [int(c) for c in channels]
    if not chans:
        raise ValueError("give at least one channel (or None for all)")
    bad = [c for c in chans if not 0 <= c < C]
    if bad:
        raise ValueError(f"channel {bad[0]} is out of range: layer {name!r} has {C} channels")
    n = int(diversity)
    if n < 1:
        raise ValueError("diversity must be ≥ 1 (images per channel)")
    w = torch.as_tensor(diversity_weight, dtype=torch.float32).flatten()
    if w.numel() not in (1, len(chans)):
        raise ValueError(f"diversity_weight: give one number or one per channel ({len(chans)})")
    w = w.expand(len(chans)) if w.numel() == 1 else w
    if batch_size is None:  # images per optimisation, in whole sets of n
        probe = torch.empty(1, cin, H, W, device=_device(model))
        auto = check_batch_size(None, probe)
        if probe.device.type == "cpu":
            auto = int(min(512, max(1, round(FV_BATCH_VALUES / (cin * H * W)))))
        per = max(1, auto // n)
    else:
        per = int(batch_size)
    if per < 1:
        raise ValueError("batch_size must be ≥ 1 (channels per optimisation)")
    return name, (cin, H, W), chans, n, w, per


def _cached(store, name: str, chans: list[int], settings_out: dict, shape: tuple, w: torch.Tensor):
    """The channels ``store`` already holds ({channel: arrays}) and every channel's key ({channel: key});
    both empty without a store. ``shape``: (images per channel, C, H, W)."""
    found: dict[int, dict] = {}
    keys: dict[int, str] = {}
    if store is not None:
        n, cin, H, W = shape
        what = {k: v for k, v in settings_out.items() if k not in ("batch_size", "diversity_weight")}
        what["input"] = [cin, H, W]
        shapes = {"images": (n, cin, H, W), "activation": (n,), "start": (n,), "objective": (n,)}
        for i, c in enumerate(chans):
            keys[c] = store.key(name, c, {**what, **({"diversity_weight": float(w[i])} if n > 1 else {})})
            got = store.load(name, c, keys[c], shapes)
            if got is not None:
                found[c] = got
    return found, keys


def _fv_models(model: nn.Module, parts: int) -> list[nn.Module]:
    """The models the optimisations of :func:`maximize_channels` run on: the model itself; or, on a CPU with
    several torch threads and several optimisations to run, a private copy per thread (each runs whole
    optimisations on one torch thread, and the user's model is never touched from another thread, so an
    interrupted call leaves it as it was; side by side on one thread each is faster than one after the other on
    two threads, docs/benchmarks.md — a batch of 16 128² images does not keep two threads busy through every small
    convolution). A model that cannot be copied runs alone."""
    k = min(torch.get_num_threads(), parts)
    if k < 2 or _device(model).type != "cpu":
        return [model]

    try:
        return [copy.deepcopy(model) for _ in range(k)]
    except Exception as e:  # noqa: BLE001 - any failure to copy: run the optimisations one after another
        log.info(
            "maximize_channels: the model cannot be copied (%s); optimisations run one after another",
            str(e).splitlines()[0] if str(e) else type(e).__name__,
        )
        return [model]


def _render(model, name, chans, w, n, per, steps, H, W, lr, param, seed, redirect_relu, progress, settings) -> dict:
    """{channel: {"images": n×Cin×H×W, "activation": n, "start": n, "objective": n}}, ``per`` channels per
    optimisation; each set of n images starts from the noise of a batch of n (so from the same noise
    whichever channels share its optimisation). Optimisations run side by side on private copies of the model
    when that is faster (:func:`_fv_models`); the results are the same up to float rounding."""
    from .maximize import maximize, objectives

    total = len(chans) * steps
    models = _fv_models(model, -(-len(chans) // per))
    if len(models) > 1:  # whole rounds: every thread busy to the end (112 channels on 2 threads: 8 × 14, not 7 × 16)
        rounds = math.ceil(len(chans) / (per * len(models)))
        per = math.ceil(len(chans) / (rounds * len(models)))
    starts_at = list(range(0, len(chans), per))
    done = {s: 0 for s in starts_at}
    lock = threading.Lock()
    out: dict[int, tuple] = {}

    def optimise(mdl: nn.Module, s: int) -> None:
        part = chans[s : s + per]
        J = objectives.channel(name, [c for c in part for _ in range(n)])
        if n > 1:
            div = objectives.diversity(name, n)
            wp = w[s : s + per].repeat_interleave(n)
            J = J + type(div)(lambda c: wp.to(c.image) * div(c), div.name, div.layers, False, None)

        def prog(d, _tot, s=s, m=len(part)):
            if progress is not None:
                with lock:
                    done[s] = d * m
                    progress(sum(done.values()), total)

        v = maximize(
            mdl,
            J,
            steps,
            size=(H, W),
            lr=lr,
            param=param,
            seed=seed,
            redirect_relu=redirect_relu,
            noise="shared" if n == 1 else n,
            progress=prog,
            **settings,
        )
        out[s] = (v.images, _mean_channel(mdl, name, v.images, [c for c in part for _ in range(n)]), v.start, v.final)

    if len(models) == 1:
        for s in starts_at:
            optimise(model, s)
    else:
        _side_by_side(models, starts_at, optimise)
    images, acts, starts, finals = zip(*(out[s] for s in starts_at), strict=True)
    imgs, act, start, final = torch.cat(images), torch.cat(acts), torch.cat(starts), torch.cat(finals)
    m = len(chans)
    imgs, act, start, final = imgs.view(m, n, *imgs.shape[1:]), act.view(m, n), start.view(m, n), final.view(m, n)
    return {
        c: {"images": imgs[i], "activation": act[i], "start": start[i], "objective": final[i]}
        for i, c in enumerate(chans)
    }


def _side_by_side(models: list[nn.Module], parts: list[int], optimise: Callable[[nn.Module, int], None]) -> None:
    """``optimise(model, part)`` for every part, on a thread per model (one torch thread each), taking the next
    part as each finishes; the first error is raised here once the threads stop."""
    todo: queue.Queue = queue.Queue()
    for s in parts:
        todo.put(s)
    errors: list[BaseException] = []

    def work(mdl: nn.Module) -> None:
        with torch.enable_grad():
            while not errors:
                try:
                    s = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    optimise(mdl, s)
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                    errors.append(e)

    with num_threads(1):
        threads = [
            threading.Thread(target=work, args=(m,), name=f"cnnlens-fv-{i}", daemon=True) for i, m in enumerate(models)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException as e:  # Ctrl-C: no new optimisation starts; the copies are dropped
            errors.append(e)
            raise
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------
# building blocks
@dataclass(frozen=True)
class BuildingBlocks(Result):
    """At each position of a layer, what fires and what it contributes to the explained class.

    activations: N×C×h×w; contributions: N×C×h×w, A_k(i, j) · ∂y/∂A_k(i, j);
    classes: N explained classes; score: N their scores. ``contributions.sum(1)``
    is the first-order (gradient × activation) map of the class at the layer; on a
    GAP + linear head it equals Grad-CAM before its ReLU.
    """

    layer: str
    activations: torch.Tensor
    contributions: torch.Tensor
    classes: torch.Tensor
    score: torch.Tensor
    settings: dict = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.activations.shape[-2]), int(self.activations.shape[-1])

    def at(self, n: int, i: int, j: int, k: int = 6, by: str = "activation") -> list[dict]:
        """The ``k`` channels at sample n, position (i, j) with the largest activation (or ``by="contribution"``)."""
        if by not in ("activation", "contribution"):
            raise ValueError("by must be 'activation' or 'contribution'")
        a = self.activations[n, :, i, j]
        c = self.contributions[n, :, i, j]
        key = a if by == "activation" else c
        order = torch.sort(key, descending=True, stable=True).indices[:k]
        return [{"channel": int(ch), "activation": float(a[ch]), "contribution": float(c[ch])} for ch in order]


@needs_autograd
def building_blocks(
    model: nn.Module, x: torch.Tensor, layer: LayerRef, target: Any = "predicted", *, y: torch.Tensor | None = None
) -> BuildingBlocks:
    """Per position of ``layer``: every channel's activation and its contribution A·∂y/∂A to the target score.

    One forward and one backward from the score down to the layer only.

    Example::

        bb = building_blocks(model, x, "features.7")
        bb.at(0, 3, 4)   # the channels that fire most at row 3, column 4 of sample 0, with their contributions
    """
    from ..attribution.cam import gradcam_tap, layer_gradient
    from ..attribution.common import prepare

    p = prepare(model, x, target, y, "building_blocks")
    name = resolve_layer(model, layer)[0]
    tap, leaf = gradcam_tap(model, p, name)
    with tap, torch.enable_grad():
        A, G, classes, s = layer_gradient(tap, leaf, p, p.x)
    if A.dim() != 4:
        raise ValueError(f"layer {name!r} has no spatial grid (N×C); building blocks need an N×C×H×W layer")
    A, G = A.float().cpu(), G.float().cpu()
    return BuildingBlocks(name, A, A * G, classes.cpu(), s.float().cpu(), settings={"target": str(target)})


# ---------------------------------------------------------------------------
# the rest of a unit page
@dataclass(frozen=True)
class ClassInfluence(Result):
    """How much each channel of a layer drives each class (means over the images seen).

    classes: K' classes; taylor: K'×C' mean Σ_ij a·∂y_c/∂a (None when not computed); ablation: K'×C' mean drop
    of y_c when the channel is zeroed (None when not computed); C' the channels in ``settings["channels"]``.
    """

    layer: str
    classes: tuple[int, ...]
    taylor: torch.Tensor | None
    ablation: torch.Tensor | None
    count: int
    settings: dict = field(default_factory=dict)

    def top(self, channel: int, n: int = 5) -> list[tuple[int, float]]:
        """The n classes whose score the channel raises most: (class, drop when zeroed, or a·∂y/∂a)."""
        chans = self.settings.get("channels")
        col = chans.index(channel) if chans is not None else channel
        scores = self.ablation if self.ablation is not None else self.taylor
        assert scores is not None  # class_influence computes at least one of them
        v = scores[:, col]
        order = torch.sort(v, descending=True, stable=True).indices[:n]
        return [(self.classes[i], float(v[i])) for i in order.tolist()]


@needs_autograd
def class_influence(
    model: nn.Module,
    x: torch.Tensor,
    layer: LayerRef,
    classes: Sequence[int] | None = None,
    *,
    channels: Sequence[int] | None = None,
    ablation: bool = True,
    taylor: bool = True,
    batch_size: int = 32,
    chunk: int = 16,
    logits: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClassInfluence:
    """The influence of each channel on each class's score, over images x (means over the images):
    taylor[c, k] = Σ_ij a_k,ij · ∂y_c/∂a_k,ij, and ablation[c, k] = y_c(x) − y_c(x with channel k zeroed),
    as :func:`cnnlens.inside.influence` for one class — here every class at once: one backward per class
    from the logits down to the layer only, and one ablated forward per channel (chunked) for all classes.

    A channel's values do not depend on the other channels asked for, so a unit page asks for its own channel
    only (``channels=[c]``: one forward and one ablated forward per image) and ``taylor=False`` skips the
    backward passes (``taylor`` is then None). ``logits``: the model's N×K logits on x, when known (from a cache):
    with ``taylor=False`` and given ``channels`` the plain forward is skipped, so a channel costs one ablated
    forward per image. ``progress(done, total)`` is called after each backward and each ablated chunk.
    """
    name = resolve_layer(model, layer)[0]
    if not (taylor or ablation):
        raise ValueError("ask for taylor=True, ablation=True or both")
    dev = _device(model)
    batches = max(1, math.ceil(len(x) / batch_size))
    sums = _InfluenceSums(model, name, classes, channels, taylor, ablation, chunk, batches, progress)
    skip = logits is not None and not taylor and channels is not None
    if logits is not None and tuple(logits.shape[:1]) != (len(x),):
        raise ValueError(f"logits has {logits.shape[0]} rows for {len(x)} images; give the logits of x")
    for s0 in range(0, len(x), batch_size):
        xb = x[s0 : s0 + batch_size].to(dev)
        if skip and logits is not None:  # the plain forward is known: only the ablated ones run
            sums.add_known(xb, logits[s0 : s0 + batch_size].to(dev))
        else:
            sums.add(xb)
    if sums.cls is None:
        raise ValueError("class influence needs at least one image")
    m = max(1, sums.seen)
    return ClassInfluence(
        name,
        sums.cls,
        (sums.tay / m).float() if taylor else None,
        (sums.abl / m).float() if ablation else None,
        sums.seen,
        settings={"ablation": ablation, "taylor": taylor, "channels": sums.chans},
    )


class _InfluenceSums:
    """:func:`class_influence`'s sums over the batches: Taylor terms and ablation drops, classes × channels
    (float64), the classes (from the first batch's logits) and the images seen; ``progress`` after each backward
    and each ablated chunk."""

    def __init__(self, model, name, classes, channels, taylor, ablation, chunk, batches, progress) -> None:
        self.model, self.name, self.classes, self.channels = model, name, classes, channels
        self.taylor, self.ablation, self.chunk, self.batches, self.progress = taylor, ablation, chunk, batches, progress
        self.tay: Any = None
        self.abl: Any = None
        self.cls: tuple[int, ...] | None = None
        self.chans: list[int] = []
        self.seen = self.done = 0

    def step(self, total: int) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, total)

    def check_classes(self, K: int) -> tuple[int, ...]:
        cls = tuple(range(K)) if self.classes is None else tuple(int(c) for c in self.classes)
        if cls and (min(cls) < 0 or max(cls) >= K):
            raise ValueError(f"class {max(cls)} is out of range: the model has {K} classes")
        return cls

    def add_known(self, xb: torch.Tensor, logits: torch.Tensor) -> None:
        """A batch whose plain logits are known: only the ablated forwards run."""
        chans = self.chans = [int(c) for c in self.channels]
        if self.cls is None:
            self.cls = self.check_classes(logits.shape[1])
            self.abl = torch.zeros(len(self.cls), len(chans), dtype=torch.float64)
        total = self.batches * math.ceil(len(chans) / self.chunk)
        self.ablate(xb, logits[:, list(self.cls)], chans, total)
        self.seen += len(xb)

    def add(self, xb: torch.Tensor) -> None:
        """A batch: the plain forward, a backward per class to the layer (``taylor``), the ablated forwards."""
        taylor, name = self.taylor, self.name
        with torch.enable_grad() if taylor else torch.no_grad(), LayerTap(self.model, [name], detach=not taylor) as tap:
            # so the graph reaches the layer (weights frozen)
            logits = tap.run(xb.detach().requires_grad_(True) if taylor else xb)
            a = tap[name]
            if a.dim() != 4:
                raise ValueError(f"layer {name!r} has no spatial grid (N×C); class influence reads N×C×H×W layers")
            C = a.shape[1]
            chans = self.chans = list(range(C)) if self.channels is None else [int(c) for c in self.channels]
            if chans and max(chans) >= C:
                raise ValueError(f"channel {max(chans)} is out of range: layer {name!r} has {C} channels")
            if self.cls is None:
                self.cls = cls = self.check_classes(logits.shape[1])
                self.tay = torch.zeros(len(cls), len(chans), dtype=torch.float64) if taylor else None
                self.abl = torch.zeros(len(cls), len(chans), dtype=torch.float64) if self.ablation else None
            cls = self.cls
            ablated = math.ceil(len(chans) / self.chunk) if self.ablation else 0
            total = self.batches * ((len(cls) if taylor else 0) + ablated)
            if taylor:
                for r, c in enumerate(cls):
                    (g,) = torch.autograd.grad(logits[:, c].sum(), a, retain_graph=r + 1 < len(cls))
                    self.tay[r] += (a.detach() * g).sum((2, 3))[:, chans].double().sum(0).cpu()
                    self.step(total)
            base = logits.detach()[:, list(cls)]
        if self.ablation:
            self.ablate(xb, base, chans, total)
        self.seen += len(xb)

    def ablate(self, xb: torch.Tensor, base: torch.Tensor, chans: list[int], total: int) -> None:
        """Add each channel's drop of the class scores when it is zeroed (``chunk`` channels per forward)."""
        n, cls = len(xb), list(self.cls or ())
        with torch.no_grad():
            for q in range(0, len(chans), self.chunk):
                part = chans[q : q + self.chunk]
                with LayerTap(self.model, [], edits={self.name: _zeroing(self.name, part, n)}) as tap2:
                    l2 = tap2.run(xb.repeat(len(part), *[1] * (xb.dim() - 1)))[:, cls]
                drop = base.unsqueeze(0) - l2.view(len(part), n, len(cls))  # part × n × classes
                self.abl[:, q : q + len(part)] += drop.sum(1).t().double().cpu()
                self.step(total)


def _zeroing(name: str, part: Sequence[int], n: int):
    """An edit for ``len(part)`` copies of a batch of n: copy i has channel part[i] of the layer zeroed."""

    def edit(mod, inp, out):
        if out.dim() != 4:
            raise ValueError(f"layer {name!r} has no spatial grid (N×C); class influence reads N×C×H×W layers")
        C = out.shape[1]
        if max(part) >= C:
            raise ValueError(f"channel {max(part)} is out of range: layer {name!r} has {C} channels")
        mask = torch.ones(len(part), 1, C, 1, 1, dtype=out.dtype, device=out.device)
        for i, ch in enumerate(part):
            mask[i, 0, ch] = 0
        return out * mask.expand(len(part), n, C, 1, 1).reshape(len(part) * n, C, 1, 1)

    return edit


@needs_autograd
def top_maps(
    model: nn.Module, data, layer_scan: LayerScan, channels: Sequence[int] | None = None, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images C×k×Cin×H×W, activation maps C×k×h×w): each channel's top-k dataset images and
    its map over each, from one batched forward over the distinct images."""
    top = layer_scan.top
    chans = list(top.channels) if channels is None else [int(c) for c in channels]
    rows = [top.row(c) for c in chans]
    idx = top.indices[rows]  # C×k
    uniq, inv = torch.unique(idx.flatten(), return_inverse=True)

    data = as_dataset(data, model)
    imgs = dataset_images(data, uniq.tolist())
    parts = []
    with LayerTap(model, [layer_scan.layer], stop_after=layer_scan.layer, detach=True) as tap, torch.no_grad():
        for s in range(0, len(imgs), batch_size):
            tap.run(imgs[s : s + batch_size].to(_device(model)))
            a = tap[layer_scan.layer].float().cpu()
            parts.append(a if a.dim() == 4 else a[:, :, None, None])
    maps = torch.cat(parts)  # U×C×h×w
    inv = inv.view(idx.shape)
    ch = torch.as_tensor(chans).view(-1, 1).expand_as(inv)
    return imgs[inv], maps[inv, ch]


def crop_fields(images: torch.Tensor, boxes: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Crop each image to its box (top, left, bottom, right; end exclusive; may reach past the border,
    which is filled with ``fill``): N×C×h×w, all boxes of one size (clipped to the image size)."""
    N, C, H, W = images.shape
    bh, bw = int(boxes[0, 2] - boxes[0, 0]), int(boxes[0, 3] - boxes[0, 1])
    h, w = min(bh, H), min(bw, W)
    # a field larger than the image: the crop is the whole image along that axis (as the dataset search's)
    t = boxes[:, 0].long() if bh <= H else torch.zeros(N, dtype=torch.long)
    l = boxes[:, 1].long() if bw <= W else torch.zeros(N, dtype=torch.long)
    rows = t.view(-1, 1, 1) + torch.arange(h).view(1, -1, 1)
    cols = l.view(-1, 1, 1) + torch.arange(w).view(1, 1, -1)
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    c = images[torch.arange(N).view(-1, 1, 1), :, rows.clamp(0, H - 1), cols.clamp(0, W - 1)]
    return torch.where(inside.unsqueeze(-1), c, torch.full((), fill, dtype=c.dtype)).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class UnitProjections(Result):
    """Deconvnet and guided backprop of a unit at its top images, cropped to the unit's field.

    deconv: N×Cin×h×w signed (None when the path to the layer is not a plain
    conv/ReLU/pool chain — ``deconv_error`` says why); guided: N×Cin×h×w signed.
    """

    layer: str
    channel: int
    deconv: torch.Tensor | None
    guided: torch.Tensor | None
    deconv_error: str | None = None
    guided_error: str | None = None


@needs_autograd
def unit_projections(
    model: nn.Module, images: torch.Tensor, layer: LayerRef, channel: int, positions: torch.Tensor, rf: ReceptiveField
) -> UnitProjections:
    """Deconvnet (Zeiler & Fergus) and guided backprop of unit (channel, positions[n]) on image n, both
    cropped to the unit's receptive field. Guided backprop runs once for the whole batch (each image's
    score is its own unit, so the per-image gradients do not mix)."""
    from ..attribution.guided import guided_summary

    name = resolve_layer(model, layer)[0]
    pos = torch.as_tensor(positions).long().view(-1, 2)
    boxes = torch.stack([torch.tensor(rf.box(int(i), int(j))) for i, j in pos.tolist()])
    dec = derr = None
    try:
        dec = deconvnet(model, images, name, channel, position="max").images
        # deconvnet's "max" is the first arg-max in row-major order, like the dataset search's position
        dec = crop_fields(dec, boxes)
    except ValueError as e:
        derr = str(e).splitlines()[0]
    gui = gerr = None
    try:
        x = images.to(_device(model)).detach().requires_grad_(True)
        with guided_relus() as mode, torch.enable_grad(), LayerTap(model, [name], stop_after=name) as tap:
            tap.run(x)
            a = tap[name]
            n = torch.arange(len(x), device=a.device)
            score = a[n, channel, pos[:, 0].to(a.device), pos[:, 1].to(a.device)] if a.dim() == 4 else a[n, channel]
            (g,) = torch.autograd.grad(score.sum(), x)
        guided_summary(mode)  # refuses a forward with no ReLU up to the layer, warns about other activations
        gui = crop_fields(g.detach().float().cpu(), boxes)
    except ValueError as e:
        gerr = str(e).splitlines()[0]
    return UnitProjections(name, int(channel), dec, gui, derr, gerr)


#: the modules whose outputs the microscope shows by default
ACTIVATIONS = ("ReLU", "ReLU6", "SiLU", "GELU", "Hardswish", "LeakyReLU", "ELU", "Mish")


def default_layers(model: nn.Module, most: int = 3) -> list[str]:
    """Activation modules (ReLU, SiLU, ...) that run once per forward with spatial maps, at most ``most``
    spread evenly in execution order (a module that runs twice, like torchvision's shared ReLU, is skipped)."""
    names = [n for n, m in model.named_modules() if type(m).__name__ in ACTIVATIONS and n]
    if not names:
        raise ValueError(
            "found no activation modules to look at; name the layers (--layers L1,L2; see `cnnlens layers --model M`)"
        )
    spec = getattr(model, "spec", None)
    size = getattr(spec, "input_size", None) or (64, 64)
    ch = getattr(spec, "channels", None) or 3
    seen: dict[str, list[int]] = {}

    def record(name):
        def edit(module, inputs, output):
            seen.setdefault(name, []).append(output.dim() if torch.is_tensor(output) else 0)
            return output

        return edit

    with LayerTap(model, edits={n: record(n) for n in names}, detach=True) as tap, torch.no_grad():
        tap.run(torch.rand(1, ch, *size, device=next(model.parameters()).device))
    spatial = [n for n, dims in seen.items() if dims == [4]]
    if len(spatial) > most:
        spatial = [spatial[round(i * (len(spatial) - 1) / (most - 1))] for i in range(most)]
    return spatial
