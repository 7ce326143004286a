"""Which channels of a layer drive an output: gradient, gradient × activation, and ablation.

For a target score y (a class's pre-softmax score, or a channel/neuron of a later
layer) and a layer's activations A (C×H×W), per channel k, averaged over images:

- ``gradient``:  mean_ij ∂y/∂A^k_ij                (Grad-CAM's α_k)
- ``taylor``:    Σ_ij A^k_ij · ∂y/∂A^k_ij          (first-order estimate of the drop)
- ``ablation``:  y(x) − y(x with A^k set to 0)     (the exact drop, one forward per channel)

On a global-average-pool + linear head read at the pooled layer,
y_c = Σ_k w_ck · mean_ij A^k_ij + b_c, so taylor = ablation = w_ck · mean(A^k)
exactly: the gradient ranking is checked against the real effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import torch
from torch import nn

from ..autograd import needs_autograd
from ..data import as_dataset
from ..inputs import check_not_empty
from ..results import Result
from ..scanning import Batch, distributed_info, scan
from ..tap import LayerRef, LayerTap, resolve_layer
from ..targets import Target, as_target, model_classes

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib), in figure() and preview().


@dataclass(frozen=True)
class Influence(Result):
    """Per-channel influence of a layer on a target (means over the images seen).

    gradient, taylor, ablation: C (ablation None when not computed, NaN for channels
    not ablated when only the top ones were, ``settings["ablated"]``); count: images;
    ranking: channels by taylor, descending; ablation_ranking: the ablated channels by
    ablation, descending.
    """

    layer: str
    target: str
    count: int
    gradient: torch.Tensor
    taylor: torch.Tensor
    ablation: torch.Tensor | None
    channels: tuple[int, ...]
    settings: dict = field(default_factory=dict)

    @property
    def ranking(self) -> list[int]:
        return [self.channels[i] for i in torch.sort(self.taylor, descending=True, stable=True).indices.tolist()]

    @property
    def ablation_ranking(self) -> list[int] | None:
        if self.ablation is None:
            return None
        done = ~torch.isnan(self.ablation)
        key = torch.where(done, self.ablation, torch.full_like(self.ablation, -float("inf")))
        order = torch.sort(key, descending=True, stable=True).indices.tolist()
        return [self.channels[i] for i in order if bool(done[i])]

    def figure(self, top: int = 16):
        """Bars of the top channels (by ablation if computed, else by taylor): the three measures side by side."""
        from ..viz import subplots

        abl = self.ablation
        full = abl is not None and not bool(torch.isnan(abl).any())
        key = abl if abl is not None and full else self.taylor
        order = torch.sort(key, descending=True, stable=True).indices[:top]
        fig, ax = subplots(figsize=(max(4.0, 0.45 * len(order) + 1), 2.8))
        xs = torch.arange(len(order)).float()
        series = [("a·∂y/∂a", self.taylor), ("∂y/∂a (mean)", self.gradient)]
        if self.ablation is not None:
            series.insert(0, ("drop when zeroed", torch.nan_to_num(self.ablation, nan=0.0)))
        w = 0.8 / len(series)
        for s, (label, v) in enumerate(series):
            ax.bar((xs + s * w).numpy(), v[order].numpy(), width=w, label=label)
        ax.set_xticks((xs + w).numpy())
        ax.set_xticklabels([str(self.channels[i]) for i in order.tolist()], fontsize=7)
        ax.set_xlabel(f"channel of {self.layer}")
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=7)
        ax.set_title(f"influence on {self.target}", fontsize=9)
        fig.tight_layout()
        return fig


def _score(target: Target, tap: LayerTap, logits, classes: torch.Tensor | None) -> torch.Tensor:
    if target.is_class:
        assert classes is not None  # measure() picks the classes of a class target
        return target.score(logits, classes)
    assert target.layer is not None  # a channel or neuron target names its layer
    return target.layer_score(tap[target.layer])


def checked_target(model: nn.Module, target: Any) -> Target:
    """The target as a :class:`Target`, its class range and sign checked against the model before any forward."""
    names, k = model_classes(model)
    t = as_target(target, names)
    if t.kind == "class":
        t.validate(len(t.index) if isinstance(t.index, tuple) else 1, k)
    if not t.is_class:
        assert t.layer is not None  # a channel or neuron target names its layer
        resolve_layer(model, t.layer)
    return t


class InfluenceAccumulator:
    """Sums per-channel gradient, gradient × activation and ablation drops over batches.

    It runs its own forward and backward passes on each batch (the scan's tap is
    paused meanwhile), so it can sit in the same :func:`cnnlens.scanning.scan` as
    evaluation or dataset search.
    """

    layers: tuple = ()

    def __init__(
        self,
        model: nn.Module,
        layer: LayerRef,
        target="predicted",
        *,
        ablation: bool = True,
        channels: Sequence[int] | None = None,
        chunk: int = 16,
        tick=None,
    ):
        self.layer, _ = resolve_layer(model, layer)
        spec = getattr(model, "spec", None)
        self.target = checked_target(model, target)
        self.ablation = ablation
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        self.chunk = max(1, int(chunk))
        self.tick = tick  # tick(units): one unit per image forward (n per gradient pass, n per ablated channel)
        self.description = self.target.describe(getattr(spec, "class_names", None) or None)
        self.count = 0
        self.sums: dict[str, torch.Tensor] | None = None

    def update(self, batch: Batch) -> None:
        if batch.model is None:
            raise ValueError("InfluenceAccumulator needs the model in the batch (run it through cnnlens.scan)")
        sums = measure(
            batch.model,
            batch.x,
            self.layer,
            self.target,
            y=batch.y,
            ablation=self.ablation,
            channels=self.channels,
            chunk=self.chunk,
            tick=self.tick,
        )
        self.channels = sums.pop("channels")
        n = sums.pop("count")
        self.count += n
        self.sums = sums if self.sums is None else {k: self.sums[k] + v for k, v in sums.items()}

    def merge(self, other: InfluenceAccumulator) -> InfluenceAccumulator:
        if other.sums is None:
            return self
        if self.sums is None:
            self.sums, self.channels, self.count = other.sums, other.channels, other.count
            return self
        self.sums = {k: self.sums[k] + other.sums[k] for k in self.sums}
        self.count += other.count
        return self

    def compute(self) -> Influence:
        if self.sums is None:
            raise ValueError("influence saw no images: the dataset (or this shard) is empty")
        n = max(1, self.count)
        return Influence(
            self.layer,
            self.description,
            self.count,
            self.sums["gradient"] / n,
            self.sums["taylor"] / n,
            self.sums["ablation"] / n if "ablation" in self.sums else None,
            tuple(self.channels or ()),  # set by the first update
            settings={"ablation": self.ablation},
        )


def measure(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    target: Target,
    *,
    y=None,
    ablation: bool = True,
    channels: Sequence[int] | None = None,
    chunk: int = 16,
    tick=None,
) -> dict:
    """Per-channel sums over the batch of gradient, taylor and ablation (float64, CPU), and the count."""
    target.validate(len(x), model_classes(model)[1], labels=y if target.kind == "true" else None)
    score_layers: list[str] = [layer]
    if not target.is_class:
        assert target.layer is not None  # a channel or neuron target names its layer
        score_layers.append(target.layer)
    with torch.enable_grad():
        with LayerTap(model, score_layers) as tap:
            logits = tap.run(x.detach().requires_grad_(True))  # so the graph reaches the layer (weights are frozen)
            a = tap[layer]
            if a.dim() == 2:
                raise ValueError(f"layer {layer!r} has no spatial grid (N×C); influence reads N×C×H×W layers")
            C = a.shape[1]
            chans = tuple(range(C)) if channels is None else tuple(channels)
            if chans and max(chans) >= C:
                raise ValueError(f"channel {max(chans)} is out of range: layer {layer!r} has {C} channels")
            classes = target.classes(logits, y) if target.is_class else None
            score = _score(target, tap, logits, classes)
            if not a.requires_grad:
                raise ValueError(f"the target does not depend on layer {layer!r}; pick a layer before the target")
            (g,) = torch.autograd.grad(score.sum(), a)
        a, g = a.detach(), g.detach()
        base = score.detach()
    if tick is not None:
        tick(len(x))
    out: dict[str, Any] = {
        "gradient": g.mean((2, 3))[:, list(chans)].double().sum(0).cpu(),
        "taylor": (a * g).sum((2, 3))[:, list(chans)].double().sum(0).cpu(),
    }
    if ablation:
        drops = torch.zeros(len(chans), dtype=torch.float64)
        n = len(x)
        with torch.no_grad():
            for start in range(0, len(chans), chunk):
                part = chans[start : start + chunk]
                r = len(part)
                mask = torch.ones(r, 1, C, 1, 1, dtype=a.dtype, device=a.device)
                for i, c in enumerate(part):
                    mask[i, 0, c] = 0
                mask = mask.expand(r, n, C, 1, 1).reshape(r * n, C, 1, 1)

                def zero(module, inputs, output, mask=mask):
                    return output * mask

                with LayerTap(model, score_layers[1:], edits={layer: zero}) as tap2:
                    logits2 = tap2.run(x.repeat(r, *[1] * (x.dim() - 1)))
                    cl = classes.repeat(r) if classes is not None else None
                    s2 = _score(target, tap2, logits2, cl).view(r, n)
                drops[start : start + r] = (base.view(1, n) - s2).double().sum(1).cpu()
                if tick is not None:
                    tick(r * n)
        out["ablation"] = drops
    out["channels"] = chans
    out["count"] = len(x)
    return out


@needs_autograd
def influence(
    model: nn.Module,
    x_or_data,
    layer: LayerRef,
    target="predicted",
    *,
    ablation: bool = True,
    channels: Sequence[int] | None = None,
    ablate_top: int | None = None,
    y: torch.Tensor | None = None,
    batch_size: int = 32,
    chunk: int = 16,
    device=None,
    progress=None,
) -> Influence:
    """Rank a layer's channels by their effect on a target: mean ∂y/∂a, a·∂y/∂a, and the drop when zeroed.

    ``x_or_data``: images N×C×H×W in [0, 1], or a dataset (``"digits"``, a folder,
    a Dataset, a DataLoader), scanned once. ``target``: a class, ``"predicted"``,
    ``"true"``, a class name, or ``Target.channel(layer, c)`` of a later layer.

    Ablation costs one forward per channel and image; ``ablate_top=k`` first ranks
    every channel by a·∂y/∂a (one backward per image), then zeroes only the k
    highest (a second pass; the others' ``ablation`` is NaN, ``settings["ablated"]``
    lists the k). ``progress(done, total)`` counts image forwards: n for each
    gradient pass plus n per ablated channel.

    Example::

        inf = influence(model, x, "features.6", target="predicted", ablate_top=16)
        inf.ranking[:5], inf.ablation_ranking[:5]
    """
    name, _ = resolve_layer(model, layer)
    checked_target(model, target)  # before any forward
    if torch.is_tensor(x_or_data):
        check_not_empty(x_or_data[None] if x_or_data.dim() == 3 else x_or_data)
    if ablate_top is not None and (isinstance(ablate_top, bool) or not isinstance(ablate_top, int) or ablate_top < 1):
        raise ValueError(f"ablate_top={ablate_top!r}: give a positive number of channels, or None for all")
    two_pass = ablation and ablate_top is not None
    n = _count(model, x_or_data, device)
    C = len(channels) if channels is not None else _channels_of(model, name, x_or_data, device)
    k = min(ablate_top, C) if two_pass and ablate_top is not None else C
    total = n * (2 + k) if two_pass else n * (1 + (C if ablation else 0))
    done = [0]

    def tick(units: int) -> None:
        done[0] += units
        if progress is not None:
            progress(min(done[0], total), total)

    run = dict(y=y, batch_size=batch_size, chunk=chunk, device=device, tick=tick)
    first = _run(model, x_or_data, name, target, ablation=ablation and not two_pass, channels=channels, **run)
    if not two_pass:
        return first
    top = first.ranking[:k]
    second = _run(model, x_or_data, name, target, ablation=True, channels=top, **run)
    assert second.ablation is not None  # asked for with ablation=True
    abl = torch.full((len(first.channels),), float("nan"), dtype=second.ablation.dtype)
    for i, c in enumerate(second.channels):
        abl[first.channels.index(c)] = second.ablation[i]
    return replace(
        first, ablation=abl, settings={**first.settings, "ablation": True, "ablate_top": k, "ablated": list(top)}
    )


def _count(model, x_or_data, device) -> int:
    if torch.is_tensor(x_or_data):
        return 1 if x_or_data.dim() == 3 else len(x_or_data)

    data = as_dataset(x_or_data, model)
    try:
        n = len(data.dataset if isinstance(data, torch.utils.data.DataLoader) else data)  # type: ignore[arg-type]
    except TypeError:  # torch's Dataset declares no __len__: an unsized one raises here  # an iterable dataset: unknown
        return 0
    rank, world = distributed_info()
    return len(range(rank, n, world))  # this process's shard


def _channels_of(model, layer: str, x_or_data, device) -> int:
    """The layer's channel count, from one forward of one image."""
    if torch.is_tensor(x_or_data):
        x = x_or_data if x_or_data.dim() == 4 else x_or_data[None]
        x = x[:1]
    else:
        data = as_dataset(x_or_data, model)
        ds = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
        x = torch.as_tensor(ds[0][0])[None]
    p = next(model.parameters(), None)
    x = x.to(device if device is not None else (p.device if p is not None else "cpu"))
    with LayerTap(model, [layer], detach=True, stop_after=layer) as tap, torch.no_grad():
        tap.run(x)
        a = tap[layer]
    return int(a.shape[1]) if a.dim() >= 2 else 1


def _run(model, x_or_data, name, target, *, ablation, channels, y, batch_size, chunk, device, tick) -> Influence:
    acc = InfluenceAccumulator(model, name, target, ablation=ablation, channels=channels, chunk=chunk, tick=tick)
    if torch.is_tensor(x_or_data):
        x = x_or_data
        if x.dim() == 3:
            x = x[None]
        check_not_empty(x)
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            yb = None if y is None else torch.as_tensor(y)[start : start + batch_size]
            # y is None without labels: measure() asks for them only for a "true" target
            acc.update(
                Batch(x=xb, y=cast(torch.Tensor, yb), logits=torch.empty(0), index=torch.arange(len(xb)), model=model)
            )
        return acc.compute()

    (res,) = scan(model, as_dataset(x_or_data, model), [acc], batch_size=batch_size, device=device)
    return res
