"""The explorer's store: one SQLite file of per-sample scan results.

:class:`SampleAccumulator` is an accumulator of :func:`cnnlens.scan` that keeps one
row per sample (index, true class, predicted class, second class, top-k classes and
probabilities, cross-entropy loss, confidence and margin); shards merge by
concatenation, so the same code runs under ``torchrun``.

:func:`build_store` fills ``<cache>/scan-<key>.sqlite`` with one pass of that scan.
The key hashes the model's state_dict and spec and the dataset (for an ImageFolder:
every file's relative path, size and modification time plus the preprocessing; for
any other dataset: the tensor contents), so re-opening with the same weights and data
reuses the file and a change rescans. The scan runs in chunks committed to a partial
file (``.partial.sqlite``): a scan stopped with Ctrl-C resumes at the first chunk not
yet written, and the finished file replaces nothing until it is complete
(``os.replace``). Under ``torchrun`` every rank scans its shard of each chunk, the
shards are merged by :func:`cnnlens.scan` and rank 0 writes.

Definitions (per sample, p = softmax(logits)): ``pred`` = rank-0 class, ``second`` =
rank-1 class (ranks by logit, ties to the lower index, as :mod:`cnnlens.evaluation`),
``conf`` = p[pred], ``p_true`` = p[true], ``margin`` = p[pred] − p[second],
``loss`` = −log p[true], ``true_rank`` = rank of the true class (top-k hit iff < k).

>>> store = build_store(cnnlens.load_model("digits-cnn"), "digits", "cache")     # doctest: +SKIP
>>> store.evaluation().confusion                                                # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..data import as_dataset, require_labels
from ..evaluation import EvaluationResult, default_topk, true_class_rank
from ..inside.fvcache import model_hash  # SHA-256 of the state_dict and spec (one definition, also the fv cache key)
from ..scanning import Batch, distributed_info, scan
from ..tap import LayerTap

log = logging.getLogger(__name__)

#: bump when the table layout or a definition changes (old stores are then rescanned)
SCHEMA = 1
#: samples per committed chunk (the unit of resumption)
CHUNK = 2048

_COLUMNS = (
    "idx",
    "path",
    "true",
    "pred",
    "second",
    "conf",
    "p_true",
    "margin",
    "loss",
    "true_rank",
    "top_classes",
    "top_probs",
)

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (chunk INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS samples (
    idx INTEGER PRIMARY KEY, path TEXT, true INTEGER NOT NULL, pred INTEGER NOT NULL, second INTEGER NOT NULL,
    conf REAL NOT NULL, p_true REAL NOT NULL, margin REAL NOT NULL, loss REAL NOT NULL, true_rank INTEGER NOT NULL,
    top_classes TEXT NOT NULL, top_probs TEXT NOT NULL);
"""
_INDEX_SQL = """
CREATE INDEX IF NOT EXISTS cell_conf ON samples (true, pred, conf, idx);
CREATE INDEX IF NOT EXISTS cell_margin ON samples (true, pred, margin, idx);
"""


class SampleAccumulator:
    """Per-sample rows of a scan (mergeable by concatenation; ``compute()`` sorts them by index).

    Each row: ``(idx, true, pred, second, conf, p_true, margin, loss, true_rank, top_classes, top_probs)``
    with the definitions of the module docstring; ``offset`` is added to the scan's indices
    (for a scan of a slice of the dataset).

    >>> acc = SampleAccumulator(k=2)
    >>> acc.update(Batch(x=torch.zeros(1, 1, 1, 1), y=torch.tensor([1]),
    ...                  logits=torch.tensor([[2., 0., 2.]]), index=torch.tensor([0])))
    >>> acc.compute()[0][:4]
    (0, 1, 0, 2)
    """

    layers: Sequence[str] = ()

    def __init__(self, k: int = 5, offset: int = 0):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k={k!r}: give a positive int (how many top classes to keep per sample)")
        self.k, self.offset = k, int(offset)
        self.rows: list[tuple] = []

    def update(self, batch: Batch) -> None:
        logits, y = batch.logits.detach().float().cpu(), batch.y.detach().cpu().long()
        if logits.dim() != 2:
            raise ValueError(f"the model output has shape {tuple(logits.shape)}; the explorer needs N×K logits")
        K = logits.shape[1]
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= K):
            raise ValueError(f"a label is outside the model's {K} classes; give labels in 0..{K - 1}")
        order = torch.sort(-logits, dim=1, stable=True).indices  # ties: lower class index first
        probs = logits.softmax(1)
        logp = logits.log_softmax(1)
        k = min(self.k, K)
        top = order[:, :k]
        top_p = probs.gather(1, top)
        pred = order[:, 0]
        second = order[:, 1] if K > 1 else order[:, 0]
        conf = probs.gather(1, pred.view(-1, 1)).view(-1)
        p2 = probs.gather(1, second.view(-1, 1)).view(-1)
        p_true = probs.gather(1, y.view(-1, 1)).view(-1)
        loss = -logp.gather(1, y.view(-1, 1)).view(-1)
        rank = true_class_rank(logits, y)
        idx = batch.index.detach().cpu().long() + self.offset
        for i in range(len(y)):
            self.rows.append(
                (
                    int(idx[i]),
                    int(y[i]),
                    int(pred[i]),
                    int(second[i]),
                    float(conf[i]),
                    float(p_true[i]),
                    float(conf[i] - p2[i]) if K > 1 else 1.0,
                    float(loss[i]),
                    int(rank[i]),
                    top[i].tolist(),
                    [round(float(v), 6) for v in top_p[i]],
                )
            )

    def merge(self, other: SampleAccumulator) -> SampleAccumulator:
        if not isinstance(other, SampleAccumulator) or other.k != self.k:
            raise ValueError("can only merge sample accumulators with the same k")
        out = SampleAccumulator(self.k, self.offset)
        out.rows = self.rows + other.rows
        return out

    def compute(self) -> list[tuple]:
        return sorted(self.rows, key=lambda r: r[0])


# ---------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------


def _update_tensor(h, v: Any) -> None:
    t = torch.as_tensor(v).detach().cpu().contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _describe(obj: Any) -> str:
    """A repr without memory addresses: dataclasses as they print, other objects by type and attributes."""
    if obj is None or dataclasses.is_dataclass(obj) or not hasattr(obj, "__dict__"):
        return repr(obj)
    return f"{type(obj).__qualname__}{sorted((k, repr(v)) for k, v in vars(obj).items())}"


def dataset_hash(ds) -> str:
    """SHA-256 identifying a dataset's contents.

    An ImageFolder (torchvision, with ``samples`` and ``root``): each file's path relative
    to the root, size, modification time and label, plus the preprocessing (``transform``);
    a ``TensorDataset``: its tensors; any other dataset: every item's x and y.
    """
    h = hashlib.sha256()
    if hasattr(ds, "samples") and hasattr(ds, "root"):
        root = Path(ds.root)
        h.update(
            f"folder|{_describe(getattr(ds, 'transform', None))}|"
            f"{_describe(getattr(ds, 'target_transform', None))}|".encode()
        )
        for path, label in ds.samples:
            st = os.stat(path)
            h.update(f"{Path(path).relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    elif isinstance(ds, torch.utils.data.TensorDataset):
        h.update(b"tensors|")
        for t in ds.tensors:
            _update_tensor(h, t)
    else:
        h.update(f"items|{len(ds)}|".encode())
        for i in range(len(ds)):
            x, y = ds[i]
            _update_tensor(h, x)
            _update_tensor(h, y)
    return h.hexdigest()


def sample_paths(ds) -> list[str] | None:
    """Each sample's file path relative to the dataset root (ImageFolder), else None."""
    if hasattr(ds, "samples") and hasattr(ds, "root"):
        root = Path(ds.root)
        return [Path(p).relative_to(root).as_posix() for p, _ in ds.samples]
    return None


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


class Store:
    """Read access to a finished scan (thread-safe: one read-only connection per thread).

    ``meta``: n, num_classes, class_names, topk, model_hash, data_hash, k.
    """

    SORTS = {"confidence": "conf", "margin": "margin", "loss": "loss", "index": "idx"}

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such store; run `cnnlens explore --scan-only` first")
        self._local = threading.local()
        rows = self._conn().execute("SELECT key, value FROM meta").fetchall()
        self.meta = {k: json.loads(v) for k, v in rows}
        if self.meta.get("schema") != SCHEMA or not self.meta.get("complete"):
            raise ValueError(f"{self.path}: an incomplete or older store; delete it to rescan")
        self.class_names: tuple[str, ...] = tuple(self.meta["class_names"])
        self.n: int = int(self.meta["n"])
        self.num_classes: int = len(self.class_names)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            c.row_factory = sqlite3.Row
            self._local.conn = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def confusion(self) -> torch.Tensor:
        """K×K int64 counts (rows true, columns predicted), from one GROUP BY."""
        C = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        for t, p, c in self._conn().execute("SELECT true, pred, COUNT(*) FROM samples GROUP BY true, pred"):
            C[t, p] = c
        return C

    def topk_hits(self, ks: Sequence[int] | None = None) -> dict[int, int]:
        ks = tuple(ks or self.meta["topk"])
        q = "SELECT " + ", ".join(f"SUM(true_rank < {int(k)})" for k in ks) + " FROM samples"
        row = self._conn().execute(q).fetchone()
        return {int(k): int(v or 0) for k, v in zip(ks, row, strict=True)}

    def evaluation(self, topk: Sequence[int] | None = None) -> EvaluationResult:
        """The same :class:`EvaluationResult` :func:`cnnlens.evaluate` gives on the scanned data."""
        return EvaluationResult.from_counts(self.confusion(), self.topk_hits(topk), self.class_names)

    def _row(self, r: sqlite3.Row) -> dict:
        d = dict(r)
        d["top_classes"] = json.loads(d["top_classes"])
        d["top_probs"] = json.loads(d["top_probs"])
        return d

    def sample(self, idx: int) -> dict | None:
        """One sample's row, or None when ``idx`` is not in the store."""
        r = self._conn().execute("SELECT * FROM samples WHERE idx = ?", (int(idx),)).fetchone()
        return None if r is None else self._row(r)

    def cell_count(self, true: int, pred: int) -> int:
        return int(
            self._conn()
            .execute("SELECT COUNT(*) FROM samples WHERE true = ? AND pred = ?", (int(true), int(pred)))
            .fetchone()[0]
        )

    def cell(
        self,
        true: int,
        pred: int,
        *,
        sort: str = "confidence",
        descending: bool | None = None,
        offset: int = 0,
        limit: int = 24,
    ) -> list[dict]:
        """One page of the samples with this true and predicted class (an index range scan).

        Default order: on the diagonal the least confident first, off it the most confident first.
        """
        if sort not in self.SORTS:
            raise ValueError(f"sort={sort!r}: use one of {', '.join(self.SORTS)}")
        if descending is None:
            descending = true != pred
        col = self.SORTS[sort]
        d = "DESC" if descending else "ASC"
        q = f"SELECT * FROM samples WHERE true = ? AND pred = ? ORDER BY {col} {d}, idx {d} LIMIT ? OFFSET ?"
        rows = self._conn().execute(q, (int(true), int(pred), int(limit), int(offset))).fetchall()
        return [self._row(r) for r in rows]


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def store_path(cache_dir: str | os.PathLike, mhash: str, dhash: str, k: int) -> Path:
    key = hashlib.sha256(f"{SCHEMA}|{mhash}|{dhash}|{k}".encode()).hexdigest()[:24]
    return Path(cache_dir) / f"scan-{key}.sqlite"


def scan_dataset(data, model):
    """The map-style dataset of ``data`` that the explorer scans (labelled, not empty), built for ``model``."""
    ds = as_dataset(data, model)
    # before any file is written: a flat folder has no labels, and the store's rows need them
    require_labels(ds, "cnnlens explore")
    if isinstance(ds, torch.utils.data.DataLoader):
        ds = ds.dataset
    if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
        raise TypeError(f"the explorer needs a map-style dataset (indexable, with a length), got {type(ds).__name__}")
    if len(ds) == 0:
        raise ValueError("the dataset is empty; give a dataset with images")
    return ds


def _class_names(model: nn.Module, ds) -> tuple[str, ...] | None:
    spec = getattr(model, "spec", None)
    if spec is not None and getattr(spec, "class_names", None):
        return tuple(spec.class_names)
    return None


def build_store(
    model: nn.Module,
    data,
    cache_dir: str | os.PathLike,
    *,
    k: int = 5,
    topk: Sequence[int] | None = None,
    batch_size: int = 64,
    chunk: int = CHUNK,
    device=None,
    progress: Callable[[int, int], None] | None = None,
    dataset=None,
    hashes: tuple[str, str] | None = None,
) -> Store | None:
    """Scan ``data`` once (or reuse the stored scan) and return the :class:`Store`.

    ``data``: ``"digits"``, an ImageFolder path or a Dataset of (x, y). ``progress(done, total)``
    counts samples. Under ``torchrun`` every rank must call it; rank 0 writes, the others
    return None. ``dataset``: the already-built dataset of ``data`` (skips building it twice);
    ``hashes``: its ``(model_hash(model), dataset_hash(dataset))`` when already computed.
    """
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}: give a positive int")
    ds = dataset if dataset is not None else scan_dataset(data, model)
    n = len(ds)
    cache = Path(cache_dir)
    rank, world = distributed_info()
    mhash, dhash = hashes if hashes is not None else (model_hash(model), dataset_hash(ds))
    final = store_path(cache, mhash, dhash, k)
    if final.is_file():
        try:
            store = Store(final)
            log.info("reusing the stored scan %s", final)
            if progress is not None:
                progress(n, n)
            return store if rank == 0 else None
        except (ValueError, sqlite3.Error) as e:
            log.warning("ignoring the stored scan %s (%s); rescanning", final, e)
    partial = final.with_name(final.stem + ".partial.sqlite")
    db, done = _open_partial(partial, chunk, n, rank, world)
    names = _class_names(model, ds) or tuple(str(i) for i in range(_num_logits(model, ds)))
    try:
        _scan_chunks(model, ds, db, done, k=k, chunk=chunk, batch_size=batch_size, device=device, progress=progress)
        if rank != 0:
            return None
        assert db is not None  # rank 0 opened the partial file
        ks = tuple(topk) if topk else default_topk(len(names))
        meta = {"schema": SCHEMA, "complete": True, "n": n, "class_names": list(names), "topk": list(ks), "k": k}
        with db:
            db.executescript(_INDEX_SQL)
            _put_meta(
                db,
                {
                    **meta,
                    "model_hash": mhash,
                    "data_hash": dhash,
                    "chunk": chunk,
                    "model": getattr(getattr(model, "spec", None), "name", type(model).__name__),
                    "data": data if isinstance(data, str) else type(ds).__name__,
                    "root": str(Path(ds.root).resolve()) if sample_paths(ds) else None,
                },
            )
        db.close()
        db = None
        os.replace(partial, final)
    finally:
        if db is not None:
            db.close()
    return Store(final)


def _open_partial(
    partial: Path, chunk: int, n: int, rank: int, world: int
) -> tuple[sqlite3.Connection | None, set[int]]:
    """The partial file (rank 0; None elsewhere) and the chunks already in it, the same on every rank."""
    db = None
    done: set[int] = set()
    if rank == 0:
        partial.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(partial)
        db.executescript(_SCHEMA_SQL)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta and (json.loads(meta.get("chunk", "0")) != chunk or json.loads(meta.get("n", "0")) != n):
            db.executescript("DELETE FROM samples; DELETE FROM chunks; DELETE FROM meta;")
        done = {c for (c,) in db.execute("SELECT chunk FROM chunks")}
        if done:
            log.info("resuming the scan at %d of %d chunks", len(done), (n + chunk - 1) // chunk)
    if world > 1:
        box = [sorted(done)]
        dist.broadcast_object_list(box, src=0)
        done = set(box[0])
    return db, done


def _scan_chunks(model, ds, db, done: set[int], *, k, chunk, batch_size, device, progress) -> None:
    """Scan every chunk not ``done``, each committed to ``db`` (rank 0) as soon as it is scanned."""
    n = len(ds)
    paths = sample_paths(ds)
    seen = sum(min(chunk, n - c * chunk) for c in done)
    for c in range((n + chunk - 1) // chunk):
        if c in done:
            continue
        lo, hi = c * chunk, min(n, (c + 1) * chunk)
        sub = torch.utils.data.Subset(ds, range(lo, hi))
        base = seen

        def prog(b, tot, base=base, size=hi - lo):
            if progress is not None:
                progress(min(base + b * batch_size, base + size), n)

        (rows,) = scan(
            model, sub, [SampleAccumulator(k, offset=lo)], batch_size=batch_size, device=device, progress=prog
        )
        seen += hi - lo
        if db is not None:
            with db:
                db.executemany(
                    f"INSERT OR REPLACE INTO samples ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                    [
                        (r[0], paths[r[0]] if paths else None, *r[1:9], json.dumps(r[9]), json.dumps(r[10]))
                        for r in rows
                    ],
                )
                db.execute("INSERT OR REPLACE INTO chunks VALUES (?)", (c,))
                _put_meta(db, {"chunk": chunk, "n": n})
        if progress is not None:
            progress(seen, n)


def _num_logits(model: nn.Module, ds) -> int:
    x, _ = ds[0]
    p = next(model.parameters(), None)
    with LayerTap(model) as tap, torch.no_grad():
        out = tap.run(torch.as_tensor(x).unsqueeze(0).to(p.device if p is not None else "cpu"))
    return int(out.shape[1])


def _put_meta(db: sqlite3.Connection, values: dict) -> None:
    db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])
