"""Targets: what a method explains, optimises or attacks.

One type, :class:`Target`, serves attribution, activation maximisation, attacks
and statistics. Shorthands are accepted wherever a target is taken and turned
into a :class:`Target` by :func:`as_target`:

=====================  ==============================================
``281``                class 281 for every sample
``[3, 5]`` / tensor    one class per sample
``"predicted"``        the arg-max class (rank 0)
``"second"``           the runner-up class (rank 1)
``"true"``             the label passed alongside the input
``"tabby"``            a class name from ``model.spec.class_names``
=====================  ==============================================

Channels and neurons of a layer are targets too: ``Target.channel("layer3", 5)``
scores the channel's mean activation, ``Target.neuron("layer3", 5, 2, 2)`` one unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

_RANKS = {"predicted": 0, "pred": 0, "top1": 0, "second": 1, "runner-up": 1}


class TargetError(ValueError):
    """A target (or the labels it reads) that does not fit the inputs or the model's logits: the caller's to fix,
    never a reason to retry another way."""


@dataclass(frozen=True)
class Target:
    """A class (fixed, per sample, ranked, true label), or a channel or neuron of a layer.

    ``kind`` is one of ``class``, ``rank``, ``true``, ``channel``, ``neuron``.

    >>> t = Target.rank(1)                      # the second most likely class
    >>> t.classes(torch.tensor([[0.1, 3.0, 2.0]])).tolist()
    [2]
    """

    kind: str
    index: Any = None  # int | tuple[int, ...] for classes, int for channel
    layer: str | None = None
    position: tuple[int, int] | None = None

    # -- constructors -------------------------------------------------------
    @staticmethod
    def cls(index: int | Sequence[int] | torch.Tensor) -> Target:
        """A fixed class, or one class per sample."""
        if torch.is_tensor(index):
            if index.dim() > 1 or index.is_floating_point():
                raise ValueError("per-sample targets must be a 1-D integer tensor of class indices")
            index = tuple(int(i) for i in index.tolist()) if index.dim() == 1 else int(index)
        elif isinstance(index, (list, tuple)):
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in index):
                raise TypeError("per-sample targets must be a list of int class indices")
            index = tuple(index)
        elif not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"a class target must be an int, got {type(index).__name__}")
        return Target("class", index)

    @staticmethod
    def rank(r: int = 0) -> Target:
        """The r-th most likely class (0 = predicted, 1 = second)."""
        if r < 0:
            raise ValueError("rank must be ≥ 0 (0 = predicted, 1 = second)")
        return Target("rank", r)

    @staticmethod
    def true() -> Target:
        """The ground-truth label given with the input."""
        return Target("true")

    @staticmethod
    def channel(layer: str, channel: int) -> Target:
        """The spatial mean activation of one channel of a layer."""
        return Target("channel", int(channel), layer)

    @staticmethod
    def neuron(layer: str, channel: int, i: int, j: int) -> Target:
        """One unit (channel, row, column) of a layer."""
        return Target("neuron", int(channel), layer, (int(i), int(j)))

    # -- behaviour ----------------------------------------------------------
    @property
    def is_class(self) -> bool:
        return self.kind in ("class", "rank", "true")

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        if self.kind == "class":
            if isinstance(self.index, tuple):
                return "per-sample classes"
            name = f" ({class_names[self.index]})" if class_names and 0 <= self.index < len(class_names) else ""
            return f"class {self.index}{name}"
        if self.kind == "rank":
            return {0: "predicted class", 1: "second most likely class"}.get(self.index, f"rank-{self.index} class")
        if self.kind == "true":
            return "true class"
        if self.kind == "channel":
            return f"{self.layer} channel {self.index}"
        return f"{self.layer} unit {self.index}@{self.position}"

    def subset(self, start: int, stop: int) -> Target:
        """The target of samples ``start:stop`` of a batch (per-sample classes are sliced; others are shared)."""
        if self.kind == "class" and isinstance(self.index, tuple):
            return Target("class", self.index[start:stop])
        return self

    def validate(self, n: int, num_classes: int | None = None, labels: torch.Tensor | None = None) -> None:
        """Check range and count before any forward: raises ValueError naming the fix."""
        if self.kind == "class":
            idx = self.index if isinstance(self.index, tuple) else (self.index,)
            if isinstance(self.index, tuple) and len(idx) != n:
                raise TargetError(f"got {len(idx)} per-sample targets for {n} inputs; give one class per input")
            neg = [i for i in idx if i < 0]
            if neg:
                raise TargetError(
                    f"target class {neg[0]} is negative; give a class index from 0"
                    + (f" to {num_classes - 1}" if num_classes else "")
                    + " (or a class name)"
                )
            if num_classes is not None:
                bad = [i for i in idx if not 0 <= i < num_classes]
                if bad:
                    raise TargetError(
                        f"target class {bad[0]} is out of range: the model has {num_classes} classes "
                        f"(0–{num_classes - 1})"
                    )
        elif self.kind == "rank":
            if num_classes is not None and self.index >= num_classes:
                raise TargetError(f"rank {self.index} needs more than {num_classes} classes")
        elif self.kind == "true":
            if labels is None:
                raise TargetError('target "true" needs labels: pass y=... (or use "predicted")')
            if len(labels) != n:
                raise TargetError(f"got {len(labels)} labels for {n} inputs")
            lab = torch.as_tensor(labels).reshape(-1)
            if lab.numel() and (
                lab.is_floating_point()
                or int(lab.min()) < 0
                or (num_classes is not None and int(lab.max()) >= num_classes)
            ):
                raise TargetError(
                    f"labels must be class indices in 0–{(num_classes or 0) - 1 if num_classes else '…'}, "
                    f"got values from {lab.min().item()} to {lab.max().item()}"
                )
        elif self.kind in ("channel", "neuron"):
            if self.index < 0:
                raise TargetError("channel index must be ≥ 0")

    def classes(self, logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The class index for each sample (LongTensor N), given the logits N×K."""
        if logits.dim() != 2:
            raise TargetError(
                f"the model returned logits of shape {tuple(logits.shape)}; a classifier must return N×K "
                "(wrap the model so forward() returns the logits tensor)"
            )
        n, k = logits.shape
        self.validate(n, k, labels)
        if self.kind == "class":
            idx = self.index if isinstance(self.index, tuple) else (self.index,) * n
            return torch.tensor(idx, dtype=torch.long, device=logits.device)
        if self.kind == "rank":
            return logits.detach().topk(self.index + 1, dim=1).indices[:, self.index]
        if self.kind == "true":
            assert labels is not None  # validate() refuses a "true" target without labels
            return labels.to(device=logits.device, dtype=torch.long).reshape(-1)
        raise TargetError(f"a {self.kind} target does not select a class; use it with a layer objective")

    def score(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Pre-softmax score of each sample's class: logits[i, classes[i]] (N)."""
        return logits.gather(1, classes.view(-1, 1)).squeeze(1)

    def layer_score(self, act: torch.Tensor) -> torch.Tensor:
        """Per-sample score of a channel/neuron target on a layer activation N×C×H×W (or N×C)."""
        if self.kind not in ("channel", "neuron"):
            raise ValueError("layer_score needs a channel or neuron target")
        if self.index >= act.shape[1]:
            raise ValueError(f"channel {self.index} is out of range: layer {self.layer} has {act.shape[1]} channels")
        a = act[:, self.index]
        if self.kind == "neuron":
            assert self.position is not None  # Target.neuron sets it
            i, j = self.position
            if a.dim() != 3 or not (0 <= i < a.shape[1] and 0 <= j < a.shape[2]):
                raise ValueError(f"position {(i, j)} is outside the layer's {tuple(a.shape[1:])} grid")
            return a[:, i, j]
        return a.reshape(a.shape[0], -1).mean(1)


def model_classes(model: Any) -> tuple[tuple[str, ...] | None, int | None]:
    """``(class_names, num_classes)`` from ``model.spec`` when it has them, else ``(None, None)``."""
    spec = getattr(model, "spec", None)
    names = tuple(getattr(spec, "class_names", ()) or ()) or None
    return names, (len(names) if names else None)


def as_target(target: Any, class_names: Sequence[str] | None = None) -> Target:
    """Turn a shorthand (int, list, tensor, "predicted", "second", "true", class name) into a Target."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        key = target.strip().lower()
        if key in _RANKS:
            return Target.rank(_RANKS[key])
        if key == "true":
            return Target.true()
        if key.lstrip("-").isdigit():
            return Target.cls(int(key))
        if class_names:
            lowered = [c.lower() for c in class_names]
            if key in lowered:
                return Target.cls(lowered.index(key))
            hits = [i for i, c in enumerate(lowered) if key in c]
            if len(hits) == 1:
                return Target.cls(hits[0])
            if hits:
                raise ValueError(
                    f"target {target!r} matches several classes ({', '.join(class_names[i] for i in hits[:5])}); "
                    "give the full name or the index"
                )
        raise ValueError(f"unknown target {target!r}: use a class index, a class name, 'predicted', 'second' or 'true'")
    if isinstance(target, (int, list, tuple)) or torch.is_tensor(target):
        return Target.cls(target)
    raise TypeError(f"cannot use {type(target).__name__} as a target; use an int, a list of ints, a tensor or a string")
