"""Train the digits CNN, deterministically, in seconds on a CPU.

The shipped weights ``models/weights/digits_cnn.safetensors`` are reproduced by::

    cnnlens train digits --seed 0 --epochs 20 --out src/cnnlens/models/weights/digits_cnn.safetensors

A later method plugs in through ``loss_fn(model, x, y) -> loss`` (adversarial
training, a gradient-norm penalty); ``model`` is the pixel-space model
(``PixelModel``: input in [0, 1]), so budgets are in pixel units.

    >>> from cnnlens.train import train_digits, accuracy
    >>> from cnnlens.models.digits import digits_split
    >>> model = train_digits(seed=0, epochs=1)
    >>> acc = accuracy(model, digits_split("test"))
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .models.cluttered import ClutteredDigitsCNN, cluttered_digits, cluttered_spec
from .models.digits import DigitsCNN, digits_spec, digits_split
from .models.spec import PixelModel

log = logging.getLogger(__name__)

#: the default number of epochs (the shipped weights use it)
EPOCHS = 20
BATCH_SIZE = 64
LR = 0.01

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default training loss: mean cross-entropy of ``model(x)`` against ``y``."""
    return F.cross_entropy(model(x), y)


@contextlib.contextmanager
def deterministic(seed: int, threads: int = 1) -> Iterator[torch.Generator]:
    """Seed torch's global RNG, enable deterministic algorithms, fix the thread count; all restored on exit.

    Yields a ``torch.Generator`` seeded with ``seed`` for data order. One thread
    makes the floating-point reduction order, and so the weights, reproducible.
    """
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_num_threads(threads)
        try:
            yield torch.Generator().manual_seed(seed)
        finally:
            torch.set_num_threads(old_threads)
            torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def train_digits(
    seed: int = 0,
    epochs: int = EPOCHS,
    loss_fn: LossFn | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
) -> PixelModel:
    """Train ``digits-cnn`` from scratch on the train split; returns the model (a PixelModel) in eval mode.

    Adam with a one-cycle learning rate (peak ``lr``), ``epochs`` passes of
    batches of ``batch_size`` in a seeded order, minimising
    ``loss_fn(model, x, y)`` (default: cross-entropy); the same seed gives the
    same weights. ``progress(done, total)`` is called after each epoch.

    >>> model = train_digits(seed=0, epochs=1)
    """
    data = digits_split("train")
    return train_classifier(
        lambda: PixelModel(DigitsCNN(), digits_spec()),
        data,
        seed=seed,
        epochs=epochs,
        loss_fn=loss_fn,
        progress=progress,
        lr=lr,
        batch_size=batch_size,
        what="digits",
    )


_Model = TypeVar("_Model", bound=nn.Module)


def train_classifier(
    make_model: Callable[[], _Model],
    data,
    seed: int = 0,
    epochs: int = EPOCHS,
    loss_fn: LossFn | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
    what: str = "model",
) -> _Model:
    """Train ``make_model()`` (built under the seed) on ``data`` (``.x``/``.y`` tensors); returned in eval mode.

    The loop behind :func:`train_digits` and :func:`train_cluttered`: Adam with a
    one-cycle learning rate (peak ``lr``), ``epochs`` passes of batches of
    ``batch_size`` in a seeded order, one thread; the same seed gives the same weights.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    loss_fn = loss_fn or cross_entropy
    x_all, y_all = data.x, data.y
    n = len(y_all)
    steps = (n + batch_size - 1) // batch_size
    with deterministic(seed) as gen:
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                loss = loss_fn(model, x_all[idx], y_all[idx])
                if not (torch.is_tensor(loss) and loss.dim() == 0):
                    raise TypeError("loss_fn must return a scalar tensor; reduce it with .mean()")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            log.info("%s epoch %d/%d: train loss %.4f", what, epoch + 1, epochs, total / n)
            if progress is not None:
                progress(epoch + 1, epochs)
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


#: epochs of the shipped cluttered-digits-cnn
CLUTTERED_EPOCHS = 12


def train_cluttered(
    seed: int = 0,
    epochs: int = CLUTTERED_EPOCHS,
    loss_fn: LossFn | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
) -> PixelModel:
    """Train ``cluttered-digits-cnn`` from scratch on the cluttered-digits train split (see :func:`train_classifier`).

    >>> model = train_cluttered(seed=0, epochs=1)            # doctest: +SKIP
    """
    data = cluttered_digits("train")
    return train_classifier(
        lambda: PixelModel(ClutteredDigitsCNN(), cluttered_spec()),
        data,
        seed=seed,
        epochs=epochs,
        loss_fn=loss_fn,
        progress=progress,
        lr=lr,
        batch_size=batch_size,
        what="cluttered-digits",
    )


@torch.no_grad()
def accuracy(model: nn.Module, data=None, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on a dataset of (x, y) pairs (default: the digits test split).

    acc = (1/N) Σ [argmax model(x_i) = y_i]. The model's training flag is restored.
    """
    data = digits_split("test") if data is None else data
    if hasattr(data, "x") and hasattr(data, "y"):
        x_all, y_all = data.x, data.y
    else:
        xs, ys = zip(*[data[i] for i in range(len(data))], strict=True)
        x_all, y_all = torch.stack(xs), torch.as_tensor(ys)
    was = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, len(y_all), batch_size):
            correct += int((model(x_all[i : i + batch_size]).argmax(1) == y_all[i : i + batch_size]).sum())
    finally:
        model.train(was)
    return correct / len(y_all)


def save_digits(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Write a small CNN's weights (keys of the inner network) to a .safetensors file."""
    net = model.net if isinstance(model, PixelModel) else model
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return path
