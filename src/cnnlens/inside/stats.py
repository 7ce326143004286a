"""Neuron statistics over a dataset: what a channel's activity looks like, and which classes drive it.

One streaming scan (an accumulator of :func:`cnnlens.scanning.scan`, mergeable, so
it shares the forward with evaluation and runs sharded under ``torchrun``) gives,
per channel c of a layer, over every image and position:

- mean and variance (population, ddof = 0), merged with Chan's formula
  ``M2 = M2_a + M2_b + δ²·n_a·n_b / n`` (δ = mean_b − mean_a) in float64;
- sparsity: the fraction of activations ≤ ``zero`` (exact zeros after a ReLU);
- min, max, and dead channels (max ≤ ``zero`` on every image and position);
- a histogram over fixed bin edges (values outside go to ``below``/``above``);
- per-class mean of the image-level activation ``ā_c(x) = mean_ij a_c,ij(x)``;
- a selectivity index ``(μ_max − μ_rest) / (μ_max + μ_rest)`` (Morcos et al. 2018),
  μ_max the largest class mean and μ_rest the mean of the other class means:
  0 for a channel that responds equally to every class, 1 for one class only
  (meaningful for non-negative activations, e.g. after a ReLU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..autograd import needs_autograd
from ..data import as_dataset
from ..results import Result
from ..scanning import Batch, scan
from ..tap import LayerRef, LayerTap, resolve_layer

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib), in figure() and preview().

#: about how many values (float32) one chunk of a batch holds on the CPU: small enough that the passes over it after
#: the first find it in the cache (faster than whole batches, docs/benchmarks.md; smaller chunks cost more in
#: per-chunk overhead than they save)
_CHUNK_VALUES = 256 * 1024


@dataclass(frozen=True)
class NeuronStats(Result):
    """Per-channel statistics of a layer over a dataset (C channels, K classes, B bins).

    count: values per channel (images × positions); mean, var, std, min, max,
    sparsity: C; dead: C bool; edges: B+1 bin edges; histogram: C×B counts;
    below/above: C counts outside the edges; class_mean: K×C mean image-level
    activation per class; class_count: K images per class; selectivity: C;
    preferred_class: C, the class with the largest mean.
    """

    layer: str
    count: int
    mean: torch.Tensor
    var: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    sparsity: torch.Tensor
    dead: torch.Tensor
    edges: torch.Tensor
    histogram: torch.Tensor
    below: torch.Tensor
    above: torch.Tensor
    class_mean: torch.Tensor
    class_count: torch.Tensor
    selectivity: torch.Tensor
    preferred_class: torch.Tensor
    settings: dict = field(default_factory=dict)

    @property
    def dead_channels(self) -> list[int]:
        return self.dead.nonzero().flatten().tolist()

    def figure(self, channels: Sequence[int] | None = None, ncols: int = 8, size: float = 1.6):
        """Small-multiple histograms (log counts) of the chosen channels, dead ones in red."""
        from ..viz import subplots

        chans = list(channels) if channels is not None else list(range(len(self.mean)))
        ncols = min(ncols, len(chans))
        nrows = (len(chans) + ncols - 1) // ncols
        fig, axes = subplots(nrows, ncols, figsize=(size * ncols, size * 0.8 * nrows + 0.3), squeeze=False)
        centers = ((self.edges[1:] + self.edges[:-1]) / 2).numpy()
        width = float(self.edges[1] - self.edges[0])
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, c in zip(axes.flat, chans, strict=False):  # the grid's last row may have spare axes
            ax.set_axis_on()
            h = self.histogram[c].double().numpy()
            ax.bar(centers, h, width=width, color="tab:red" if bool(self.dead[c]) else "tab:blue")
            ax.set_yscale("log")
            ax.set_title(f"ch {c}: sp {float(self.sparsity[c]):.2f} sel {float(self.selectivity[c]):.2f}", fontsize=7)
            ax.tick_params(labelsize=6)
        fig.tight_layout()
        return fig


class StatsAccumulator:
    """Streaming, mergeable per-channel statistics of one layer (see the module docstring).

    ``edges``: fixed histogram bin edges (B+1, increasing), the same on every
    process so shards merge; :func:`neuron_stats` picks them from a first look at the data.

        acc = StatsAccumulator("features.3", edges=torch.linspace(0, 4, 41), num_classes=10)
        (stats,) = scan(model, "digits", [acc])
    """

    def __init__(self, layer: str, edges: torch.Tensor, num_classes: int | None = None, zero: float = 0.0):
        edges = torch.as_tensor(edges, dtype=torch.float64).flatten()
        if edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError("edges must be at least two increasing bin edges, e.g. torch.linspace(0, 4, 41)")
        self.layer = layer
        self.layers = (layer,)
        self.edges = edges
        self.zero = float(zero)
        self.num_classes = num_classes
        w = edges[1:] - edges[:-1]
        self._uniform = bool(((w - w.mean()).abs() <= 1e-9 * w.mean().abs().clamp_min(1e-300)).all())
        self.s: dict[str, torch.Tensor] | None = None

    def _init(self, C: int, K: int) -> dict:
        B = self.edges.numel() - 1
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        return {
            "n": z(C),
            "mean": z(C),
            "m2": z(C),
            "zeros": z(C),
            "min": torch.full((C,), float("inf"), dtype=torch.float64),
            "max": torch.full((C,), float("-inf"), dtype=torch.float64),
            "hist": torch.zeros(C, B, dtype=torch.long),
            "below": torch.zeros(C, dtype=torch.long),
            "above": torch.zeros(C, dtype=torch.long),
            "csum": z(K, C),
            "ccount": z(K),
        }

    def update(self, batch: Batch) -> None:
        a = batch.acts[self.layer].detach()
        if a.dim() == 2:
            a = a[:, :, None, None]
        if a.dim() != 4:
            raise ValueError(f"layer {self.layer!r} gives {a.dim()}-D outputs; neuron statistics need N×C×H×W or N×C")
        n, C, H, W = a.shape
        K = self.num_classes or int(batch.logits.shape[1])
        if self.s is None:
            self.s = self._init(C, K)
        # every reduction runs per image over the contiguous last axis of N×C×(H·W) (fast on the CPU, and few:
        # maximum, minimum, sum, shifted sum of squares, a zero count, one histogram binning); on the CPU the
        # images go through in chunks of about _CHUNK_VALUES values, so that after the first pass over a chunk
        # the others find it in the cache; the per-image maxima are shared with a dataset search of the layer
        v = a.float().reshape(n, C, H * W)
        m = float(H * W)
        if getattr(self, "shift", None) is None:
            # a per-channel shift (the first batch's mean) keeps the sums of squares below free of cancellation
            self.shift = (v.sum(2).sum(0) / (n * m)).view(1, C, 1)
        s = self.s
        key = ("image_max", self.layer)
        known = batch.cache.get(key)
        # (on one CPU thread only: with more, every operation is a parallel region whose start costs more than the
        # cache saves, and far more when other processes hold the cores)
        one = v.device.type == "cpu" and torch.get_num_threads() == 1
        rows = max(1, _CHUNK_VALUES // max(1, C * H * W)) if one else n
        raws, sq, mins, maxs = [], [], [], []
        zeros = torch.zeros(C, dtype=torch.float64)
        h = below = above = 0
        for s0 in range(0, n, rows):
            c = v[s0 : s0 + rows]
            nc = c.shape[0]
            # the temporaries go to buffers kept from batch to batch: a fresh tensor per operation would cost
            # page faults that take longer than the arithmetic
            buf = self._work(c.shape, torch.float32, v.device)
            raws.append(c.sum(2))
            mn = c.amin(2)
            mx = c.amax(2) if known is None else known[s0 : s0 + rows]
            mins.append(mn)
            maxs.append(mx)
            torch.sub(c, self.shift, out=buf)
            sq.append(torch.linalg.vector_norm(buf, dim=2))  # √Σ (v − shift)² per image, one pass
            lo_c, hi_c = mn.amin(0).cpu(), mx.amax(0).float().cpu()
            if self.zero == 0.0 and bool((lo_c >= 0).all()):  # non-negative (after a ReLU): v ≤ 0 iff v == 0
                zeros += nc * m - torch.sign(c, out=buf).sum(2).sum(0).double().cpu()
            else:
                zeros += (c <= self.zero).sum((0, 2), dtype=torch.int64).double().cpu()
            hc, bc, ac = self._histogram(c, lo_c, hi_c, buf)
            h, below, above = h + hc, below + bc, above + ac
        if known is None:
            batch.cache[key] = torch.cat(maxs)
        shift = self.shift.view(1, C).double().cpu()
        raw = torch.cat(raws).double().cpu()  # N×C, float32 sums of H·W values, merged in float64
        s1 = raw - m * shift
        s2 = (torch.cat(sq).double() ** 2).cpu()
        nb = torch.full((C,), n * m, dtype=torch.float64)
        mb = s1.sum(0) / nb
        m2b = (s2.sum(0) - s1.sum(0) ** 2 / nb).clamp_min(0)
        self._chan(s, nb, mb + shift.view(C), m2b)
        lo = torch.cat(mins).amin(0).double().cpu()
        hi = torch.cat(maxs).amax(0).double().cpu()
        s["zeros"] += zeros
        s["min"] = torch.minimum(s["min"], lo)
        s["max"] = torch.maximum(s["max"], hi)
        s["hist"] += h
        s["below"] += below
        s["above"] += above
        img = raw / m  # N×C image-level activation mean_ij a_ij
        y = batch.y.detach().view(-1).cpu().long()
        ok = (y >= 0) & (y < K)
        onehot = torch.zeros(n, K, dtype=torch.float64)
        onehot[ok.nonzero().flatten(), y[ok]] = 1.0
        s["csum"] += onehot.t() @ img  # (index_add_ of float64 rows is slow on the CPU)
        s["ccount"] += onehot.sum(0)

    def _work(self, shape, dtype, device) -> torch.Tensor:
        """A scratch tensor of ``shape`` kept between batches (one per dtype, grown when needed)."""
        key = (dtype, str(device))
        work: dict[tuple[torch.dtype, str], torch.Tensor] | None = getattr(self, "_scratch", None)
        if work is None:
            work = {}
            self._scratch = work
        numel = 1
        for d in shape:
            numel *= int(d)
        b = work.get(key)
        if b is None or b.numel() < numel:
            b = work[key] = torch.empty(numel, dtype=dtype, device=device)
        return b[:numel].view(shape)

    def __getstate__(self):  # scratch buffers are not state: a gathered or pickled accumulator leaves them behind
        d = dict(self.__dict__)
        d.pop("_scratch", None)
        return d

    def _histogram(self, v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, buf: torch.Tensor | None = None):
        """(C×B counts, C below, C above) of an N×C×M batch of values (M positions per image).

        Bin b holds edges[b] ≤ v < edges[b+1]; the last bin also holds v == edges[-1].
        Uniform edges (``linspace``): bin = ⌊(v − e₀)/w⌋ in float32, plus a per-channel offset
        as integers, so one ``bincount`` fills every channel (a value within float32 rounding,
        ~1e-7·B bin widths, of an inner edge may land in the neighbouring bin; numpy decides
        those in float64); other edges: ``bucketize`` in float64.
        """
        C = v.shape[1]
        B = self.edges.numel() - 1
        e0, e1 = float(self.edges[0]), float(self.edges[-1])
        cpu = lambda t: t.cpu()  # noqa: E731
        below = cpu((v < e0).sum((0, 2))) if bool((lo < e0).any()) else torch.zeros(C, dtype=torch.long)
        above = cpu((v > e1).sum((0, 2))) if bool((hi > e1).any()) else torch.zeros(C, dtype=torch.long)
        if self._uniform:
            # slot t = ⌊(v − e0)/w⌋ + 1, clamped to [0, B+1] (0: below, B+1: above the edges), in float32 without the
            # channel's offset (so the rounding stays ~1e-7 of t), then (B+2)·c added as integers: one bincount
            # fills every channel; truncation is floor for t ≥ 0
            scale = B / (e1 - e0)
            t = buf if buf is not None else torch.empty_like(v, dtype=torch.float32)
            # edges from 0 and no value below (after a ReLU): ⌊v/w⌋ ≥ 0, and the slot's +1 goes with the offsets
            from_zero = e0 == 0.0 and not bool((lo < 0).any())
            if from_zero:
                torch.mul(v, scale, out=t)
                if bool((hi > e1).any()):
                    t.clamp_(max=B)
            else:
                torch.mul(v, scale, out=t).add_(1.0 - e0 * scale)
                if bool((lo < e0).any() or (hi > e1).any()):  # else every value lies inside [0, B+1]
                    t.clamp_(0.0, B + 1.0)
            # int16 indices are the cheapest to convert and count when every slot fits
            dt = torch.int16 if C * (B + 2) <= 32767 else torch.int32
            t = self._work(v.shape, dt, v.device).copy_(t)
            t.add_(torch.arange(C, dtype=dt, device=v.device).view(1, C, 1) * (B + 2) + int(from_zero))
            counts = cpu(torch.bincount(t.flatten(), minlength=C * (B + 2))).view(C, B + 2)
            h = counts[:, 1 : B + 1].clone()
            # the end slots hold what lies outside plus values that round onto them (v == e1 belongs to the last bin)
            h[:, 0] += counts[:, 0] - below
            h[:, B - 1] += counts[:, B + 1] - above
            return h, below, above
        edges = self.edges.to(v.device)
        v = v.double().transpose(0, 1).reshape(C, -1)
        inside = (v >= edges[0]) & (v <= edges[-1])
        b = (torch.bucketize(v, edges, right=True) - 1).clamp(0, B - 1)
        flat = (b + torch.arange(C, device=v.device).view(-1, 1) * B)[inside]
        return cpu(torch.bincount(flat, minlength=C * B).view(C, B)), below, above

    @staticmethod
    def _chan(s, nb, mb, m2b) -> None:
        n = s["n"] + nb
        delta = mb - s["mean"]
        s["mean"] = s["mean"] + delta * nb / n.clamp_min(1)
        s["m2"] = s["m2"] + m2b + delta**2 * s["n"] * nb / n.clamp_min(1)
        s["n"] = n

    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        if other.s is None:
            return self
        if self.s is None:
            self.s = {k: v.clone() for k, v in other.s.items()}
            return self
        if not torch.equal(self.edges, other.edges):
            raise ValueError("cannot merge neuron statistics with different histogram edges")
        s, o = self.s, other.s
        self._chan(s, o["n"], o["mean"], o["m2"])
        for key in ("zeros", "hist", "below", "above", "csum", "ccount"):
            s[key] = s[key] + o[key]
        s["min"] = torch.minimum(s["min"], o["min"])
        s["max"] = torch.maximum(s["max"], o["max"])
        return self

    def compute(self) -> NeuronStats:
        if self.s is None:
            raise ValueError("neuron statistics saw no images: the dataset (or this shard) is empty")
        s = self.s
        n = s["n"].clamp_min(1)
        var = s["m2"] / n
        cnt = s["ccount"]
        cm = s["csum"] / cnt.clamp_min(1).view(-1, 1)
        seen = cnt > 0
        cms = cm[seen]  # classes with images
        if cms.shape[0] >= 2:
            mx, arg = cms.max(0)
            rest = (cms.sum(0) - mx) / (cms.shape[0] - 1)
            denom = mx + rest
            sel = torch.where(denom.abs() > 1e-12, (mx - rest) / denom, torch.zeros_like(mx))
            pref = seen.nonzero().flatten()[arg]
        else:
            sel = torch.zeros(cm.shape[1], dtype=torch.float64)
            pref = torch.full((cm.shape[1],), int(seen.nonzero().flatten()[0]) if seen.any() else -1)
        f = lambda t: t.float()  # noqa: E731
        return NeuronStats(
            layer=self.layer,
            count=int(s["n"][0]),
            mean=f(s["mean"]),
            var=f(var),
            std=f(var.sqrt()),
            min=f(s["min"]),
            max=f(s["max"]),
            sparsity=f(s["zeros"] / n),
            dead=s["max"] <= self.zero,
            edges=f(self.edges),
            histogram=s["hist"],
            below=s["below"],
            above=s["above"],
            class_mean=f(cm),
            class_count=cnt.long(),
            selectivity=f(sel),
            preferred_class=pref.long(),
            settings={
                "zero": self.zero,
                "bins": self.edges.numel() - 1,
                "range": [float(self.edges[0]), float(self.edges[-1])],
            },
        )


def default_edges(model: nn.Module, data, layer: str, bins: int = 40, look: int = 64) -> torch.Tensor:
    """Bin edges from a first look at the first ``look`` samples (the same on every process).

    Range [min(0, lo), hi + 10 % of the span]; the rest of the data may fall outside
    (counted in ``below``/``above``).
    """
    dataset = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
    try:
        available = len(dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; an unsized one raises here, caught below
        xs = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(min(look, available))])
    except Exception as e:  # noqa: BLE001
        raise ValueError("cannot look at the first samples to choose histogram bins; pass edges=...") from e
    p = next(model.parameters(), None)
    with LayerTap(model, [layer], stop_after=layer, detach=True) as tap, torch.no_grad():
        tap.run(xs.to(p.device if p is not None else "cpu"))
        a = tap[layer].float()
    lo, hi = min(0.0, float(a.min())), float(a.max())
    if hi <= lo:
        hi = lo + 1.0
    hi = hi + 0.1 * (hi - lo)
    return torch.linspace(lo, hi, bins + 1, dtype=torch.float64)


@needs_autograd
def neuron_stats(
    model: nn.Module,
    data,
    layer: LayerRef,
    *,
    bins: int = 40,
    edges: torch.Tensor | None = None,
    zero: float = 0.0,
    batch_size: int = 64,
    device=None,
    progress=None,
    layout: str | None = None,
) -> NeuronStats:
    """Per-channel statistics of a layer over a dataset, in one scan (see the module docstring).
    ``layout``: "nchw" / "nhwc" for a layer output that reads both ways (see :func:`cnnlens.scanning.scan`).

    Example::

        st = neuron_stats(cnnlens.load_model("digits-cnn"), "digits", "features.1")
        st.sparsity, st.dead_channels, st.selectivity, st.class_mean  # C, list, C, K×C
    """
    name, _ = resolve_layer(model, layer)
    data = as_dataset(data, model)
    if edges is None:
        edges = default_edges(model, data, name, bins)
    spec = getattr(model, "spec", None)
    acc = StatsAccumulator(name, edges, num_classes=getattr(spec, "num_classes", None) or None, zero=zero)
    (res,) = scan(model, data, [acc], batch_size=batch_size, device=device, progress=progress, layout=layout)
    return res
