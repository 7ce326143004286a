"""One background thread through which every use of the model runs.

The explorer serialises model access rather than copying the model per worker: the
scan, every attribution, attack and prediction is a :class:`Job` run by this single
thread, in submission order (background jobs after the others). Requests never touch the model themselves; they submit
a job (identical keys share one job) and either wait for it (cheap drawings) or poll
its progress (heavy methods). So concurrent requests cannot interleave two passes
through the model, and each pass leaves it as it was (the methods' LayerTap contract).

A running job may :meth:`Worker.claim` queued jobs of the same kind and do their work in
the same pass (feature visualisations of many channels of a layer in one optimisation);
the worker then skips them when they come up, and the claimer finishes them.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised from a cancelled job's progress report: the work stops at its next report (between chunks)."""


class Job:
    """A unit of model work: ``status`` queued → running → done | error | cancelled, ``progress`` in [0, 1]."""

    def __init__(self, key: str, fn: Callable[[Callable[[float], None]], Any]):
        self.key, self.fn = key, fn
        self.status = "queued"
        self.progress = 0.0
        self.value: Any = None
        self.error: str | None = None
        self.done = threading.Event()
        self.started: float | None = None
        self.finished: float | None = None
        self.background = False
        self.cancel_requested = False

    def report(self, fraction: float) -> None:
        """Record progress; raises :class:`Cancelled` once the job was cancelled (so the work stops here)."""
        if self.cancel_requested:
            raise Cancelled(f"{self.key}: cancelled")
        self.progress = max(0.0, min(1.0, float(fraction)))

    def to_dict(self) -> dict:
        return {"status": self.status, "progress": round(self.progress, 3), "error": self.error}

    def finish(self, value: Any = None, error: str | None = None) -> None:
        """Mark the job done with ``value``, or failed with ``error`` (a one-line message)."""
        if error is None:
            self.value, self.status, self.progress = value, "done", 1.0
        elif self.cancel_requested:
            self.error, self.status = "cancelled", "cancelled"
        else:
            self.error, self.status = error, "error"
        self.finished = time.perf_counter()
        self.done.set()


def error_line(e: BaseException, key: str) -> str:
    """A failed job's one-line message (an unexpected exception is also logged with its traceback)."""
    if isinstance(e, Cancelled):
        return "cancelled"
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not isinstance(e, (ValueError, TypeError)):
        log.exception("explorer job %s failed", key)
        msg = f"{type(e).__name__}: {msg}"
    return msg


class Worker:
    """A queue of :class:`Job` run by one daemon thread: foreground jobs in submission order, then background
    ones; ``close()`` stops it once the queued jobs have run (waiting ``timeout`` seconds at most)."""

    def __init__(self, name: str = "cnnlens-explore-worker"):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()  # (priority, order, job): FIFO within a priority
        self._order = itertools.count()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, key: str, fn: Callable[[Callable[[float], None]], Any], background: bool = False) -> Job:
        """The job for ``key``: the queued/running/finished one if there is one (a failed one is retried).
        A ``background`` job (long work nobody waits on, e.g. a layer's feature visualisations) runs after every
        queued foreground job, so a page's request does not wait behind it."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the explorer's worker is stopped")
            job = self._jobs.get(key)
            if job is not None and job.status not in ("error", "cancelled"):
                if job.status == "queued" and job.background and not background:  # now someone waits on it
                    job.background = False
                    self._queue.put((0, next(self._order), job))  # its later queue entry is skipped
                return job
            job = Job(key, fn)
            job.background = background
            self._jobs[key] = job
            if len(self._jobs) > 2048:  # forget finished jobs (their results are on disk)
                for k in [k for k, j in self._jobs.items() if j.done.is_set()][:1024]:
                    self._jobs.pop(k, None)
            self._queue.put((1 if background else 0, next(self._order), job))
            return job

    def claim(self, prefix: str, limit: int) -> list[Job]:
        """Up to ``limit`` queued jobs whose key starts with ``prefix``, in submission order, now marked running:
        the caller (a running job) does their work and must :meth:`Job.finish` each of them."""
        with self._lock:
            got = [j for k, j in self._jobs.items() if k.startswith(prefix) and j.status == "queued"][: max(0, limit)]
            for j in got:
                j.status, j.started = "running", time.perf_counter()
            return got

    def cancel(self, prefix: str) -> int:
        """Cancel the queued and running jobs whose key starts with ``prefix``: a queued one never runs, a running
        one stops at its next progress report (between chunks of its work). Returns how many were cancelled."""
        with self._lock:
            hit = [j for k, j in self._jobs.items() if k.startswith(prefix) and j.status in ("queued", "running")]
            for j in hit:
                j.cancel_requested = True
                if j.status == "queued":
                    j.finish(error="cancelled")
            return len(hit)

    def get(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def run(self, key: str, fn: Callable[[Callable[[float], None]], Any], timeout: float = 600.0) -> Any:
        """Submit and wait; raises the job's error as a ValueError."""
        job = self.submit(key, fn)
        if not job.done.wait(timeout):
            raise TimeoutError(f"{key}: still running after {timeout:.0f} s")
        if job.status == "error":
            raise ValueError(job.error)
        return job.value

    def _loop(self) -> None:
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.status != "queued":  # claimed and done by another job
                    continue
                job.status, job.started = "running", time.perf_counter()
            try:
                job.finish(job.fn(job.report))
            except Cancelled:
                job.finish(error="cancelled")
            except Exception as e:  # noqa: BLE001 - a failed job is reported, the worker goes on
                job.finish(error=error_line(e, job.key))
            except BaseException as e:  # the thread is ending: whoever waits on the job still hears of it
                job.finish(error=error_line(e, job.key))
                raise

    def close(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._closed = True
        self._queue.put((2, next(self._order), None))  # after every queued job
        self._thread.join(timeout)
