"""One streaming pass over a dataset, feeding mergeable accumulators.

An accumulator has three methods, ``update(batch)``, ``merge(other)`` and
``compute()``, and may name the layers it wants to read (``layers``). One forward
per batch feeds every accumulator: evaluation, dataset search and neuron
statistics share it. Memory does not grow with the dataset.

Under ``torchrun`` (``torch.distributed`` initialised) each process scans its own
shard, ``rank::world_size`` (no padding, so no sample is counted twice), and the
accumulators are gathered and merged on every process; the result equals one
process's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler, SequentialSampler

from .data import as_dataset
from .grid import as_grid, check_layout, grid_layout, to_grid
from .tap import LayerTap

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]


@dataclass
class Batch:
    """What each accumulator sees for one batch.

    x: inputs N×C×H×W in [0, 1]; y: labels (LongTensor N); logits: N×K (detached);
    index: each sample's index in the whole dataset; acts: the tapped layers'
    outputs (detached); model: the model (for accumulators that run their own passes);
    samples: how many samples this process's scan has in all (None if unknown).
    """

    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    index: torch.Tensor
    acts: dict[str, torch.Tensor] = field(default_factory=dict)
    model: nn.Module | None = None
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    samples: int | None = None

    def memo(self, key, fn: Callable[[], Any]) -> Any:
        """``fn()``, computed once per batch and ``key``: accumulators that read the same layer share their
        reductions (e.g. the per-image maximum of each channel, which dataset search and neuron statistics
        both need), so a layer's activations are read as few times as possible."""
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]


@runtime_checkable
class Accumulator(Protocol):
    @property
    def layers(self) -> Sequence[str]: ...

    def update(self, batch: Batch) -> None: ...

    def merge(self, other: Self) -> Self: ...

    def compute(self) -> Any: ...


def distributed_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Indexed(torch.utils.data.Dataset):
    """Wrap a dataset so each item carries its index in the whole dataset."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        j = self.indices[i]
        x, y = self.dataset[j]
        return x, y, j


def _loader_indices(loader, world: int) -> list[int] | None:
    """The dataset indices a DataLoader's sampler visits; None when that is the whole dataset.

    Sequential, shuffling and ``DistributedSampler``s cover the whole dataset (the
    scan shards it itself, without the distributed sampler's padding, and order
    does not matter to an accumulator); any other sampler (a subset, weights)
    is followed, with rank 0's draw broadcast so every process shards one list.
    """
    sampler, batch_sampler = loader.sampler, loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        indices = [int(i) for b in batch_sampler for i in b]
    elif isinstance(sampler, (SequentialSampler, DistributedSampler)):
        return None
    elif isinstance(sampler, RandomSampler) and not sampler.replacement and sampler.num_samples == len(loader.dataset):
        return None
    else:
        indices = [int(i) for i in sampler]
    if world > 1:
        box = [indices]
        dist.broadcast_object_list(box, src=0)
        indices = box[0]
    return indices


def _batches(data, batch_size: int, rank: int, world: int, num_workers: int):
    """Yield (x, y, index) batches of this process's shard, the shard's batch count and its number of samples
    (None where unknown: an iterable dataset)."""
    loader = data if isinstance(data, torch.utils.data.DataLoader) else None
    dataset = loader.dataset if loader is not None else data
    if loader is not None and isinstance(dataset, torch.utils.data.IterableDataset):
        # cannot index: take every world-th batch, count samples as they come
        def gen():
            seen = 0
            for b, (x, y) in enumerate(loader):
                n = len(x)
                if b % world == rank:
                    yield x, y, torch.arange(seen, seen + n)
                seen += n

        return gen(), None, None
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(
            f"cannot scan {type(data).__name__}: give a dataset name, an ImageFolder path, "
            "a torch Dataset or a DataLoader yielding (x, y)"
        )
    bs = loader.batch_size if loader is not None and loader.batch_size else batch_size
    collate = loader.collate_fn if loader is not None else None
    workers = loader.num_workers if loader is not None else num_workers
    indices = _loader_indices(loader, world) if loader is not None else None
    if indices is None:
        shard = _Indexed(dataset, range(rank, len(dataset), world))
    else:
        shard = _Indexed(dataset, indices[rank::world])
    dl = torch.utils.data.DataLoader(shard, batch_size=bs, shuffle=False, num_workers=workers)
    if collate is not None and collate is not torch.utils.data.default_collate:

        def gen():
            for b in range(0, len(shard), bs):
                items = [shard[i] for i in range(b, min(b + bs, len(shard)))]
                x, y = collate([(it[0], it[1]) for it in items])
                yield x, y, torch.tensor([it[2] for it in items])

        return gen(), (len(shard) + bs - 1) // bs, len(shard)
    return iter(dl), len(dl), len(shard)


def _forward(tap: LayerTap, x: torch.Tensor) -> torch.Tensor:
    """The logits of one batch through the tap; a layer whose output a later in-place op changes gets a copy
    passed on (the batch runs again), for this and every later batch."""
    logits = tap.run(x)
    changed = tap.changed()
    if changed:
        log.info(
            "layer(s) %s are changed in place later in the forward; the scan passes a copy on",
            ", ".join(changed),
        )
        assert tap.copy is not True  # the tap starts with copy=False; only names are added
        tap.copy = set(tap.copy or ()) | set(changed)
        logits = tap.run(x)
    if not torch.is_tensor(logits):
        raise TypeError(
            f"the model returned {type(logits).__name__}; cnnlens needs a tensor of logits "
            "(wrap the model so forward() returns it)"
        )
    return logits


def scan(
    model: nn.Module,
    data,
    accumulators: Iterable[Accumulator],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    num_workers: int = 0,
    layout: str | dict | None = None,
) -> list[Any]:
    """Run ``model`` once over ``data`` and feed every accumulator; return their ``compute()``.

    ``layout``: how 4-D layer outputs are read as grids, "nchw" or "nhwc" for every layer or
    ``{layer: layout}``; None decides from each module (:mod:`cnnlens.grid`), and a layer whose
    shape reads both ways with nothing to say which is refused in one line.

    ``data``: a dataset name (``"digits"``), an ImageFolder path, a torch
    ``Dataset`` of (x, y) or a ``DataLoader``. Under torch.distributed the shards
    are merged, and every process gets the same results.

    Example::

        acc = cnnlens.evaluation.EvaluationAccumulator(num_classes=10, topk=(1, 3))
        (result,) = scan(model, "digits", [acc])
    """
    accs = list(accumulators)
    if not accs:
        raise ValueError("scan needs at least one accumulator")
    data = as_dataset(data, model)
    rank, world = distributed_info()
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    layers = sorted({l for a in accs for l in getattr(a, "layers", ())})
    batches, total, samples = _batches(data, batch_size, rank, world, num_workers)

    given = layout if isinstance(layout, dict) else {n: layout for n in layers}
    for v in given.values():
        check_layout(v)
    layouts: dict = {"given": given}
    # the forward goes on with the layers' own outputs (no copy per layer and batch); a layer whose output a
    # later in-place op changes (``ReLU(inplace=True)`` after a conv) shows it in its version counter: that
    # batch runs again with a copy passed on for that layer, as for every later batch
    with LayerTap(model, layers, detach=True, copy=False) as tap, torch.no_grad():
        for b, (x, y, idx) in enumerate(batches):
            x = x.to(device)
            y = torch.as_tensor(y).to(device)
            logits = _forward(tap, x)
            batch = Batch(
                x=x,
                y=y,
                logits=logits.detach(),
                index=torch.as_tensor(idx),
                acts={n: _grid(tap, n, x, layouts) for n in tap.names},
                model=model,
                samples=samples,
            )
            with tap.paused():  # an accumulator's own forward passes (attacks, saliency) are not recorded
                for a in accs:
                    a.update(batch)
            if progress is not None:
                progress(b + 1, total)
    if world > 1:
        accs = _gather_merge(accs, world)
    return [a.compute() for a in accs]


def _grid(tap: LayerTap, name: str, x: torch.Tensor, layouts: dict | None = None) -> torch.Tensor:
    """A recorded output for the accumulators, as N×C×h×w: token outputs (N×tokens×C, timm ViT/DeiT) and
    channels-last ones (N×h×w×C, Swin, ConvNeXt blocks) as their grid (:func:`cnnlens.grid.as_grid`).

    ``layouts`` caches each layer's layout by output and input shape for the scan (found, and logged, once)."""
    out = tap.outputs[name]
    if torch.is_tensor(out):
        out = tap[name]  # refuses a record changed in place through memory it shares with another tensor
    if torch.is_tensor(out) and out.dim() in (3, 4):
        hw, module = (int(x.shape[-2]), int(x.shape[-1])), tap._modules.get(name)
        key = (name, tuple(out.shape[1:]), hw)
        if layouts is None or key not in layouts:
            given = (layouts or {}).get("given", {}).get(name)
            g = as_grid(out, tap.model, module, hw, name, given)  # finds the layout and logs it
            if layouts is not None:
                layouts[key] = grid_layout(out, tap.model, module, hw, name, given)
            return g
        layout, prefix = layouts[key]
        return to_grid(out, layout, prefix, hw)
    return out


def _gather_merge(accs: list[Accumulator], world: int) -> list[Accumulator]:
    gathered: list[list[Accumulator] | None] = [None] * world
    dist.all_gather_object(gathered, accs)
    merged, *rest = cast(list[list[Accumulator]], gathered)  # all_gather_object filled every slot
    for other in rest:
        merged = [m.merge(o) for m, o in zip(merged, other, strict=True)]
    return merged
