"""Network dissection (Bau et al., CVPR 2017): which concept, if any, each unit stands for.

For a dataset whose pixels are labelled with concepts (Bau et al.'s Broden; here the ten digits and the
clutter of ``cluttered_digits``), each channel k of a layer is turned into a mask per image: its activation
map, upsampled (bilinear) to the image, thresholded at T_k, the level that only the top ``quantile``
(0.5 %) of the channel's activations over the whole dataset exceed (P(a_k > T_k) = 0.005, over every
position of every image's map). Its agreement with concept c over the dataset is

    IoU_{k,c} = Σ_x |M_k(x) ∩ L_c(x)| / Σ_x |M_k(x) ∪ L_c(x)|,

and the unit's label is its best concept where that IoU exceeds 0.04 (Bau et al.'s cut-off); other units
stay unlabelled.

**One pass.** T_k depends on the whole dataset, and the intersections depend on T_k, so a direct
computation needs two passes. :class:`DissectionAccumulator` needs one: it keeps a *mergeable quantile
sketch* — per channel, counts of activations in logarithmic bins ((v_min·γ^(i−1), v_min·γ^i], γ = 1.02,
so a bin spans 2 % of its value; values ≤ v_min = 1e-6 share bin 0) — once for the raw maps (the quantile) and
once per concept for the upsampled maps (the intersections). At the end T_k is the lower edge of the
lowest bin whose upper tail holds at most ``quantile`` of the activations, and every IoU follows from the
counts at and above it. The result is exact for that bin-edge threshold (within 2 % of the exact quantile
in value, and never above the quantile in mass); counts add, so shards merge under ``torchrun``. Memory:
channels × (concepts + 1) × 1,400 counts per layer (8.6 MB for 64 channels and 12 labels). A pixel has one
concept (a label map, −1 for none): overlapping concept sets such as Broden's need one label map per set.

>>> d = dissect(model, "cluttered-digits", ["net.features.10"])          # doctest: +SKIP
>>> d["net.features.10"].labels()[:4], d["net.features.10"].units_per_concept()   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data import as_dataset
from ..results import Result, layer_entry
from ..scanning import Batch, scan
from ..tap import resolve_layer

#: Bau et al.'s defaults: the top 0.5 % of a unit's activations, a label where IoU > 0.04
QUANTILE = 0.005
IOU_LABEL = 0.04
#: the sketch: values ≤ V_MIN in bin 0, then bins v_min·γ^i up to V_MAX (the last bin is open)
GAMMA = 1.02
V_MIN, V_MAX = 1e-6, 1e6


def _bins(gamma: float) -> int:
    return int(math.ceil(math.log(V_MAX / V_MIN) / math.log(gamma))) + 2


def _bin_index(a: torch.Tensor, gamma: float, nbins: int) -> torch.Tensor:
    """Bin of each value: 0 for a ≤ V_MIN, else ⌈log_γ(a / V_MIN)⌉ (bin b holds (V_MIN·γ^(b−1), V_MIN·γ^b]),
    capped at the last bin; in place on a float32 copy, one pass per operation (the scan's hot loop)."""
    t = a.float().clamp_min(V_MIN).log2_().sub_(math.log2(V_MIN)).mul_(1.0 / math.log2(gamma)).ceil_()
    return t.clamp_(0, nbins - 1).to(torch.int64)


def bin_edge(b: int, gamma: float = GAMMA) -> float:
    """The lower edge of sketch bin ``b`` (bin 0: −∞, shown as 0): bin b holds (V_MIN·γ^(b−1), V_MIN·γ^b]."""
    return 0.0 if b <= 0 else V_MIN * gamma ** (b - 1)


@dataclass(frozen=True)
class LayerDissection(Result):
    """Network dissection of one layer.

    concepts: the concept names; thresholds: C, each unit's T_k (the sketch's bin edge); iou: C × concepts,
    IoU_{k,c} over the dataset; label: C, the best concept's index where its IoU > ``min_iou``, else −1;
    best_iou: C, that IoU (also for unlabelled units); quantile, min_iou: the settings.
    """

    layer: str
    concepts: list
    thresholds: torch.Tensor
    iou: torch.Tensor
    label: torch.Tensor
    best_iou: torch.Tensor
    quantile: float = QUANTILE
    min_iou: float = IOU_LABEL

    def labels(self) -> list[str | None]:
        """Each unit's concept name, or None when unlabelled."""
        return [self.concepts[int(i)] if int(i) >= 0 else None for i in self.label]

    def units_per_concept(self) -> dict[str, int]:
        """How many units each concept labels (concepts without a unit left out), most first."""
        out: dict[str, int] = {}
        for name in self.labels():
            if name is not None:
                out[name] = out.get(name, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], self.concepts.index(kv[0]))))

    @property
    def labelled(self) -> int:
        return int((self.label >= 0).sum())

    def unit(self, channel: int) -> dict:
        """One unit's label, IoU and threshold, for a unit page."""
        i = int(self.label[channel])
        return {
            "label": self.concepts[i] if i >= 0 else None,
            "iou": float(self.best_iou[channel]),
            "best": self.concepts[int(self.iou[channel].argmax())],
            "threshold": float(self.thresholds[channel]),
        }

    def __repr__(self) -> str:
        per = ", ".join(f"{k}: {v}" for k, v in self.units_per_concept().items()) or "none"
        return (
            f"LayerDissection({self.layer!r}, {self.labelled}/{len(self.label)} units labelled "
            f"(IoU > {self.min_iou:g}); {per})"
        )


@dataclass(frozen=True)
class Dissection(Result):
    """Network dissection of several layers (in the order given), from one scan."""

    layers: dict
    count: int
    settings: dict = field(default_factory=dict)

    def __getitem__(self, layer: str) -> LayerDissection:
        return layer_entry(self.layers, layer, "dissected")

    def __repr__(self) -> str:
        return (
            "Dissection("
            + "; ".join(f"{n}: {d.labelled}/{len(d.label)} labelled" for n, d in self.layers.items())
            + f"; {self.count} images)"
        )


class DissectionAccumulator:
    """Mergeable network dissection for :func:`cnnlens.scanning.scan`: per layer, the sketch counts described in
    the module docstring. ``segments``: the whole dataset's concept label maps (N×H×W integer, −1 for no
    concept; the rows are looked up by ``batch.index``) at the input's size; ``concepts``: their names.
    """

    def __init__(
        self,
        layers: Sequence[str],
        segments: torch.Tensor,
        concepts: Sequence[str],
        *,
        quantile: float = QUANTILE,
        min_iou: float = IOU_LABEL,
        gamma: float = GAMMA,
    ):
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}; Bau et al. use 0.005 (the top 0.5 %)")
        if not gamma > 1:
            raise ValueError(f"gamma must be > 1 (the sketch's bin ratio), got {gamma}")
        seg = torch.as_tensor(segments)
        if seg.dim() != 3 or seg.is_floating_point():
            raise ValueError(
                f"segments must be N×H×W integer label maps (−1: no concept), got {tuple(seg.shape)} {seg.dtype}"
            )
        self.concepts = [str(c) for c in concepts]
        if seg.numel() and (int(seg.max()) >= len(self.concepts) or int(seg.min()) < -1):
            raise ValueError(
                f"segments hold labels {int(seg.min())}..{int(seg.max())} but {len(self.concepts)} "
                "concept names; label pixels 0..len(concepts)−1, −1 for none"
            )
        self.layers = tuple(layers)
        self.segments = seg.to(torch.int16)
        self.quantile, self.min_iou, self.gamma = float(quantile), float(min_iou), float(gamma)
        self.nbins = _bins(self.gamma)
        self.raw: dict[str, torch.Tensor] = {}  # C × bins, the raw maps' values
        self.joint: dict[str, torch.Tensor] = {}  # C × (concepts + 1) × bins, upsampled values by pixel concept
        self.count = 0

    def __getstate__(self):  # what a torchrun gather sends: the counts, not the label maps
        state = dict(self.__dict__)
        state["segments"] = torch.empty(0, 0, 0, dtype=torch.int16)
        return state

    def update(self, batch: Batch) -> None:
        seg = self.segments[batch.index.cpu().long()].long()
        H, W = seg.shape[-2:]
        if tuple(batch.x.shape[-2:]) != (H, W):
            raise ValueError(
                f"the images are {tuple(batch.x.shape[-2:])} but the concept masks "
                f"{(H, W)}; give masks at the model's input size"
            )
        L = len(self.concepts) + 1
        lab = torch.where(seg < 0, torch.full_like(seg, L - 1), seg)  # the last label: no concept
        self.count += int(seg.shape[0])
        base = (lab * self.nbins).unsqueeze(1)  # N×1×H×W: the pixel's concept
        for n in self.layers:
            a = batch.acts[n].detach().float()
            if a.dim() != 4:  # no spatial map (a pooled or linear layer): nothing to dissect
                continue
            C = a.shape[1]
            if n not in self.raw:
                self.raw[n] = torch.zeros(C, self.nbins, dtype=torch.long)
                self.joint[n] = torch.zeros(C, L, self.nbins, dtype=torch.long)
            raw = _bin_index(a, self.gamma, self.nbins).transpose(0, 1).reshape(C, -1).cpu()
            off = torch.arange(C).view(C, 1) * self.nbins
            self.raw[n] += torch.bincount((raw + off).reshape(-1), minlength=C * self.nbins).view(C, self.nbins)
            up = F.interpolate(a, size=(H, W), mode="bilinear", align_corners=False)
            idx = _bin_index(up, self.gamma, self.nbins).cpu()  # N×C×H×W, then in place:
            idx.add_(base).add_(torch.arange(C).view(1, C, 1, 1) * (L * self.nbins))  # (k·L + concept)·bins + bin
            self.joint[n] += torch.bincount(idx.view(-1), minlength=C * L * self.nbins).view(C, L, self.nbins)

    def merge(self, other: DissectionAccumulator) -> DissectionAccumulator:
        if self.layers != other.layers or self.concepts != other.concepts or self.nbins != other.nbins:
            raise ValueError("cannot merge dissections of different layers, concepts or sketches")
        for n in other.raw:
            if n in self.raw:
                self.raw[n] += other.raw[n]
                self.joint[n] += other.joint[n]
            else:
                self.raw[n], self.joint[n] = other.raw[n].clone(), other.joint[n].clone()
        self.count += other.count
        return self

    def compute(self) -> Dissection:
        if not self.raw:
            raise ValueError("the dissection saw no images: the dataset (or this shard) is empty")
        return Dissection(
            {n: self._layer(n) for n in self.layers if n in self.raw},
            self.count,
            settings={
                "quantile": self.quantile,
                "min_iou": self.min_iou,
                "gamma": self.gamma,
                "concepts": self.concepts,
                "paper": "Bau et al. 2017",
            },
        )

    def _layer(self, n: str) -> LayerDissection:
        raw, joint = self.raw[n].double(), self.joint[n].double()
        C = raw.shape[0]
        # the lowest bin whose upper tail holds at most `quantile` of the raw activations
        tail = raw.flip(1).cumsum(1).flip(1)  # tail[k, b] = Σ_{b' ≥ b} raw[k, b']
        ok = tail <= self.quantile * raw.sum(1, keepdim=True)
        first = torch.where(ok.any(1), ok.double().argmax(1), torch.full((C,), self.nbins - 1)).long()
        first = first.clamp_min(1)  # bin 0 (≤ v_min, the ReLU's zeros) never counts as active
        jt = joint.flip(2).cumsum(2).flip(2)  # C × L × bins, upper tails
        above = jt.gather(2, first.view(C, 1, 1).expand(C, jt.shape[1], 1)).squeeze(2)  # C × L
        m = above.sum(1, keepdim=True)  # |M_k|
        concept = joint.sum(2)[:, :-1]  # |L_c| (the same for every k)
        inter = above[:, :-1]
        union = m + concept - inter
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
        best, arg = iou.max(1)
        label = torch.where(best > self.min_iou, arg, torch.full_like(arg, -1))
        thr = torch.tensor([bin_edge(int(b), self.gamma) for b in first], dtype=torch.float64)
        return LayerDissection(n, list(self.concepts), thr, iou, label, best, self.quantile, self.min_iou)


def cluttered_segments(ds) -> tuple[torch.Tensor, list[str]]:
    """The concept label maps of a :class:`~cnnlens.models.cluttered.ClutteredDigits` split: the digit's ink
    labelled with its class (0–9), the clutter's ink 10 ("clutter"), the rest −1; and the 11 names."""
    if getattr(ds, "ink", None) is None or getattr(ds, "clutter", None) is None:
        raise ValueError("this dataset has no ink/clutter masks; give segments= and concepts= yourself")
    seg = torch.full(tuple(ds.ink.shape), -1, dtype=torch.int16)
    seg[ds.clutter] = 10
    seg = torch.where(ds.ink, ds.y.view(-1, 1, 1).to(torch.int16), seg)
    return seg, [f"digit {i}" for i in range(10)] + ["clutter"]


def dissect(
    model,
    data,
    layers: Sequence[str],
    *,
    segments: torch.Tensor | None = None,
    concepts: Sequence[str] | None = None,
    quantile: float = QUANTILE,
    min_iou: float = IOU_LABEL,
    batch_size: int = 64,
    device=None,
    progress=None,
) -> Dissection:
    """Network dissection of ``layers`` over ``data`` in one scan (:class:`DissectionAccumulator`).

    ``data="cluttered-digits"`` (or its dataset) brings its own concepts (:func:`cluttered_segments`); any
    other data needs ``segments`` (N×H×W labels, −1 for none) and ``concepts`` (names).

    >>> model = cnnlens.load_model("cluttered-digits-cnn")  # doctest: +SKIP
    >>> d = dissect(model, "cluttered-digits", ["net.features.10"])  # doctest: +SKIP
    """
    ds = as_dataset(data, model)
    if segments is None:
        segments, names = cluttered_segments(ds)
        concepts = concepts or names
    if concepts is None:
        raise ValueError("give concepts= (one name per label in segments)")
    names = [resolve_layer(model, layer)[0] for layer in layers]
    acc = DissectionAccumulator(names, segments, concepts, quantile=quantile, min_iou=min_iou)
    (res,) = scan(model, ds, [acc], batch_size=batch_size, device=device, progress=progress)
    return res
