"""Dataset search: the images (and image patches) that activate a channel most.

For each channel of a layer, one scan over a dataset keeps the k images whose
strongest unit in that channel is the highest, with that unit's position and the
patch of the image it sees (its receptive field). Memory stays O(k × channels)
whatever the dataset size: the winners' images are kept (once each, shared by
all channels) and cut once at the end when every channel's k images are small
or the field covers most of the image, else each patch is cut when its image
arrives. Per batch, each image's maximum per channel is one reduction (shared
with neuron statistics of the same layer); a batch that reaches no channel's
k-th best costs nothing more. Runs as an accumulator of :func:`cnnlens.scanning.scan`,
so it shares the forward pass with evaluation and neuron statistics, and runs
sharded under ``torchrun``.

Per image and channel c the score is ``max_ij a_c,ij`` at position
``argmax_ij a_c,ij`` (the first in row-major order on ties); images are ranked
by score, descending, ties by dataset index, so a merge of shards equals one pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..autograd import needs_autograd
from ..data import as_dataset, data_input_size, dataset_images
from ..results import Result
from ..scanning import Batch, scan
from ..tap import LayerRef, resolve_layer
from .receptive import ReceptiveField, receptive_field

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib), in figure() and preview().

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult(Result):
    """Top-k images of each channel, with the receptive-field patch of the strongest unit.

    activations: C×k, descending per row; indices: C×k dataset indices; positions:
    C×k×2 (row, col) in the layer's grid; labels: C×k true labels of those images;
    crops: C×k×Cin×h×w image patches (h, w = the receptive field, at most the image;
    parts outside the image are ``fill``), or None for a search that kept no patches
    (``patches=False``: :meth:`patches` cuts them from the dataset when drawn); boxes: C×k×4 (top, left, bottom, right)
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
    crops: torch.Tensor | None
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

    def patches(
        self, data=None, channels: Sequence[int] | None = None, *, images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """C'×k×Cin×h×w: the top-k patches of ``channels`` (default: all searched), the kept ones, or cut now from
        the images of ``data`` (the dataset that was searched: its images are read again by index) or from
        ``images`` (C'×k×Cin×H×W, each channel's top-k images, e.g. from :func:`cnnlens.inside.top_maps`) —
        the same patches a search that kept them holds (:func:`cut_patches`, same fill and ``max_crop``).

            r = dataset_search(model, "digits", "features.3", patches=False)
            r.patches("digits", [5])[0]     # channel 5's nine patches, 9×1×h×w
        """
        chans = list(self.channels) if channels is None else [int(c) for c in channels]
        rows = [self.row(c) for c in chans]
        if self.crops is not None:
            return self.crops[rows]
        k2 = self.indices.shape[1]
        boxes = self.boxes[rows].reshape(-1, 4)
        if images is None:
            if data is None:
                raise ValueError("this search kept no patches: pass the dataset it searched (data=...) to cut them")
            uniq, inv = torch.unique(self.indices[rows].flatten(), return_inverse=True)
            imgs, n = dataset_images(data, uniq.tolist()), inv
        else:
            imgs = images.reshape(-1, *images.shape[2:])
            n = torch.arange(len(imgs))
        c = cut_patches(
            imgs, n, boxes, self.rf, fill=self.settings.get("fill", 0.0), max_crop=self.settings.get("max_crop")
        )
        return c.view(len(rows), k2, *c.shape[1:])

    def figure(
        self,
        channels: Sequence[int] | None = None,
        n: int | None = None,
        class_names: Sequence[str] | None = None,
        tile: int = 64,
        data=None,
    ):
        """One row per channel: its top-n patches, each titled "activation · class" (✂: clipped at the border).

        ``data``: the searched dataset, for a search that kept no patches. Patches are upsampled
        nearest-neighbour to ``tile`` px (a 3×3 field stays a visible 3×3 block)."""
        from ..figures.inside import mosaic_figure

        chans = list(channels) if channels is not None else list(self.channels)
        n = min(n or self.k, self.k)
        rows = [self.row(c) for c in chans]
        crops = self.patches(data, chans)[:, :n]
        tiles = crops.reshape(len(rows) * n, *crops.shape[2:])
        labels = []
        for r in rows:
            for j in range(n):
                lab = int(self.labels[r, j])
                name = class_names[lab] if class_names and 0 <= lab < len(class_names) else "" if lab < 0 else str(lab)
                labels.append(f"{float(self.activations[r, j]):.2g}·{name}{'✂' if bool(self.clipped[r, j]) else ''}")
        labels = [t.rstrip("·") if t.endswith("·") else t for t in labels]
        return mosaic_figure(
            tiles,
            n,
            tile=tile,
            labels=labels,
            row_labels=[f"ch {c}" for c in chans],
            title=f"{self.layer}: top-{n} patches ({self.rf.size[0]}×{self.rf.size[1]} px field, "
            f"shown at {tile} px, nearest-neighbour)",
        )

    def never_fired(self) -> list[int]:
        """Channels whose strongest activation over the whole scan is ≤ 0 (they never fired: no patch to show)."""
        return [c for r, c in enumerate(self.channels) if not float(self.activations[r, 0]) > 0]


#: below this many values (4 bytes each) for every channel's k images, a search keeps the winners' images and cuts the
#: patches once at the end (64 MB: digits-sized images always, photos only for a few channels)
_IMAGE_STORE_VALUES = 16 * 2**20


def image_max(batch: Batch, layer: str) -> torch.Tensor:
    """N×C: each image's largest activation per channel of ``layer`` (N×C×H×W or N×C), computed once per batch
    and shared by the accumulators of one scan (:meth:`cnnlens.scanning.Batch.memo`)."""

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
    of ``input_size``); feed it to :func:`cnnlens.scanning.scan` alone or next to other
    accumulators::

        acc = SearchAccumulator(model, "features.3", k=9, input_size=(32, 32))
        ev = EvaluationAccumulator(num_classes=10)
        search, evaluation = scan(model, "digits", [acc, ev])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerRef,
        channels: Sequence[int] | None = None,
        k: int = 9,
        *,
        input_size: tuple[int, int] | int | None = None,
        rf: ReceptiveField | None = None,
        max_crop: int | None = None,
        fill: float = 0.0,
        patches: bool = True,
    ):
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
        # False: keep (image index, position, activation) only — the patches are cut when drawn
        # (:meth:`SearchResult.patches`), so the state is O(C × k) numbers whatever the image size
        self.keep_patches = bool(patches)
        self.num_classes = 0
        self._state: dict[str, torch.Tensor] | None = None

    # -- scan protocol --------------------------------------------------------
    #
    # State, per channel in rank order (C×k', k' ≤ k): values, indices, positions, labels, boxes, clipped; and
    # "slot" (C×k'), where each entry's patch lives. Patches are kept one of two ways, chosen on the first batch:
    # - "crop": cut from the batch when the entry arrives, stored in a C×k slot array that is written only where
    #   an entry is new (an evicted entry's slot is reused), so a batch never copies the kept patches;
    # - "image" (a field that covers at least half the image, e.g. a deep layer whose field is the whole image):
    #   the images of the current winners are kept once each by dataset index, shared by every channel, and the
    #   patches are cut once in ``compute`` — a patch would be as large as its image, and most entries are
    #   evicted again before the end.
    def update(self, batch: Batch) -> None:
        a = batch.acts[self.layer].detach()
        if a.dim() == 2:
            a = a[:, :, None, None]
        if a.dim() != 4:
            raise ValueError(f"layer {self.layer!r} gives {a.dim()}-D outputs; dataset search needs N×C×H×W or N×C")
        vals, chan = self._channel_maxima(batch, a)
        C, n = vals.shape
        idx = batch.index.cpu().long().view(1, n).expand(C, n)
        st = self._state
        m = 0 if st is None else st["values"].shape[1]
        if st is not None and m == self.k and not bool((vals >= st["values"][:, -1:]).any()):
            return  # no image reaches a channel's k-th best (ties go by dataset index, so ≥)
        cand_v = vals if st is None else torch.cat([st["values"], vals], 1)
        cand_i = idx if st is None else torch.cat([st["indices"], idx], 1)
        pick = _rank(cand_v, cand_i, self.k)  # C×k' positions into the candidates
        new = pick >= m
        if st is not None and m == pick.shape[1] and not bool(new.any()):
            return
        x = batch.x.detach()
        hw = tuple(x.shape[-2:])
        win = (min(self.rf.size[0], hw[0]), min(self.rf.size[1], hw[1]))
        if st is None:
            self._start(batch, C, hw, win)
        out = self._survivors(st, pick, new, m)
        out["values"], out["indices"] = cand_v.gather(1, pick), cand_i.gather(1, pick)
        if bool(new.any()):
            self._add_new(out, batch, a, chan, (pick - m).clamp_min(0), new, hw, win)
        self._state = out
        if self._mode == "image":
            self._prune()

    def _channel_maxima(self, batch: Batch, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each image's strongest unit per searched channel (C×N, on the CPU), and the channels' indices into the
        layer (None: all of them, in order); checks the channels on the first batch."""
        if self.channels is None:
            self.channels = tuple(range(a.shape[1]))
        if max(self.channels) >= a.shape[1]:
            raise ValueError(
                f"channel {max(self.channels)} is out of range: layer {self.layer!r} has {a.shape[1]} channels"
            )
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
        return vals.t().float().cpu(), chan

    def _start(self, batch: Batch, C: int, hw: tuple, win: tuple) -> None:
        """On the first batch with winners: how patches are kept (whole images, crops or not at all)."""
        x = batch.x
        self._hw, self._win = hw, win
        small = C * self.k * x[0].numel() <= _IMAGE_STORE_VALUES  # every winner's image would fit anyway
        self._mode = "image" if small or 2 * win[0] * win[1] >= hw[0] * hw[1] else "crop"
        if not self.keep_patches:
            self._mode = "none"
        # never more images kept at once than channels × k, nor than the scan has
        self._images = _ImageStore(C * self.k if batch.samples is None else max(1, min(C * self.k, batch.samples)))
        self._crops_store: torch.Tensor | None = None

    def _survivors(self, st: dict | None, pick: torch.Tensor, new: torch.Tensor, m: int) -> dict:
        """The new state's positions, labels, boxes, clip flags (and crop slots) as far as the surviving entries
        give them (zeros where a new entry goes)."""
        C, k2 = pick.shape
        rows = torch.arange(C).view(-1, 1)
        if st is None:
            out = {
                "positions": torch.zeros(C, k2, 2, dtype=torch.long),
                "labels": torch.zeros(C, k2, dtype=torch.long),
                "boxes": torch.zeros(C, k2, 4, dtype=torch.long),
                "clipped": torch.zeros(C, k2, dtype=torch.bool),
            }
        else:
            oi = pick.clamp_max(m - 1)
            out = {key: st[key][rows, oi] for key in ("positions", "labels", "boxes", "clipped")}
        if self._mode == "crop":
            # new entries take the slots no surviving entry holds, in rank order
            kept = torch.zeros(C, self.k, dtype=torch.bool)
            if st is None:
                old_slot = torch.zeros(C, k2, dtype=torch.long)
            else:
                old_slot = st["slot"][rows, oi]
                oc, oj = (~new).nonzero(as_tuple=True)
                kept[oc, old_slot[oc, oj]] = True
            free = torch.sort(kept.to(torch.uint8), dim=1, stable=True).indices
            nth = (new.long().cumsum(1) - 1).clamp_min(0)
            out["slot"] = torch.where(new, free.gather(1, nth), old_slot)
        return out

    def _add_new(self, out: dict, batch: Batch, a, chan, sample, new, hw: tuple, win: tuple) -> None:
        """The new entries only: the position of each one's strongest unit (the first maximum, row-major), its
        label, field and patch (or image); ``sample``: for a new entry, its sample's index in this batch."""
        cn, sn = new.nonzero(as_tuple=True)
        x = batch.x.detach()
        n, _, H, W = a.shape
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
        if self._mode == "none":
            pass
        elif self._mode == "crop":
            if self._crops_store is None:
                C = new.shape[0]
                self._crops_store = torch.zeros(C, self.k, x.shape[1], *self._crop_size(win))  # taken now
            self._crops_store[cn, out["slot"][cn, sn]] = self._crops(x, s_new, box, win, hw)
        else:
            ids = batch.index.cpu().long()
            fresh = [s_i for s_i in torch.unique(s_new).tolist() if int(ids[s_i]) not in self._images]
            if fresh:
                self._images.add(ids[fresh].tolist(), x[torch.tensor(fresh, device=x.device)].detach())

    def _prune(self) -> None:
        assert self._state is not None  # called after an update or a merge
        alive = set(self._state["indices"].flatten().tolist())
        self._images.keep(alive)

    def _ranked_crops(self) -> torch.Tensor | None:
        """C×k'×Cin×h×w patches in rank order."""
        st = self._state
        assert st is not None  # called once images were seen
        C, k2 = st["values"].shape
        if self._mode == "none":
            return None
        if self._mode == "crop":
            assert self._crops_store is not None  # allocated with the first crops
            return self._crops_store[torch.arange(C).view(-1, 1), st["slot"]]
        keys = st["indices"].flatten()
        uniq, inv = torch.unique(keys, return_inverse=True)
        imgs = self._images.get(uniq.tolist())
        c = self._crops(imgs, inv, st["boxes"].reshape(-1, 4), self._win, self._hw)
        return c.view(C, k2, *c.shape[1:])

    def _boxes(self, ij: torch.Tensor, hw) -> torch.Tensor:
        """E×4 (top, left, bottom, right) fields of E units (row, col), end exclusive, not clipped."""
        if self.rf.is_global:
            return torch.tensor([0, 0, *self.rf.input_size]).expand(len(ij), 4).clone()
        t = self.rf.offset[0] + ij[:, 0] * self.rf.stride[0]
        l = self.rf.offset[1] + ij[:, 1] * self.rf.stride[1]
        return torch.stack([t, l, t + self.rf.size[0], l + self.rf.size[1]], 1).long()

    def _crops(self, x, n, box, win, hw) -> torch.Tensor:
        """The E patches (E×Cin×h×w) of the fields ``box`` in the images ``x[n]`` (:func:`cut_patches`)."""
        return cut_patches(x, n, box, self.rf, fill=self.fill, max_crop=self.max_crop)

    def _crop_size(self, win):
        return _crop_size(win, self.max_crop)

    def merge(self, other: SearchAccumulator) -> SearchAccumulator:
        if other._state is None:
            return self
        if self._state is None:
            self.__dict__.update(
                {
                    key: v
                    for key, v in other.__dict__.items()
                    if key in ("_state", "channels", "_hw", "_win", "_mode", "_images", "_crops_store")
                }
            )
            self.num_classes = max(self.num_classes, other.num_classes)
            return self
        if self.channels != other.channels or self.layer != other.layer:
            raise ValueError("cannot merge dataset searches of different layers or channels")
        a, b = self._state, other._state
        keys = ("values", "indices", "positions", "labels", "boxes", "clipped")
        cat = {key: torch.cat([a[key], b[key]], 1) for key in keys}
        pick = _rank(cat["values"], cat["indices"], self.k)
        rows = torch.arange(pick.shape[0]).view(-1, 1)
        state = {key: v[rows, pick] for key, v in cat.items()}
        if self._mode == "none":
            pass
        elif self._mode == "crop":
            mine, theirs = self._ranked_crops(), other._ranked_crops()
            assert mine is not None and theirs is not None  # the "crop" mode keeps its crops
            crops = torch.cat([mine, theirs], 1)[rows, pick]
            self._crops_store = torch.empty(pick.shape[0], self.k, *crops.shape[2:])
            self._crops_store[:, : pick.shape[1]] = crops
        elif self._mode == "image":
            self._images.update(other._images)
        if self._mode == "crop":
            state["slot"] = torch.arange(pick.shape[1]).expand_as(pick).clone()
        self._state = state
        if self._mode == "image":
            self._prune()
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
            layer=self.layer,
            channels=tuple(self.channels or ()),  # set by the first update
            activations=st["values"],
            indices=st["indices"],
            positions=st["positions"],
            labels=st["labels"],
            crops=self._ranked_crops(),
            boxes=st["boxes"],
            clipped=st["clipped"],
            class_histogram=hist,
            rf=self.rf,
            settings={"k": self.k, "max_crop": self.max_crop, "fill": self.fill, "patches": self.keep_patches},
        )


def _crop_size(win, max_crop):
    if max_crop is None or max(win) <= max_crop:
        return tuple(win)
    s = max_crop / max(win)
    return (max(1, round(win[0] * s)), max(1, round(win[1] * s)))


def cut_patches(
    x: torch.Tensor,
    n: torch.Tensor,
    box: torch.Tensor,
    rf: ReceptiveField,
    *,
    fill: float = 0.0,
    max_crop: int | None = None,
) -> torch.Tensor:
    """The E patches (E×Cin×h×w, float32, CPU) of the receptive fields ``box`` (E×4: top, left, bottom, right, end
    exclusive, as :class:`SearchResult` keeps them) in the images ``x[n]`` (x: U×Cin×H×W), gathered at once; parts
    outside the image are ``fill``; h×w is the field, at most the image, scaled down to ``max_crop`` px if given
    (bilinear, antialiased). The dataset search cuts its kept patches with this, and
    :meth:`SearchResult.patches` cuts them again from the dataset when drawn."""
    hw = tuple(x.shape[-2:])
    win = (min(rf.size[0], hw[0]), min(rf.size[1], hw[1]))
    n = torch.as_tensor(n).long().view(-1)
    box = torch.as_tensor(box).long().view(-1, 4)
    t, l = box[:, 0].clone(), box[:, 1].clone()
    if rf.is_global:
        t.zero_(), l.zero_()
    # a field larger than the image: the crop is the whole image along that axis
    if rf.size[0] > hw[0]:
        t.zero_()
    if rf.size[1] > hw[1]:
        l.zero_()
    dev = x.device
    # each image once, padded with the fill only where a field leaves it; the windows are a strided view,
    # so the E patches are one gather
    uniq, inv = torch.unique(n, return_inverse=True)
    imgs = x[uniq.to(dev)]
    pt, pl = max(0, -int(t.min())), max(0, -int(l.min()))
    pb, pr = max(0, int((t + win[0]).max()) - hw[0]), max(0, int((l + win[1]).max()) - hw[1])
    if pt or pl or pb or pr:
        imgs = F.pad(imgs, (pl, pr, pt, pb), value=fill)
        t, l = t + pt, l + pl
    if tuple(win) == tuple(imgs.shape[-2:]):  # every patch is its whole image
        c = imgs[inv.to(dev)]
    else:
        wins = imgs.unfold(2, win[0], 1).unfold(3, win[1], 1)  # U×Cin×H'×W'×h×w
        c = wins[inv.to(dev), :, t.to(dev), l.to(dev)]  # E×Cin×h×w
    size = _crop_size(win, max_crop)
    if tuple(size) != tuple(win):
        c = F.interpolate(c.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return c.detach().float().cpu()


class _ImageStore:
    """Images by dataset index in one tensor of ``limit`` rows with a free list, allocated on the first batch: the
    kept images neither scatter small long-lived blocks among each batch's temporaries (the heap would grow along
    the scan) nor grow with the dataset. The limit is channels × k (no more images can be kept at once) and no
    more than the scan's samples: ResNet-18's ``layer4`` (512 channels × 9) over 512 images at 112² takes 77 MB,
    not 690 MB."""

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))  # never more than this many images are kept at once
        self.data: torch.Tensor | None = None
        self.row: dict[int, int] = {}
        self.free: list[int] = []

    def __contains__(self, key: int) -> bool:
        return key in self.row

    def __len__(self) -> int:
        return len(self.row)

    def add(self, keys: list[int], images: torch.Tensor) -> None:
        images = images.float().cpu()
        if self.data is None:
            # room for as many images as can be kept at once: memory is set by the first batch and does not
            # change along the scan (growing it as images come would make the peak follow the dataset's size)
            self.data = torch.zeros(self.limit, *images.shape[1:])  # zeros: the pages are taken now, not later
            self.free = list(range(self.limit - 1, -1, -1))
        need = len(keys) - len(self.free)
        if need > 0:  # only a merge can hold more than the limit for a moment
            cap = self.data.shape[0]
            grown = torch.empty(cap + need, *self.data.shape[1:])
            grown[:cap] = self.data
            self.data = grown
            self.free.extend(range(cap + need - 1, cap - 1, -1))
        rows = [self.free.pop() for _ in keys]
        self.data[torch.tensor(rows)] = images
        self.row.update(zip(keys, rows, strict=True))

    def keep(self, alive: set) -> None:
        for key in [k for k in self.row if k not in alive]:
            self.free.append(self.row.pop(key))

    def get(self, keys: list[int]) -> torch.Tensor:
        assert self.data is not None  # images were added
        return self.data[torch.tensor([self.row[k] for k in keys], dtype=torch.long)]

    def update(self, other: _ImageStore) -> None:
        keys = [k for k in other.row if k not in self.row]
        if keys:
            self.add(keys, other.get(keys))


@needs_autograd
def dataset_search(
    model: nn.Module,
    data,
    layer: LayerRef,
    channels: Sequence[int] | None = None,
    k: int = 9,
    *,
    batch_size: int = 64,
    device=None,
    progress=None,
    max_crop: int | None = None,
    patches: bool = True,
    layout: str | None = None,
) -> SearchResult:
    """Maximally activating images and patches: each channel's top-k over a dataset, in one scan.

    score(image, c) = max_ij a_c,ij(image); the patch is the receptive field of
    the unit at the arg-max, cut from the image (clipped at the border and marked so).
    ``patches=False`` keeps only (activation, image index, position, field) per entry:
    :meth:`SearchResult.patches` cuts the same patches from ``data`` when they are drawn.
    ``layout``: "nchw" / "nhwc" for a layer output that reads both ways (see :func:`cnnlens.scanning.scan`).

    Example::

        r = dataset_search(cnnlens.load_model("digits-cnn"), "digits", "features.3", k=9)
        r.activations[5]        # channel 5's nine best scores, descending
        r.figure(channels=[0, 1, 2]).savefig("top9.png")
    """
    data = as_dataset(data, model)
    acc = SearchAccumulator(
        model, layer, channels, k, input_size=data_input_size(data, model), max_crop=max_crop, patches=patches
    )
    (res,) = scan(model, data, [acc], batch_size=batch_size, device=device, progress=progress, layout=layout)
    return res
