"""How batched work is split: one rule for every method that runs several forwards.

:func:`check_batch_size` picks the automatic batch size (measured fastest per image
on the CPU), :func:`chunks` walks a range in steps of it; long runs of same-shaped
forwards (occlusion's full re-inference, Score-CAM) let :class:`Tuner` measure the
batch size and thread count as they run. Results never depend on the batch size or
the thread count (the tests check it method by method).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch


def check_batch_size(batch_size: int | None, x: torch.Tensor | None = None) -> int:
    """A positive int, or for None an automatic size: ~600 k input values per batch on CPU (4 images
    of 3×224×224), ~16 M on a GPU; between 1 and 512.

    On the CPU larger batches only thrash the caches (docs/benchmarks.md, "Where the speed
    comes from"), and a forward + backward to the input keeps every activation until the
    backward, so it gains the same way."""
    if batch_size is None:
        if not torch.is_tensor(x):
            return 4
        per = x[0].numel() if x.dim() == 4 else x.numel()
        budget = 16_000_000 if x.device.type != "cpu" else 600_000
        return int(min(512, max(1, round(budget / max(1, per)))))
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (or None for automatic), got {batch_size!r}")
    return batch_size


def chunks(total: int, size: int):
    """(start, stop) pairs covering range(total) in steps of ``size``."""
    size = max(1, int(size))
    for s in range(0, total, size):
        yield s, min(total, s + size)


# --------------------------------------------------------------------------------------------------------------
# Measured choice for long runs of same-shaped forwards (occlusion's full re-inference, Score-CAM)
#
# On a CPU shared with other processes, what is fastest per image changes with the load, and by large factors: on
# cores busy with other work, two torch threads per forward run many times slower than one (each parallel region
# waits for a descheduled thread), while on a quiet machine two threads are faster; larger batches lose on a quiet
# machine (caches) and win on a loaded one (fewer parallel regions per image); docs/benchmarks.md has the figures.
# So the choice is measured while the work runs.


@contextlib.contextmanager
def num_threads(n: int):
    """Run the block on ``n`` torch threads (0: as it is); the process's count is restored, also on error."""
    before = torch.get_num_threads()
    change = bool(n) and n != before
    try:
        if change:
            torch.set_num_threads(n)
        yield
    finally:
        if change:
            torch.set_num_threads(before)


@dataclass(frozen=True)
class Arm:
    """One way to run a batch of forwards: ``batch`` images per forward, channels-last or not, on ``threads`` torch
    threads (0: leave the thread count as it is)."""

    batch: int
    channels_last: bool
    threads: int = 0


#: per workload (model, input shape, dtype, device, thread count, arms): {arm: recent seconds per image}, kept for
#: the process so that the next call on the same workload starts with what was measured
_MEASURED: dict = {}
#: share of the running time spent re-measuring the arms that are not the current best (so that the choice follows
#: a change of load); an arm measured slower costs proportionally more and is re-measured less often
EXPLORE = 0.05
#: seconds per image of an arm: the minimum of its last few measurements (others' load only ever slows a batch down)
RECENT = 3


def arms(x: torch.Tensor, batch_size: int | None, channels_last: bool) -> tuple[Arm, ...]:
    """The ways :class:`Tuner` tries for forwards of images shaped like ``x``'s: on a CPU, the automatic batch and 4×
    it (or the given ``batch_size``), each on the process's torch threads and on one thread; elsewhere the automatic
    batch only."""
    auto = check_batch_size(batch_size, x)
    if x.device.type != "cpu":
        return (Arm(auto, channels_last),)
    sizes = [auto] if batch_size is not None else sorted({auto, min(512, 4 * auto)})
    n = torch.get_num_threads()
    threads = [0, 1] if n > 1 else [0]
    return tuple(Arm(b, channels_last, t) for t in threads for b in sizes)


class Tuner:
    """Chooses, batch by batch, the :class:`Arm` measured fastest per image for one workload.

    Every arm is tried twice first (interleaved; real work, nothing is thrown away — the first run of a batch shape
    also pays one-off set-up costs; an arm 3× slower than the best needs no second trial), or not at all when an
    earlier call of the process already measured it. Then the best arm runs, and about :data:`EXPLORE` of the time
    goes to re-measuring the others, the least recently measured first, so a change of load changes the choice.
    Results never depend on the arm (the same values up to float rounding: per-image forwards in any batch, on any
    number of threads).

    >>> t = Tuner(("occlusion", ...), arms(x, None, True))           # doctest: +SKIP
    >>> while done < total:
    ...     arm = t.next(total - done); n = min(arm.batch, total - done)
    ...     with t.timed(arm, n): ...                                   # run n forwards
    """

    def __init__(self, key: Any, choices: tuple[Arm, ...]):
        self.arms = tuple(choices)
        self.seen = _MEASURED.setdefault((key, self.arms), {})
        self.trials = [a for a in self.arms if len(self.seen.get(a, ())) < 1]
        self.trials += [a for a in self.arms if len(self.seen.get(a, ())) < 2]
        self.credit = 0.0
        self.tick = 0
        self.last = {a: -1 for a in self.arms}

    def estimate(self, arm: Arm) -> float:
        t = self.seen.get(arm)
        return min(t[-RECENT:]) if t else float("inf")

    def best(self) -> Arm:
        return min(self.arms, key=self.estimate)

    def next(self, remaining: int) -> Arm:
        """The arm for the next batch (at most ``remaining`` images are left)."""
        if len(self.arms) == 1:
            return self.arms[0]
        while self.trials:
            a = self.trials.pop(0)
            # a second trial only for an arm within 3× of the best so far (the first run of a batch shape pays
            # set-up costs; one 5–50× slower, as two threads on busy cores are, needs no second look now)
            if a.batch <= remaining and not (a in self.seen and self.estimate(a) > 3 * self.estimate(self.best())):
                return a
        best = self.best()
        others = sorted((a for a in self.arms if a != best and a.batch <= remaining), key=lambda a: self.last[a])
        for a in others[:1]:
            if self.credit >= self.estimate(a) * a.batch:
                return a
        return best

    def threads(self):
        """Run other work of the call (the clean forward) on the thread count of the best arm measured so far."""
        return num_threads(self.best().threads if len(self.arms) > 1 and any(self.seen.values()) else 0)

    @contextlib.contextmanager
    def timed(self, arm: Arm, n: int):
        """Run a batch of ``n`` images with the arm's thread count, and record its time per image."""
        t = time.perf_counter()
        with num_threads(arm.threads):
            yield
        seconds = time.perf_counter() - t
        self.tick += 1
        if len(self.arms) == 1 or n != arm.batch:  # a short last batch says little about the arm
            return
        explored = arm != self.best()
        self.seen.setdefault(arm, []).append(seconds / n)
        del self.seen[arm][:-RECENT]
        self.last[arm] = self.tick
        self.credit = self.credit - seconds if explored else self.credit + EXPLORE * seconds
        self.credit = max(self.credit, 0.0)


def workload(method: str, model: Any, x: torch.Tensor) -> tuple:
    """The key under which :class:`Tuner` keeps its measurements: method, model, image shape, dtype, device and
    the process's torch thread count."""
    return (
        method,
        id(model),
        type(model).__name__,
        tuple(x.shape[1:]),
        x.dtype,
        str(x.device),
        torch.get_num_threads(),
    )


def chosen(key: Any) -> dict:
    """{arm: seconds per image} as measured so far for a workload key (for benchmarks and logs)."""
    return {a: min(t[-RECENT:]) for (k, _), seen in _MEASURED.items() if k == key for a, t in seen.items() if t}
