"""One background thread through which every use of the model runs.

The explorer serialises model access rather than copying the model per worker: the
scan, every attribution, attack and prediction is a :class:`Job` run by this single
thread, in submission order. Requests never touch the model themselves; they submit
a job (identical keys share one job) and either wait for it (cheap drawings) or poll
its progress (heavy methods). So concurrent requests cannot interleave two passes
through the model, and each pass leaves it as it was (the methods' LayerTap contract).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


class Job:
    """A unit of model work: ``status`` queued → running → done | error, ``progress`` in [0, 1]."""

    def __init__(self, key: str, fn: Callable[[Callable[[float], None]], Any]):
        self.key, self.fn = key, fn
        self.status = "queued"
        self.progress = 0.0
        self.value: Any = None
        self.error: str | None = None
        self.done = threading.Event()
        self.started = self.finished = None

    def report(self, fraction: float) -> None:
        self.progress = max(0.0, min(1.0, float(fraction)))

    def to_dict(self) -> dict:
        return {"status": self.status, "progress": round(self.progress, 3), "error": self.error}


class Worker:
    """A FIFO of :class:`Job` run by one daemon thread; ``close()`` stops it after the running job."""

    def __init__(self, name: str = "cnnlens-explore-worker"):
        self._queue: queue.Queue = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, key: str, fn: Callable[[Callable[[float], None]], Any]) -> Job:
        """The job for ``key``: the queued/running/finished one if there is one (a failed one is retried)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the explorer's worker is stopped")
            job = self._jobs.get(key)
            if job is not None and job.status != "error":
                return job
            job = Job(key, fn)
            self._jobs[key] = job
            if len(self._jobs) > 2048:  # forget finished jobs (their results are on disk)
                for k in [k for k, j in self._jobs.items() if j.done.is_set()][:1024]:
                    self._jobs.pop(k, None)
            self._queue.put(job)
            return job

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
            job = self._queue.get()
            if job is None:
                return
            job.status, job.started = "running", time.perf_counter()
            try:
                job.value = job.fn(job.report)
                job.status = "done"
                job.progress = 1.0
            except Exception as e:  # noqa: BLE001 - a failed job is reported, the worker goes on
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if not isinstance(e, (ValueError, TypeError)):
                    log.exception("explorer job %s failed", job.key)
                    msg = f"{type(e).__name__}: {msg}"
                job.error, job.status = msg, "error"
            finally:
                job.finished = time.perf_counter()
                job.done.set()

    def close(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)
