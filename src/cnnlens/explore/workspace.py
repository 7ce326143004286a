"""What every area of the explorer shares: the model, the dataset, the cache, the store and the one worker.

Samples are named by a *ref*: the dataset index (``"12"``) or ``"u"`` + 16 hex digits for an
uploaded image. Every ref and class is validated here before anything is read; files are only
ever read from the cache directory under names built from validated parts, and dataset samples
are read by index through the dataset (never by a path from a request).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..batching import check_batch_size
from .errors import BadRequest, NotFound, NotReady
from .store import Store, build_store, dataset_hash, model_hash, scan_dataset
from .worker import Job, Worker

_DATA_REF = re.compile(r"^[0-9]{1,10}$")
_UPLOAD_REF = re.compile(r"^u[0-9a-f]{16}$")


def scaled(report: Callable[[float], None], lo: float = 0.0, span: float = 1.0) -> Callable[[int, Any], None]:
    """A library ``progress(done, total)`` callback reporting lo + span · done / total to a job."""
    return lambda done, total: report(lo + span * done / max(1, total or 1))


class Workspace:
    """The model, its dataset, the cache folders, the store (once scanned) and the worker, validated refs."""

    def __init__(
        self,
        model: nn.Module,
        data,
        cache_dir: str | os.PathLike,
        *,
        batch_size: int,
        device,
        k: int,
        page_size: int,
        data_label: str | None,
    ):
        self.model = model
        self.data = data
        self.data_label = data_label or (data if isinstance(data, str) else type(data).__name__)
        self.cache = Path(cache_dir).expanduser().resolve()
        self.cache.mkdir(parents=True, exist_ok=True)
        self.batch_size, self.device, self.k, self.page_size = batch_size, device, k, page_size
        self.dataset = scan_dataset(data, model)
        self.n = len(self.dataset)
        # the Units scan and the unit pages record layers (and the scan keeps statistics) besides the forward: on
        # large images at most 4× the CPU's fastest batch (16 at 3×224²; EfficientNet-Lite0 peaked at 2.5 GB with 32)
        x0 = self.dataset[0][0]
        self.model_batch = min(int(batch_size), max(4, 4 * check_batch_size(None, torch.as_tensor(x0)[None])))
        spec = getattr(model, "spec", None)
        self.model_name = getattr(spec, "name", None) or type(model).__name__
        self.mhash, self.dhash = model_hash(model), dataset_hash(self.dataset)
        # results of dataset samples are keyed by model and data (an index means nothing across datasets);
        # uploads are preprocessed for the model, so they are kept per model
        self.results = self.cache / "results" / f"{self.mhash[:16]}-{self.dhash[:16]}"
        self.upload_dir = self.cache / "uploads" / self.mhash[:16]
        self.worker = Worker()
        self.store: Store | None = None
        self.lock = threading.Lock()
        self._scan_job: Job | None = None
        self._scan_done = 0
        self._class_names: tuple[str, ...] | None = (
            tuple(spec.class_names) if spec is not None and getattr(spec, "class_names", None) else None
        )

    # -- the scan -------------------------------------------------------------
    def start_scan(self, progress: Callable[[int, int], None] | None = None) -> Job:
        """Scan (or reuse the stored scan) in the worker thread; returns the job."""

        def run(report):
            def prog(done, total):
                self._scan_done = done
                report(done / max(1, total))
                if progress is not None:
                    progress(done, total)

            self.store = build_store(
                self.model,
                self.data,
                self.cache,
                k=self.k,
                batch_size=self.batch_size,
                device=self.device,
                progress=prog,
                dataset=self.dataset,
                hashes=(self.mhash, self.dhash),
            )
            return True

        self._scan_job = self.worker.submit("scan", run)
        return self._scan_job

    def wait_ready(self, timeout: float = 3600.0) -> Store:
        if self.store is not None:
            return self.store
        job = self._scan_job if self._scan_job is not None else self.start_scan()
        job.done.wait(timeout)
        if self.store is None:
            raise ValueError(f"the scan failed: {job.error}")
        return self.store

    def status(self) -> dict:
        job = self._scan_job
        state = (
            "ready" if self.store is not None else "error" if job is not None and job.status == "error" else "scanning"
        )
        return {
            "state": state,
            "done": self.n if state == "ready" else self._scan_done,
            "total": self.n,
            "error": job.error if job is not None else None,
            "model": self.model_name,
            "data": self.data_label,
        }

    def ready(self) -> Store:
        """The store, or NotReady while the scan runs (BadRequest 500 when it failed)."""
        if self.store is None:
            st = self.status()
            if st["state"] == "error":
                raise BadRequest(f"the scan failed: {st['error']}", 500)
            raise NotReady(f"the scan is still running ({st['done']} of {st['total']} samples)")
        return self.store

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.store is not None:
            return self.store.class_names
        return self._class_names or ()

    def class_name(self) -> Callable[[int], str]:
        """A class's name, or its index for a class the names do not cover."""
        names = self.class_names
        return lambda k: names[k] if 0 <= k < len(names) else str(k)

    # -- validation -----------------------------------------------------------
    def check_class(self, c: Any) -> int:
        store = self.ready()
        s = str(c)
        if not re.fullmatch(r"[0-9]{1,9}", s) or int(s) >= store.num_classes:
            raise NotFound(f"no class {s[:40]!r}; classes are 0..{store.num_classes - 1}")
        return int(s)

    def check_ref(self, ref: Any) -> str:
        s = str(ref)
        if _DATA_REF.fullmatch(s):
            if int(s) >= self.n:
                raise NotFound(f"no sample {s}; the dataset has {self.n} (0..{self.n - 1})")
            return str(int(s))
        if _UPLOAD_REF.fullmatch(s) and (self.upload_dir / f"{s}.safetensors").is_file():
            return s
        raise NotFound(f"no sample {s[:40]!r}; samples are dataset indices or uploaded images")

    # -- a sample's pixels ----------------------------------------------------
    def tensor(self, ref: str) -> torch.Tensor:
        """The sample ``ref`` (validated) as 1×C×H×W in [0, 1], on the CPU."""
        if ref.startswith("u"):
            return load_file(str(self.upload_dir / f"{ref}.safetensors"))["x"]
        x, _ = self.dataset[int(ref)]
        return torch.as_tensor(x).unsqueeze(0).float()

    def device_tensor(self, ref: str) -> torch.Tensor:
        """:meth:`tensor` on the model's device."""
        p = next(self.model.parameters(), None)
        return self.tensor(ref).to(p.device if p is not None else "cpu")

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after its running job (waiting at most ``timeout`` s) and close the store."""
        self.worker.close(timeout)
        if self.store is not None:
            self.store.close()
