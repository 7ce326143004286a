"""Dataset search: the images (and image patches) that activate a channel most.

For each channel of a layer, one scan over a dataset keeps the k images whose
strongest unit in that channel is the highest, with that unit's position and the
patch of the image it sees (its receptive field, cut out when the image is seen,
so memory stays O(k × channels) whatever the dataset size). Runs as an
accumulator of :func:`cnnlens.scan.scan`, so it shares the forward pass with
evaluation and neuron statistics, and runs sharded under ``torchrun``.

Per image and channel c the score is ``max_ij a_c,ij`` at position
``argmax_ij a_c,ij`` (the first in row-major order on ties); images are ranked
by score, descending, ties by dataset index, so a merge of shards equals one pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..results import Result
from ..scan import Batch
from ..tap import LayerRef, resolve_layer
from .receptive import ReceptiveField, receptive_field
from .._autograd import needs_autograd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult(Result):
    """Top-k images of each channel, with the receptive-field patch of the strongest unit.

    activations: C×k, descending per row; indices: C×k dataset indices; positions:
    C×k×2 (row, col) in the layer's grid; labels: C×k true labels of those images;
    crops: C×k×Cin×h×w image patches (h, w = the receptive field, at most the image;
    parts outside the image are ``fill``); boxes: C×k×4 (top, left, bottom, right)
    of each unit's field in image pixels, end exclusive, before clipping;
    clipped: C×k, True where the field extends past the image border;
    class_histogram: C×K, how many of a channel's top-k images are of each class.
    """

    layer: str
    channels: tuple[int, ...]
    activations: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    labels: torch.Tensor
    crops: torch.Tensor
    boxes: torch.Tensor
    clipped: torch.Tensor
    class_histogram: torch.Tensor
    rf: ReceptiveField
    settings: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.activations.shape[1]

    def row(self, channel: int) -> int:
        """The row of a channel (by its index in the layer)."""
        if channel not in self.channels:
            raise ValueError(f"channel {channel} was not searched; searched: {list(self.channels)[:10]}...")
        return self.channels.index(channel)

    def figure(self, channels: Sequence[int] | None = None, n: int | None = None,
               class_names: Sequence[str] | None = None, tile: int = 64):
        """One row per channel: its top-n patches, each titled "activation · class" (✂: clipped at the border).

        Patches are upsampled nearest-neighbour to ``tile`` px (a 3×3 field stays a visible 3×3 block)."""
        from ._plot import mosaic_figure

        chans = list(channels) if channels is not None else list(self.channels)
        n = min(n or self.k, self.k)
        rows = [self.row(c) for c in chans]
        tiles = self.crops[rows, :n].reshape(len(rows) * n, *self.crops.shape[2:])
        labels = []
        for r in rows:
            for j in range(n):
                lab = int(self.labels[r, j])
                name = class_names[lab] if class_names and 0 <= lab < len(class_names) else "" if lab < 0 else str(lab)
                labels.append(f"{float(self.activations[r, j]):.2g}·{name}{'✂' if bool(self.clipped[r, j]) else ''}")
        labels = [t.rstrip("·") if t.endswith("·") else t for t in labels]
        return mosaic_figure(tiles, n, tile=tile, labels=labels, row_labels=[f"ch {c}" for c in chans],
                             title=f"{self.layer}: top-{n} patches ({self.rf.size[0]}×{self.rf.size[1]} px field, "
                                   f"shown at {tile} px, nearest-neighbour)")

    def never_fired(self) -> list[int]:
        """Channels whose strongest activation over the whole scan is ≤ 0 (they never fired: no patch to show)."""
        return [c for r, c in enumerate(self.channels) if not float(self.activations[r, 0]) > 0]


def image_max(batch: Batch, layer: str) -> torch.Tensor:
    """N×C: each image's largest activation per channel of ``layer`` (N×C×H×W or N×C), computed once per batch
    and shared by the accumulators of one scan (:meth:`cnnlens.scan.Batch.memo`)."""

    def fn():
        a = batch.acts[layer].detach()
        if a.dim() == 2:
            return a
        return a.reshape(a.shape[0], a.shape[1], -1).amax(2)

    return batch.memo(("image_max", layer), fn)


def _rank(values: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the positions of the top-k by (value desc, index asc): C×min(k, m)."""
    o1 = torch.sort(index, dim=1, stable=True).indices
    v1 = values.gather(1, o1)
    o2 = torch.sort(v1, dim=1, descending=True, stable=True).indices
    return o1.gather(1, o2)[:, :k]


class SearchAccumulator:
    """Keeps each channel's top-k (activation, image index, position, label, patch) during a scan.

    Build it before the scan (it computes the layer's receptive field on an input
    of ``input_size``); feed it to :func:`cnnlens.scan.scan` alone or next to other
    accumulators::

        acc = SearchAccumulator(model, "features.3", k=9, input_size=(32, 32))
        ev = EvaluationAccumulator(num_classes=10)
        search, evaluation = scan(model, "digits", [acc, ev])
    """

    def __init__(self, model: nn.Module, layer: LayerRef, channels: Sequence[int] | None = None, k: int = 9, *,
                 input_size: tuple[int, int] | int | None = None, rf: ReceptiveField | None = None,
                 max_crop: int | None = None, fill: float = 0.0):
        if k < 1:
            raise ValueError(f"k must be ≥ 1 (the number of images kept per channel), got {k}")
        name, _ = resolve_layer(model, layer)
        self.layer = name
        self.layers = (name,)
        self.k = int(k)
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        if self.channels is not None and (not self.channels or min(self.channels) < 0):
            raise ValueError("channels must be a non-empty list of channel indices ≥ 0 (or None for all)")
        self.rf = rf or receptive_field(model, name, input_size=input_size, probe=False)
        self.max_crop = max_crop
        self.fill = float(fill)
        self.num_classes = 0
        self._state: dict[str, torch.Tensor] | None = None

    # -- scan protocol --------------------------------------------------------
    def update(self, batch: Batch) -> None:
        a = batch.acts[self.layer].detach()
        if a.dim() == 2:
            a = a[:, :, None, None]
        if a.dim() != 4:
            raise ValueError(f"layer {self.layer!r} gives {a.dim()}-D outputs; dataset search needs N×C×H×W or N×C")
        if self.channels is None:
            self.channels = tuple(range(a.shape[1]))
        if max(self.channels) >= a.shape[1]:
            raise ValueError(f"channel {max(self.channels)} is out of range: layer {self.layer!r} has {a.shape[1]} channels")
        self.num_classes = max(self.num_classes, int(batch.logits.shape[1]) if batch.logits.dim() == 2 else 0)
        n, _, H, W = a.shape
        if self.channels == tuple(range(a.shape[1])):
            # each image's strongest unit per channel: one reduction over the contiguous maps, shared with
            # the layer's neuron statistics in the same scan
            vals = image_max(batch, self.layer)
            chan = None
        else:
            chan = torch.tensor(self.channels, device=a.device)
            vals = a[:, chan].reshape(n, len(self.channels), H * W).amax(2)
        vals = vals.t().float().cpu()  # C×N
        C = vals.shape[0]
        idx = batch.index.cpu().long().view(1, n).expand(C, n)
        st = self._state
        m = 0 if st is None else st["values"].shape[1]
        if m == self.k:
            # only images that reach a channel's k-th best can enter its top-k (ties go by dataset index)
            if not bool((vals >= st["values"][:, -1:]).any()):
                return
        cand_v = vals if st is None else torch.cat([st["values"], vals], 1)
        cand_i = idx if st is None else torch.cat([st["indices"], idx], 1)
        pick = _rank(cand_v, cand_i, self.k)  # C×k' positions into the candidates
        new = pick >= m
        if st is not None and m == pick.shape[1] and not bool(new.any()):
            return
        x = batch.x.detach()
        sample = (pick - m).clamp_min(0)  # for a new entry: its sample's index in this batch
        cn, sn = new.nonzero(as_tuple=True)
        k2 = pick.shape[1]
        if st is None:
            out = {"values": cand_v.gather(1, pick), "indices": cand_i.gather(1, pick),
                   "positions": torch.zeros(C, k2, 2, dtype=torch.long),
                   "labels": torch.zeros(C, k2, dtype=torch.long),
                   "boxes": torch.zeros(C, k2, 4, dtype=torch.long),
                   "clipped": torch.zeros(C, k2, dtype=torch.bool)}
            crops = None
        else:
            oi = pick.clamp_max(m - 1)
            rows = torch.arange(C).view(-1, 1)
            out = {key: st[key][rows, oi] for key in ("positions", "labels", "boxes", "clipped")}
            out["values"], out["indices"] = cand_v.gather(1, pick), cand_i.gather(1, pick)
            crops = st["crops"][rows, oi]
        hw = tuple(x.shape[-2:])
        win = (min(self.rf.size[0], hw[0]), min(self.rf.size[1], hw[1]))
        if crops is None:
            crops = torch.empty(C, k2, x.shape[1], *self._crop_size(win))
        if len(cn):
            # the new entries only: the position of each one's strongest unit (the first maximum, row-major),
            # its label, field and patch, cut from this batch's images
            s_new = sample[cn, sn]
            ch = cn if chan is None else chan.cpu()[cn]
            maps = a.reshape(n, a.shape[1], H * W)[s_new.to(a.device), ch.to(a.device)]  # E×HW
            flat = maps.argmax(1).cpu()
            ij = torch.stack([flat // W, flat % W], -1)
            out["positions"][cn, sn] = ij
            out["labels"][cn, sn] = batch.y.detach().view(-1).cpu().long()[s_new]
            box = self._boxes(ij, hw)
            out["boxes"][cn, sn] = box
            out["clipped"][cn, sn] = (box[:, 0] < 0) | (box[:, 1] < 0) | (box[:, 2] > hw[0]) | (box[:, 3] > hw[1])
            crops[cn, sn] = self._crops(x, s_new, box, win, hw)
        out["crops"] = crops
        self._state = out

    def _boxes(self, ij: torch.Tensor, hw) -> torch.Tensor:
        """E×4 (top, left, bottom, right) fields of E units (row, col), end exclusive, not clipped."""
        if self.rf.is_global:
            return torch.tensor([0, 0, *self.rf.input_size]).expand(len(ij), 4).clone()
        t = self.rf.offset[0] + ij[:, 0] * self.rf.stride[0]
        l = self.rf.offset[1] + ij[:, 1] * self.rf.stride[1]
        return torch.stack([t, l, t + self.rf.size[0], l + self.rf.size[1]], 1).long()

    def _crops(self, x, n, box, win, hw) -> torch.Tensor:
        """The E patches (E×Cin×h×w) of the fields ``box`` in the images ``x[n]``, gathered at once;
        the parts outside the image are ``fill``."""
        t, l = box[:, 0].clone(), box[:, 1].clone()
        if self.rf.is_global:
            t.zero_(), l.zero_()
        # a field larger than the image: the crop is the whole image along that axis
        if self.rf.size[0] > hw[0]:
            t.zero_()
        if self.rf.size[1] > hw[1]:
            l.zero_()
        dev = x.device
        rows = t.to(dev).view(-1, 1, 1) + torch.arange(win[0], device=dev).view(1, -1, 1)
        cols = l.to(dev).view(-1, 1, 1) + torch.arange(win[1], device=dev).view(1, 1, -1)
        inside = (rows >= 0) & (rows < hw[0]) & (cols >= 0) & (cols < hw[1])  # E×h×w
        c = x[n.to(dev).view(-1, 1, 1), :, rows.clamp(0, hw[0] - 1), cols.clamp(0, hw[1] - 1)]  # E×h×w×Cin
        c = torch.where(inside.unsqueeze(-1), c, torch.full((), self.fill, dtype=c.dtype, device=dev))
        c = c.permute(0, 3, 1, 2)
        size = self._crop_size(win)
        if tuple(size) != tuple(win):
            c = F.interpolate(c.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        return c.detach().float().cpu()

    def _crop_size(self, win):
        if self.max_crop is None or max(win) <= self.max_crop:
            return win
        s = self.max_crop / max(win)
        return (max(1, round(win[0] * s)), max(1, round(win[1] * s)))

    def merge(self, other: "SearchAccumulator") -> "SearchAccumulator":
        if other._state is None:
            return self
        if self._state is None:
            self._state, self.channels = other._state, other.channels
            self.num_classes = max(self.num_classes, other.num_classes)
            return self
        if self.channels != other.channels or self.layer != other.layer:
            raise ValueError("cannot merge dataset searches of different layers or channels")
        a, b = self._state, other._state
        cat = {key: torch.cat([a[key], b[key]], 1) for key in a}
        pick = _rank(cat["values"], cat["indices"], self.k)
        rows = torch.arange(pick.shape[0]).view(-1, 1)
        self._state = {key: v[rows, pick] for key, v in cat.items()}
        self.num_classes = max(self.num_classes, other.num_classes)
        return self

    def compute(self) -> SearchResult:
        if self._state is None:
            raise ValueError("dataset search saw no images: the dataset (or this shard) is empty")
        st = self._state
        K = max(self.num_classes, int(st["labels"].max()) + 1 if st["labels"].numel() else 0)
        hist = torch.zeros(st["labels"].shape[0], K, dtype=torch.long)
        hist.scatter_add_(1, st["labels"].clamp_min(0), (st["labels"] >= 0).long())
        return SearchResult(
            layer=self.layer, channels=tuple(self.channels), activations=st["values"], indices=st["indices"],
            positions=st["positions"], labels=st["labels"], crops=st["crops"], boxes=st["boxes"],
            clipped=st["clipped"], class_histogram=hist, rf=self.rf,
            settings={"k": self.k, "max_crop": self.max_crop, "fill": self.fill},
        )


def _input_size(data, model) -> tuple[int, int] | None:
    dataset = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
    try:
        x0 = dataset[0][0]
        if torch.is_tensor(x0) and x0.dim() == 3:
            return tuple(x0.shape[-2:])
    except Exception:  # noqa: BLE001 - an iterable dataset: fall back to the model's spec
        pass
    return getattr(getattr(model, "spec", None), "input_size", None)


@needs_autograd
def dataset_search(model: nn.Module, data, layer: LayerRef, channels: Sequence[int] | None = None, k: int = 9, *,
                   batch_size: int = 64, device=None, progress=None, max_crop: int | None = None) -> SearchResult:
    """Maximally activating images and patches: each channel's top-k over a dataset, in one scan.

    score(image, c) = max_ij a_c,ij(image); the patch is the receptive field of
    the unit at the arg-max, cut from the image (clipped at the border and marked so).

    Example::

        r = dataset_search(cnnlens.load_model("digits-cnn"), "digits", "features.3", k=9)
        r.activations[5]        # channel 5's nine best scores, descending
        r.figure(channels=[0, 1, 2]).savefig("top9.png")
    """
    from ..data import as_dataset
    from ..scan import scan

    data = as_dataset(data, model)
    acc = SearchAccumulator(model, layer, channels, k, input_size=_input_size(data, model), max_crop=max_crop)
    (res,) = scan(model, data, [acc], batch_size=batch_size, device=device, progress=progress)
    return res
