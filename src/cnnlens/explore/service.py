"""What the explorer's pages show: queries of the store, explanations run through the worker, drawings.

:class:`Explorer` owns the model, the dataset, the store, the on-disk cache and the one
:class:`~cnnlens.explore.worker.Worker` thread that runs everything touching the model.
The web routes only validate a request and call it.

Samples are named by a *ref*: the dataset index (``"12"``) or ``"u"`` + 16 hex digits for an
uploaded image. Every ref, class, method and target is validated here before anything is
read; files are only ever read from the cache directory under names built from validated
parts, and dataset samples are read by index through the dataset (never by a path from a
request). Nothing from a request is unpickled: uploads are decoded by Pillow (with its
decompression-bomb limit) and cached as safetensors.

Cache layout (``cache/``): ``scan-<key>.sqlite`` (the store), ``uploads/<model hash>/<ref>.safetensors``,
``results/<model hash>-<data hash>/<ref>/<what>.png|.json``, ``fv/<model hash>/<layer>/<channel>-<key>.npz`` (feature
visualisations, :mod:`cnnlens.inside.fvcache`, shared by every dataset); each file written atomically.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_write
from ..attribution import METHODS
from ..results import jsonable as jsonable_
from .store import Store, _scan_dataset, build_store, dataset_hash, model_hash
from .worker import Worker, error_line

log = logging.getLogger(__name__)

#: the largest upload accepted, in bytes
MAX_UPLOAD = 20 * 1024 * 1024
#: samples per gallery page
PAGE_SIZE = 24
#: what the sample page can run: every attribution method, and the attack to the second class
ACTIONS = tuple(METHODS) + ("attack",)
#: settings the explorer runs the slower methods with (documented in the page)
SETTINGS: dict[str, dict] = {
    "smoothgrad": {"n": 16},
    "integrated_gradients": {"steps": 32},
    "augmented_gradcam": {"augmentations": 16},
}
FAITH_STEPS = 16
#: top dataset images per channel on the unit pages; images for the class influence; channels per position
UNIT_K, INFLUENCE_IMAGES, BLOCKS_K = 9, 64, 6
#: a unit page's images computed in the worker (the top patches are drawn from the scan)
UNIT_IMAGES = ("maps", "hist", "class", "proj", "fv", "views")
#: feature visualisations rendered by one call of maximize_channels in the explorer's worker (channels of one layer
#: queued together: the layer page's "render" button, several unit pages): 16 per optimisation at 128², two
#: optimisations side by side on 2 cores
FV_GROUP = 32
#: the leaderboard the explorer runs on request: cheap methods and metrics without ground truth
LEADERBOARD_METHODS = ("saliency", "gradient_x_input", "integrated_gradients", "gradcam")
LEADERBOARD_METRICS = ("deletion_auc", "insertion_auc", "faithfulness_correlation", "max_sensitivity")

_DATA_REF = re.compile(r"^[0-9]{1,10}$")
_UPLOAD_REF = re.compile(r"^u[0-9a-f]{16}$")


class NotFound(LookupError):
    """A ref, class, method or page that does not exist (HTTP 404)."""


class Computing(LookupError):
    """Model work that runs in the worker now: pages show a progress bar polling ``url`` (HTTP 503)."""

    def __init__(self, message: str, url: str):
        super().__init__(message)
        self.url = url


class BadRequest(ValueError):
    """A request the explorer cannot serve as given (HTTP 400, or ``status``)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class NotReady(RuntimeError):
    """The scan is still running (HTTP 503)."""


def _scaled(report: Callable[[float], None], lo: float = 0.0, span: float = 1.0) -> Callable[[int, Any], None]:
    """A library ``progress(done, total)`` callback reporting lo + span · done / total to a job."""
    return lambda done, total: report(lo + span * done / max(1, total or 1))


def _png(fig) -> bytes:
    from ..report import png_bytes

    return png_bytes(fig)


def decode_upload(data: bytes, model: nn.Module) -> torch.Tensor:
    """Image bytes → 1×C×H×W in [0, 1] for ``model`` (Pillow; bomb, truncation and non-images → BadRequest)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from ..data import Preprocess

    if len(data) > MAX_UPLOAD:
        raise BadRequest(f"the upload is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD // 2**20} MB", 413)
    if not data:
        raise BadRequest("the upload is empty; send an image file (PNG, JPEG, ...)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own text names twice the limit for its error and the limit for its warning: name one limit
        got = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(got.group(1)):,} pixels" if got else "more pixels than the limit"
        raise BadRequest(
            f"the image is too large to decode safely ({size}); send an image of at most "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's decompression-bomb limit)",
            413,
        ) from None
    except UnidentifiedImageError:
        raise BadRequest(
            "the upload is not an image Pillow can read; send a PNG, JPEG, BMP, WebP, ... file", 415
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadRequest(
            f"the image is corrupt or truncated ({str(e).strip() or type(e).__name__}); send the whole file"
        ) from None
    try:
        x = Preprocess.for_model(model)(im)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"cannot use this image: {e}") from None
    return x.unsqueeze(0).float().contiguous()


class Explorer:
    """The explorer's backend: store queries, cached explanations, drawings; all model work in one thread.

    >>> ex = Explorer(cnnlens.load_model("digits-cnn"), "digits", "cache")    # doctest: +SKIP
    >>> ex.start_scan(); ex.wait_ready(); ex.overview()["accuracy"]           # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        data,
        cache_dir: str | os.PathLike,
        *,
        batch_size: int = 64,
        device=None,
        k: int = 5,
        page_size: int = PAGE_SIZE,
        data_label: str | None = None,
    ):
        self.model = model
        self.data = data
        self.data_label = data_label or (data if isinstance(data, str) else type(data).__name__)
        self.cache = Path(cache_dir).expanduser().resolve()
        self.cache.mkdir(parents=True, exist_ok=True)
        self.batch_size, self.device, self.k, self.page_size = batch_size, device, k, page_size
        self.dataset = _scan_dataset(data, model)
        self.n = len(self.dataset)
        from .._batch import check_batch_size

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
        self.uploads = self.cache / "uploads" / self.mhash[:16]
        self.worker = Worker()
        self.store: Store | None = None
        self._scan_job = None
        self._scan_done = 0
        self._eval = None
        self._lock = threading.Lock()
        self._unit_layers: list[str] | None = None
        self._micro = None
        self._influence_logits: torch.Tensor | None = None  # the model's logits on influence_images()
        self._fv_runs: dict[str, tuple[float, float]] = {}  # layer -> (start time, work done then): the render's ETA
        self.leaderboard_n = 16
        self._class_names: tuple[str, ...] | None = (
            tuple(spec.class_names) if spec is not None and getattr(spec, "class_names", None) else None
        )

    # -- scan -----------------------------------------------------------------
    def start_scan(self, progress: Callable[[int, int], None] | None = None):
        """Scan (or reuse the stored scan) in the worker thread; returns the job."""

        def run(report):
            def prog(done, total):
                self._scan_done = done
                report(done / max(1, total))
                if progress is not None:
                    progress(done, total)

            store = build_store(
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
            self.store = store
            return True

        self._scan_job = self.worker.submit("scan", run)
        return self._scan_job

    def wait_ready(self, timeout: float = 3600.0) -> Store:
        if self.store is not None:
            return self.store
        if self._scan_job is None:
            self.start_scan()
        self._scan_job.done.wait(timeout)
        if self.store is None:
            raise ValueError(f"the scan failed: {self._scan_job.error}")
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

    def _ready(self) -> Store:
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

    # -- validation -----------------------------------------------------------
    def check_class(self, c: Any) -> int:
        store = self._ready()
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
        if _UPLOAD_REF.fullmatch(s) and (self.uploads / f"{s}.safetensors").is_file():
            return s
        raise NotFound(f"no sample {s[:40]!r}; samples are dataset indices or uploaded images")

    def check_action(self, method: Any) -> str:
        s = str(method).replace("-", "_")
        if s not in ACTIONS:
            import difflib

            # named as on the command line (hyphens); hyphens and underscores are both accepted
            known = [a.replace("_", "-") for a in ACTIONS]
            close = difflib.get_close_matches(s.replace("_", "-")[:40], known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise NotFound(f"no method {str(method)[:40]!r}; {hint}methods: {', '.join(known)}")
        return s

    # -- store queries --------------------------------------------------------
    def evaluation(self):
        store = self._ready()
        with self._lock:
            if self._eval is None:
                self._eval = store.evaluation()
            return self._eval

    def overview(self, max_classes: int = 30, sub: int = 20) -> dict:
        """Accuracy, top-k, per-class table, confusion matrix (or a sub-matrix), confused pairs.

        With more than ``max_classes`` classes (an ImageNet head over a folder of a few classes) the page shows only
        the classes that occur — as a label or as a prediction — ordered by confusions (off-diagonal counts of the
        row and the column), then support, then index: the sub-matrix takes the first ``sub`` of them, the per-class
        table all of them. The full matrix is at ``/api/confusion.csv`` and ``/api/confusion.json``."""
        r = self.evaluation()
        K = r.num_classes
        C = r.confusion
        off = C.clone()
        off.fill_diagonal_(0)
        support = C.sum(1)
        predicted = C.sum(0)
        mass = off.sum(0) + off.sum(1)
        present = [i for i in range(K) if int(support[i]) or int(predicted[i])]
        ranked = sorted(present, key=lambda i: (-int(mass[i]), -int(support[i]), i))
        if K <= max_classes:
            shown, rows = list(range(K)), list(r.per_class)
        else:
            shown = ranked[:sub]
            rows = [r.per_class[i] for i in ranked]
        ix = torch.tensor(shown, dtype=torch.long)
        nz = off.nonzero().tolist()
        sup = support.tolist()
        pairs = sorted(
            (
                {
                    "true": t,
                    "pred": p,
                    "true_name": r.class_names[t],
                    "pred_name": r.class_names[p],
                    "count": int(C[t, p]),
                    "share": int(C[t, p]) / max(1, sup[t]),
                }
                for t, p in nz
            ),
            key=lambda d: (-d["count"], d["true"], d["pred"]),
        )
        return {
            "model": self.model_name,
            "data": self.data_label,
            "n": r.n,
            "num_classes": K,
            "present": len(present),
            "accuracy": r.accuracy,
            "topk_accuracy": r.topk_accuracy,
            "topk_hits": r.topk_hits,
            "per_class": rows,
            "classes": shown,
            "class_names": list(r.class_names),
            "confusion": C[ix][:, ix].tolist(),
            "confusion_normalized": r.confusion_normalized[ix][:, ix].tolist(),
            "submatrix": len(shown) < K,
            "confused_pairs": pairs[:1000],
            "most_confused": pairs[0] if pairs else None,
        }

    def confusion_table(self) -> dict:
        """The full K×K confusion matrix (rows true, columns predicted) with the class names, for download."""
        r = self.evaluation()
        return {
            "model": self.model_name,
            "data": self.data_label,
            "class_names": list(r.class_names),
            "rows": "true class",
            "columns": "predicted class",
            "confusion": r.confusion.tolist(),
        }

    def confusion_csv(self) -> str:
        """The full confusion matrix as CSV: a header of predicted class names, one row per true class."""
        import csv

        t = self.confusion_table()
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["true \\ predicted", *t["class_names"]])
        for name, row in zip(t["class_names"], t["confusion"]):
            w.writerow([name, *row])
        return buf.getvalue()

    def cell(self, true: Any, pred: Any, page: Any = 1, sort: str = "confidence", order: str | None = None) -> dict:
        """One page of the cell (true, pred): rows with top-k and probabilities."""
        store = self._ready()
        r, c = self.check_class(true), self.check_class(pred)
        if sort not in Store.SORTS:
            raise BadRequest(f"sort={str(sort)[:30]!r}: use one of {', '.join(Store.SORTS)}")
        if order not in (None, "", "asc", "desc"):
            raise BadRequest(f"order={str(order)[:30]!r}: use asc or desc")
        if not re.fullmatch(r"[0-9]{1,9}", str(page)) or int(page) < 1:
            raise NotFound(f"no page {str(page)[:30]!r}; pages start at 1")
        page = int(page)
        count = store.cell_count(r, c)
        pages = max(1, (count + self.page_size - 1) // self.page_size)
        if page > pages:
            raise NotFound(f"no page {page}; the cell has {pages}")
        desc = None if not order else order == "desc"
        if desc is None:
            desc = r != c
        rows = store.cell(r, c, sort=sort, descending=desc, offset=(page - 1) * self.page_size, limit=self.page_size)
        names = store.class_names
        for row in rows:
            row["ref"] = str(row["idx"])
            row["pred_name"], row["true_name"] = names[row["pred"]], names[row["true"]]
            row["second_name"] = names[row["second"]]
            row["top"] = [
                {"class": int(k), "name": names[k], "prob": p} for k, p in zip(row["top_classes"], row["top_probs"])
            ]
        return {
            "true": r,
            "pred": c,
            "true_name": names[r],
            "pred_name": names[c],
            "count": count,
            "page": page,
            "pages": pages,
            "page_size": self.page_size,
            "sort": sort,
            "order": "desc" if desc else "asc",
            "samples": rows,
        }

    # -- samples --------------------------------------------------------------
    def _x(self, ref: str) -> torch.Tensor:
        if ref.startswith("u"):
            from safetensors.torch import load_file

            return load_file(str(self.uploads / f"{ref}.safetensors"))["x"]
        x, _ = self.dataset[int(ref)]
        return torch.as_tensor(x).unsqueeze(0).float()

    def _device_x(self, ref: str) -> torch.Tensor:
        p = next(self.model.parameters(), None)
        return self._x(ref).to(p.device if p is not None else "cpu")

    def sample(self, ref: Any) -> dict:
        """The sample's classes and top-k (from the store, or one forward for an upload)."""
        ref = self.check_ref(ref)
        names = self.class_names
        if ref.startswith("u"):
            pred = self._upload_prediction(ref)
            row = {"ref": ref, "idx": None, "path": None, "true": None, **pred}
        else:
            store = self._ready()
            row = store.sample(int(ref))
            if row is None:
                raise NotFound(f"no sample {ref} in the store")
            row["ref"] = ref
        row["top"] = [
            {"class": int(k), "name": names[k], "prob": p} for k, p in zip(row["top_classes"], row["top_probs"])
        ]
        row["pred_name"], row["second_name"] = names[row["pred"]], names[row["second"]]
        row["true_name"] = names[row["true"]] if row.get("true") is not None else None
        row["upload"] = ref.startswith("u")
        true = row.get("true")
        row["misclassified"] = true is not None and true >= 0 and true != row["pred"]
        # on a misclassified sample the runner-up is often the true class: the attack to the second class then
        # makes the model right; "away" is the most likely class that is neither the prediction nor the true class
        away = [int(k) for k in row["top_classes"] if int(k) not in (row["pred"], true)]
        row["away"] = away[0] if row["misclassified"] and away else None
        row["away_name"] = names[row["away"]] if row["away"] is not None else None
        return row

    def _upload_prediction(self, ref: str) -> dict:
        path = self.results / ref / "prediction.json"
        if path.is_file():
            return json.loads(path.read_text())

        def run(report):
            from ..tap import LayerTap

            x = self._device_x(ref)
            with LayerTap(self.model) as tap, torch.no_grad():
                logits = tap.run(x).float().cpu()
            order = torch.sort(-logits[0], stable=True).indices
            p = logits[0].softmax(0)
            pred, second = int(order[0]), int(order[1] if len(order) > 1 else order[0])
            top = order[: self.k]
            out = {
                "pred": pred,
                "second": second,
                "conf": float(p[pred]),
                "margin": float(p[pred] - p[second]),
                "top_classes": top.tolist(),
                "top_probs": [round(float(p[c]), 6) for c in top],
            }
            atomic_write(path, json.dumps(out).encode())
            return out

        return self.worker.run(f"predict/{ref}", run)

    def upload(self, data: bytes) -> str:
        """Decode and keep an uploaded image; returns its ref (``u`` + 16 hex digits of its SHA-256)."""
        self._ready()
        x = decode_upload(data, self.model)
        from safetensors.torch import save_file

        ref = "u" + hashlib.sha256(data).hexdigest()[:16]
        path = self.uploads / f"{ref}.safetensors"
        if not path.is_file():
            self.uploads.mkdir(parents=True, exist_ok=True)
            tmp = self.uploads / f".{ref}.{os.getpid()}.{threading.get_ident()}.tmp"
            save_file({"x": x}, str(tmp))
            os.replace(tmp, path)
        return ref

    def resolve_target(self, ref: str, target: Any) -> tuple[int, str]:
        """``predicted`` / ``true`` / ``second`` / a class index → (class, what it is)."""
        s = self.sample(ref)
        t = str(target or "predicted")
        if t in ("predicted", "pred"):
            return s["pred"], "predicted"
        if t == "second":
            return s["second"], "second"
        if t == "true":
            if s.get("true") is None:
                raise BadRequest("an uploaded image has no true class; choose predicted, second or a class")
            return s["true"], "true"
        if re.fullmatch(r"[0-9]{1,9}", t) and int(t) < len(self.class_names):
            return int(t), "class"
        raise NotFound(
            f"no target {t[:40]!r}; use predicted, true, second or a class index 0..{len(self.class_names) - 1}"
        )

    # -- images ---------------------------------------------------------------
    def image_png(self, ref: Any) -> bytes:
        from ..viz import to_pil

        ref = self.check_ref(ref)
        buf = io.BytesIO()
        to_pil(self._x(ref)[0]).save(buf, format="PNG")
        return buf.getvalue()

    def pair_png(self, ref: Any, a: Any = None, b: Any = None) -> bytes:
        """Grad-CAM toward class a (default: true, or second for uploads) and b (default: predicted)
        side by side, and their difference b − a: what made it b rather than a."""
        ref = self.check_ref(ref)
        s = self.sample(ref)
        if a is None:
            a = s["true"] if s.get("true") is not None and s["true"] != s["pred"] else s["second"]
        if b is None:
            b = s["pred"]
        a, b = self.check_class(a), self.check_class(b)
        path = self.results / ref / f"pair-{a}-{b}.png"
        if path.is_file():
            return path.read_bytes()

        def run(report):
            from ..attribution import gradcam, saliency

            x = self._device_x(ref)
            xx, t = x.repeat(2, 1, 1, 1), torch.tensor([a, b])
            try:
                e, what = gradcam(self.model, xx, target=t), "Grad-CAM"
            except ValueError as err:  # no spatial layer (an MLP): the input gradient still compares the classes
                log.info("gallery maps by saliency: %s", err)
                e, what = saliency(self.model, xx, target=t), "saliency"
            png = _png(
                pair_figure(
                    x[0].cpu(),
                    e.maps[0],
                    e.maps[1],
                    self.class_names[a],
                    self.class_names[b],
                    roles=self._roles(s, a, b),
                    method=what,
                )
            )
            atomic_write(path, png)
            return png

        return self.worker.run(f"pair/{ref}/{a}/{b}", run)

    @staticmethod
    def _roles(s: dict, a: int, b: int) -> tuple[str, str]:
        def role(c):
            if s.get("true") == c and s["pred"] == c:
                return "true = predicted"
            if s.get("true") == c:
                return "true"
            if s["pred"] == c:
                return "predicted"
            if s["second"] == c:
                return "second"
            return "class"

        return role(a), role(b)

    # -- heavy methods (polled) ----------------------------------------------
    def _result_paths(self, ref: str, action: str, cls: int, kind: str = "") -> tuple[Path, Path]:
        stem = (
            self.results
            / ref
            / (f"attack-{'away' if kind == 'away' else 'second'}" if action == "attack" else f"{action}-{cls}")
        )
        return stem.with_suffix(".png"), stem.with_suffix(".json")

    def _target(self, ref: str, action: str, target: Any) -> tuple[int, str]:
        """(class, kind) of a request: the attack goes to the second class, or ``target=away`` on a misclassified
        sample to the most likely class that is neither the prediction nor the true class."""
        if action != "attack":
            return self.resolve_target(ref, target)
        if target == "away":
            away = self.sample(ref)["away"]
            if away is None:
                raise BadRequest(
                    "target=away is for a misclassified sample with a known true class; this one is "
                    "not: attack the second class (no target)"
                )
            return away, "away"
        return self.resolve_target(ref, "second")

    def method(self, ref: Any, method: Any, target: Any = "predicted") -> dict:
        """The cached result of a method (``status: done``) or its job's status (queued / running / error)."""
        ref, action = self.check_ref(ref), self.check_action(method)
        cls, kind = self._target(ref, action, target)
        png, meta = self._result_paths(ref, action, cls, kind)
        out = {"ref": ref, "method": action, "target": kind, "class": cls, "class_name": self.class_names[cls]}
        if meta.is_file():
            info = json.loads(meta.read_text())
            if "error" in info:
                return {**out, "status": "error", "error": info["error"]}
            return {**out, "status": "done", "progress": 1.0, **info}
        job = self.worker.submit(f"{action}/{ref}/{cls}", lambda report: self._run(ref, action, cls, report, kind))
        return {**out, **job.to_dict()}

    def method_png(self, ref: Any, method: Any, target: Any = "predicted") -> bytes:
        ref, action = self.check_ref(ref), self.check_action(method)
        cls, kind = self._target(ref, action, target)
        png, _ = self._result_paths(ref, action, cls, kind)
        if not png.is_file():
            raise NotFound(
                f"{action} toward class {cls} of sample {ref} is not computed yet; request its JSON endpoint first"
            )
        return png.read_bytes()

    def _run(self, ref: str, action: str, cls: int, report: Callable[[float], None], kind: str = "") -> dict:
        png_path, meta_path = self._result_paths(ref, action, cls, kind)
        x = self._device_x(ref)
        names = self.class_names
        label = f"#{ref}" if not ref.startswith("u") else "upload"
        t0 = time.perf_counter()
        try:
            if action == "attack":
                from ..attacks import minimal_eps

                r = minimal_eps(
                    self.model, x, target=cls if kind == "away" else "second", progress=_scaled(report, span=0.95)
                )
                fig = r.figure(x.cpu(), names=[label], class_names=names)
                eps = float(r.eps[0])
                info = {
                    "eps": eps if eps != float("inf") else None,
                    "eps_255": eps * 255 if eps != float("inf") else None,
                    "success": bool(r.success[0]),
                    "pred_after": int(r.pred_after[0]),
                    "pred_after_name": names[int(r.pred_after[0])],
                    "toward": int(r.classes[0]),
                    "toward_name": names[int(r.classes[0])],
                }
            else:
                from ..attribution import faithfulness
                from ..attribution.completeness import incomplete_note
                from ..figures.attribution import method_figure
                from ..figures.metrics import draw_objects

                fn = METHODS[action]
                kw = dict(SETTINGS.get(action, {}))
                if "progress" in inspect.signature(fn).parameters:
                    kw["progress"] = _scaled(report, span=0.7)
                e = fn(self.model, x, target=cls, **kw)
                report(0.75)
                f = faithfulness(self.model, x, e, steps=FAITH_STEPS)
                extra = "probability" if "probability" in e.extras else None
                fig = method_figure(x.cpu().float(), [label], e, f, class_names=names, extra=extra)
                objects, drawn = self._objects(ref, e, x)
                draw_objects(fig.axes[0], **drawn)
                p_max = float(torch.cat([f.deletion.scores[0], f.insertion.scores[0]]).max())
                info = {
                    "deletion_auc": float(f.deletion_auc[0]),
                    "insertion_auc": float(f.insertion_auc[0]),
                    # both AUCs round to 0 when the model gives the class no probability with or without the
                    # pixels: they cannot rank this map then, and the page says so
                    "auc_note": (
                        f"the model gives {names[cls]} a probability of at most {p_max:.1e} with or "
                        "without the pixels, so deletion and insertion cannot rank this map"
                    )
                    if p_max < 0.01
                    else None,
                    "layer": e.layer,
                    "settings": {k: v for k, v in kw.items() if k != "progress"},
                    "empty": bool(e.extras.get("empty", torch.zeros(1))[0])
                    if torch.is_tensor(e.extras.get("empty"))
                    else False,
                    "note": incomplete_note(e.extras),
                    **objects,
                }
        except ValueError as err:  # a method that does not apply to this model: kept as its message
            msg = str(err).strip().splitlines()[0]
            atomic_write(meta_path, json.dumps({"error": msg}).encode())
            raise
        info["seconds"] = round(time.perf_counter() - t0, 3)
        atomic_write(png_path, _png(fig))
        atomic_write(meta_path, json.dumps(info).encode())
        return info

    def _objects(self, ref: str, e, x: torch.Tensor) -> tuple[dict, dict]:
        """The object cut from a map: the box of Zhou et al. 2016, the outline of the map-seeded GrabCut mask
        (Simonyan et al. 2014, with the ``segment`` extra) and, where the dataset knows the sample's box
        (``.boxes``, as cluttered digits), the box's IoU with it; (JSON fields, :func:`draw_objects` arguments)."""
        from ..attribution.segment import BACKGROUND_QUANTILE, FOREGROUND_QUANTILE, segment
        from ..extras import MissingExtra
        from ..metrics import box_from_map, localisation_iou

        try:
            box = box_from_map(e)[0]
        except MissingExtra as err:  # no scikit-image: nothing to cut
            return {"objects": str(err).splitlines()[0]}, {}
        out: dict = {"box": box.tolist()}
        words = ["dashed yellow: the box of the largest region above 20 % of the map's maximum (Zhou et al. 2016)"]
        try:
            mask = segment(e, x.cpu())[0]
            words.append(
                f"cyan: the outline of GrabCut seeded by the map's top {100 * (1 - FOREGROUND_QUANTILE):.0f} % "
                f"and bottom {100 * BACKGROUND_QUANTILE:.0f} % (Simonyan et al. 2014)"
            )
            out["mask_pixels"] = int(mask.sum())
        except MissingExtra:
            mask = None
            words.append("pip install 'cnnlens[segment]' for the GrabCut outline")
        truth = getattr(self.dataset, "boxes", None)
        true_box = None
        if truth is not None and not ref.startswith("u"):
            true_box = torch.as_tensor(truth)[int(ref)]
            out["iou"] = float(localisation_iou(e, true_box[None]).scores[0])
            words.append(f"white: the true box, IoU {out['iou']:.2f}")
        out["objects"] = "; ".join(words) + "."
        return out, {"box": box, "mask": mask, "true_box": true_box}

    # -- units (the microscope) ------------------------------------------------
    def unit_layers(self) -> list[str]:
        """The layers the explorer shows units of: up to 3 spatial activation layers (as ``cnnlens microscope``)."""
        if self._unit_layers is None:
            self._ready()  # the store's scan first (its page shows the progress), then one forward here

            def run(report):
                from ..inside.microscope import default_layers

                try:
                    return default_layers(self.model)
                except ValueError:  # no activation module to show
                    return []

            self._unit_layers = list(self.worker.run("unit-layers", run))
        return self._unit_layers

    def check_layer(self, name: Any) -> str:
        s = str(name)
        layers = self.unit_layers()
        if s not in layers:
            known = s in dict(self.model.named_modules())
            raise NotFound(
                f"{'layer' if known else 'no layer'} {s[:60]!r}"
                f"{' is not among the layers shown' if known else ''}; layers: {', '.join(layers) or 'none'}"
            )
        return s

    def check_channel(self, layer: str, channel: Any) -> int:
        C = self.micro_scan()[layer].channels
        s = str(channel)
        if not re.fullmatch(r"[0-9]{1,9}", s) or int(s) >= C:
            raise NotFound(f"no channel {s[:30]!r}; layer {layer} has channels 0..{C - 1}")
        return int(s)

    def _micro_dir(self) -> Path:
        key = json.dumps(
            {"layers": self.unit_layers(), "k": UNIT_K, "bins": 40, "patches": "cut when drawn"}, sort_keys=True
        )
        return self.results / "micro" / hashlib.sha1(key.encode()).hexdigest()[:12]

    def microscope(self) -> dict:
        """The state of the microscope scan (ONE scan over the dataset for every shown layer), started if needed."""
        if self._micro is not None:
            return {"status": "done", "progress": 1.0, "error": None}
        layers = self.unit_layers()
        if not layers:
            raise NotFound("the model has no spatial activation layers to show units of")
        path = self._micro_dir() / "scan.pt"

        def run(report):
            from ..inside.microscope import microscope_scan

            m = None
            if path.is_file():
                try:  # our own file, written below under the cache
                    m = torch.load(path, map_location="cpu", weights_only=False)
                except Exception:  # noqa: BLE001 - cut short: scan again
                    m = None
            if m is None:
                m = microscope_scan(
                    self.model,
                    self.dataset,
                    layers,
                    k=UNIT_K,
                    batch_size=self.model_batch,
                    device=self.device,
                    progress=_scaled(report),
                )
                buf = io.BytesIO()
                torch.save(m, buf)
                atomic_write(path, buf.getvalue())
            self._micro = m
            return True

        return self.worker.submit("microscope", run).to_dict()

    def micro_scan(self):
        """The microscope scan, or NotReady (a "computing" page) while the worker runs it."""
        st = self.microscope()
        if self._micro is None:
            if st["status"] == "error":
                raise BadRequest(f"the microscope scan failed: {st['error']}", 500)
            raise Computing(f"the microscope scan is running ({100 * st['progress']:.0f} %)", "/api/microscope")
        return self._micro

    def layers(self) -> dict:
        from ..microscope_site import layer_row

        m = self.micro_scan()
        return {
            "model": self.model_name,
            "data": self.data_label,
            "images": m.count,
            "layers": [layer_row(m[n]) for n in m.layers],
        }

    def _cname(self):
        names = self.class_names
        return lambda k: names[k] if 0 <= k < len(names) else str(k)

    def layer(self, name: Any) -> dict:
        from ..microscope_site import layer_row, unit_card

        name = self.check_layer(name)
        ls = self.micro_scan()[name]
        cn = self._cname()
        return {**layer_row(ls), "k": ls.top.k, "cards": [unit_card(ls, c, cn) for c in range(ls.channels)]}

    def top_png(self, layer: Any, channel: Any, big: bool = False) -> bytes:
        """A channel's top-k dataset patches (drawn from the scan; no model work)."""
        from .. import microscope_draw as draw

        layer = self.check_layer(layer)
        c = self.check_channel(layer, channel)
        ls = self._micro[layer]
        crops = ls.top.patches(self.dataset, [c])[0]  # cut from the dataset's images (the scan keeps no pixels)
        img = draw.patch_grid(crops, ncols=9, tile=96, pad=3) if big else draw.patch_grid(crops, ncols=3, tile=36)
        return draw.png(img)

    def _unit_dir(self, layer: str, c: int) -> Path:
        from ..microscope_site import _slug

        return self._micro_dir() / _slug(layer) / str(c)

    def influence_images(self) -> list[int]:
        """The dataset indices the class influence is measured on: :data:`INFLUENCE_IMAGES` spread evenly over the
        dataset (a folder's first images are all of its first class)."""
        m = min(INFLUENCE_IMAGES, self.n)
        return sorted({round(i * (self.n - 1) / max(1, m - 1)) for i in range(m)}) if m > 1 else list(range(m))

    def present_classes(self, limit: int | None = None) -> list[int]:
        """The classes that occur in the data (as labels; for unlabelled data, as predictions), most frequent
        first (ties by index), at most ``limit``: what a unit page names."""
        cm = self._ready().confusion()
        support = cm.sum(1)
        if int(support.sum()) == 0:
            support = cm.sum(0)
        order = torch.sort(support, descending=True, stable=True).indices
        out = [int(c) for c in order if int(support[c]) > 0]
        return out[:limit] if limit else out

    def _influence(self, layer: str, c: int, report=None):
        """The class influence (ablation) of channel ``c`` of ``layer`` on the (at most 20 most frequent) classes of
        the data, over :meth:`influence_images` (worker only): a channel's values do not depend on the others, so a
        unit page costs one forward and one ablated forward per image, not one per channel of the layer."""
        from ..inside.microscope import class_influence, dataset_images

        x = dataset_images(self.dataset, self.influence_images())
        classes = sorted(self.present_classes(20))
        if not classes:
            return None
        with self._lock:
            logits = self._influence_logits
        if logits is None:  # the same for every layer and channel: one plain forward, once, in the same batches
            from ..tap import LayerTap

            dev = next(self.model.parameters()).device
            with LayerTap(self.model, [], detach=True) as tap, torch.no_grad():
                logits = torch.cat(
                    [tap.run(x[s : s + self.model_batch].to(dev)) for s in range(0, len(x), self.model_batch)]
                ).cpu()
            with self._lock:
                self._influence_logits = logits
        return class_influence(
            self.model,
            x,
            layer,
            classes,
            channels=[c],
            ablation=True,
            taylor=False,
            batch_size=self.model_batch,
            logits=logits,
            progress=report,
        )

    def unit(self, layer: Any, channel: Any) -> dict:
        """A unit page's values (``status: done``) or its job's state: top patches, activation maps over the
        top images, histogram, per-class means and selectivity, class influence (computed in the worker)."""
        from ..microscope_site import unit_card

        layer = self.check_layer(layer)
        c = self.check_channel(layer, channel)
        ls = self._micro[layer]
        d = self._unit_dir(layer, c)
        meta = d / "unit.json"
        row = ls.top.row(c)
        out = {
            "layer": layer,
            "channel": c,
            "channels": ls.channels,
            "k": ls.top.k,
            "top_indices": ls.top.indices[row].tolist(),
            "top_activations": [float(v) for v in ls.top.activations[row]],
            "top_labels": ls.top.labels[row].tolist(),
            "class_means": ls.stats.class_mean[:, c].tolist()
            if getattr(ls.stats, "class_mean", None) is not None
            else None,
        }
        out["views_done"] = (d / "views.json").is_file()
        if meta.is_file():
            return {**out, "status": "done", "progress": 1.0, **json.loads(meta.read_text())}

        def run(report):
            from .. import microscope_draw as draw
            from ..inside.microscope import top_maps, unit_projections

            inf = None
            report(0.01)
            if len(ls.shape) == 3:
                inf = self._influence(layer, c, _scaled(report, 0.01, 0.5))
            report(0.5)
            imgs, maps = top_maps(self.model, self.dataset, ls, [c], batch_size=self.model_batch)
            report(0.8)
            atomic_write(d / "maps.png", draw.png(draw.maps_image(imgs[0], maps[0], ncols=9, side=96)))
            atomic_write(d / "hist.png", draw.png(draw.histogram_figure(ls.stats, c)))
            atomic_write(d / "class.png", draw.png(draw.class_figure(ls.stats, c, self.class_names, inf)))
            # deconvnet and guided backprop of the unit on its top images, cut to its receptive field
            # in groups of a quarter of the model batch (4 images at 224²): each backward keeps the whole graph, and
            # every image's projection is its own (on digits-sized images: one group, as before)
            g = max(1, self.model_batch // 4)
            parts = [
                unit_projections(self.model, imgs[0][s : s + g], layer, c, ls.top.positions[row][s : s + g], ls.rf)
                for s in range(0, len(imgs[0]), g)
            ]
            proj = (
                parts[0]
                if len(parts) == 1
                else type(parts[0])(
                    parts[0].layer,
                    parts[0].channel,
                    None if any(p.deconv is None for p in parts) else torch.cat([p.deconv for p in parts]),
                    None if any(p.guided is None for p in parts) else torch.cat([p.guided for p in parts]),
                    parts[0].deconv_error,
                    parts[0].guided_error,
                )
            )
            crops = ls.top.patches(channels=[c], images=imgs)[0]
            atomic_write(d / "proj.png", draw.png(draw.projections_image(crops, proj.deconv, proj.guided, tile=72)))
            info = {
                "card": unit_card(ls, c, self._cname(), inf),
                "influence": [[k, v] for k, v in inf.top(c, len(inf.classes))] if inf is not None else None,
                "influence_images": len(self.influence_images()),
                "projections": [
                    n
                    for n, v in (("patch", crops), ("deconvnet", proj.deconv), ("guided backprop", proj.guided))
                    if v is not None
                ],
                "projection_errors": [e for e in (proj.deconv_error, proj.guided_error) if e],
            }
            atomic_write(meta, json.dumps(info).encode())
            return info

        return {**out, **self.worker.submit(f"unit/{layer}/{c}", run).to_dict()}

    def feature_vis(self, layer: Any, channel: Any, background: bool = False) -> dict:
        """The channel's feature visualisation (robust, :func:`maximize_channels` with the microscope site's
        settings), cached; requested lazily by the unit and layer pages and run in the worker — the job that runs
        first also takes the other queued channels of its layer (up to :data:`FV_GROUP`), so they render in
        batched optimisations (a batch of images, one channel objective each)."""
        layer = self.check_layer(layer)
        c = self.check_channel(layer, channel)
        meta = self._unit_dir(layer, c) / "fv.json"
        out = {"layer": layer, "channel": c, "png": f"/img/unit/{layer}/{c}/fv.png"}
        if meta.is_file():
            return {**out, "status": "done", "progress": 1.0, **json.loads(meta.read_text())}

        def run(report):
            others = self.worker.claim(f"fv/{layer}/", FV_GROUP - 1)
            try:
                infos = self._render_fv(
                    layer,
                    [c] + [int(j.key.rsplit("/", 1)[1]) for j in others],
                    lambda f: [r(f) for r in [report] + [j.report for j in others]],
                )
            except BaseException as e:  # the claimed jobs fail with this one
                for j in others:
                    j.finish(error=error_line(e, j.key))
                raise
            for j, info in zip(others, infos[1:]):
                j.finish(info)
            return infos[0]

        # a layer's render (the layer page's button) runs behind the pages' own requests; a unit page's does not
        return {**out, **self.worker.submit(f"fv/{layer}/{c}", run, background=background).to_dict()}

    def feature_views(self, layer: Any, channel: Any) -> dict:
        """The channel's other feature visualisations for its unit page, as ``cnnlens microscope`` draws them: plain
        (no transformation robustness, no penalty) and a diversity set of :attr:`Settings.diversity` robust images
        pushed apart (weight ½ of the plain image's activation); one strip, computed in the worker when asked for,
        the optimisations kept in ``CACHE/fv``."""
        layer = self.check_layer(layer)
        c = self.check_channel(layer, channel)
        d = self._unit_dir(layer, c)
        meta = d / "views.json"
        out = {"layer": layer, "channel": c, "png": f"/img/unit/{layer}/{c}/views.png"}
        if meta.is_file():
            return {**out, "status": "done", "progress": 1.0, **json.loads(meta.read_text())}

        def run(report):
            from .. import microscope_draw as draw
            from ..microscope_site import Settings, _fv_size, diverse_view, plain_view

            st = Settings()
            size = _fv_size(self.model, st)
            plain = plain_view(self.model, layer, [c], st, size, self._fv_cache(), _scaled(report, span=0.5))
            div = diverse_view(self.model, layer, [c], st, size, plain, self._fv_cache(), _scaled(report, 0.5, 0.5))
            strip = torch.cat([plain.of(c), div.of(c)])  # plain, then the set
            d.mkdir(parents=True, exist_ok=True)
            atomic_write(d / "views.png", draw.png(draw.patch_grid(strip, ncols=len(strip), tile=128, pad=4)))
            info = {
                "plain_activation": float(plain.activation[0, 0]),
                "diverse_activations": [float(v) for v in div.activation[0]],
                "diversity": st.diversity,
            }
            atomic_write(meta, json.dumps(info).encode())
            return info

        return {**out, **self.worker.submit(f"views/{layer}/{c}", run).to_dict()}

    def _fv_cache(self):
        """The feature visualisations kept across datasets and runs in ``<cache>/fv``, keyed by the model's
        weights, layer, channel and settings (the microscope site's views: ``cnnlens microscope --cache
        <cache>/fv`` shares them)."""
        from ..inside.fvcache import FeatureCache

        return FeatureCache(self.cache / "fv", mhash=self.mhash)

    def _render_fv(self, layer: str, channels: list[int], report) -> list[dict]:
        """Render and store the feature visualisations of ``channels`` of ``layer`` (worker only)."""
        from .. import microscope_draw as draw
        from ..microscope_site import Settings, _fv_size, robust_view

        st = Settings()
        v = robust_view(self.model, layer, channels, st, _fv_size(self.model, st), self._fv_cache(), _scaled(report))
        infos = []
        for i, ch in enumerate(channels):
            d = self._unit_dir(layer, ch)
            d.mkdir(parents=True, exist_ok=True)
            atomic_write(d / "fv.png", draw.png(draw.image_tile(v.of(ch)[0], 160)))
            info = {"activation": float(v.activation[i, 0]), "steps": st.steps, "seed": st.seed, "robust": True}
            atomic_write(d / "fv.json", json.dumps(info).encode())
            infos.append(info)
        return infos

    def layer_fv(self, layer: Any, start: bool = False) -> dict:
        """Every channel's feature-visualisation status for the layer page (``start``: queue the missing ones;
        they then render :data:`FV_GROUP` channels per optimisation), with ``eta``: the seconds left, estimated
        from the work done since the render started (channels done, and the running ones' progress), once there
        is some; None before."""
        layer = self.check_layer(layer)
        rows = []
        for c in range(self.micro_scan()[layer].channels):
            if start or (self._unit_dir(layer, c) / "fv.json").is_file():
                rows.append(self.feature_vis(layer, c, background=True))
                continue
            job = self.worker.get(f"fv/{layer}/{c}")
            rows.append(
                {
                    "layer": layer,
                    "channel": c,
                    "png": f"/img/unit/{layer}/{c}/fv.png",
                    **(job.to_dict() if job is not None else {"status": "missing", "progress": 0.0, "error": None}),
                }
            )
        done = sum(r["status"] == "done" for r in rows)
        work = done + sum(r["progress"] for r in rows if r["status"] == "running")
        pending = sum(r["status"] in ("queued", "running") for r in rows)
        now = time.monotonic()
        if start:
            self._fv_runs[layer] = (now, work)
        eta = None
        run = self._fv_runs.get(layer)
        if pending and run is not None and work - run[1] > 0.05 and now - run[0] > 1.0:
            eta = (now - run[0]) / (work - run[1]) * (len(rows) - work)
        return {
            "layer": layer,
            "channels": rows,
            "done": done,
            "total": len(rows),
            "pending": pending,
            "eta": None if eta is None else round(eta, 1),
            "cancelled": sum(r["status"] == "cancelled" for r in rows),
        }

    def cancel_layer_fv(self, layer: Any) -> dict:
        """Cancel a layer's feature-visualisation render: queued channels never start, the running optimisation
        stops at its next step; what is done stays done (and cached)."""
        layer = self.check_layer(layer)
        n = self.worker.cancel(f"fv/{layer}/")
        self._fv_runs.pop(layer, None)
        return {"layer": layer, "cancelled": n}

    def unit_png(self, layer: Any, channel: Any, what: Any) -> bytes:
        layer = self.check_layer(layer)
        c = self.check_channel(layer, channel)
        if what in ("top", "topbig"):
            return self.top_png(layer, c, big=what == "topbig")
        if what not in UNIT_IMAGES:
            raise NotFound(f"no unit image {str(what)[:30]!r}; images: top, topbig, {', '.join(UNIT_IMAGES)}")
        path = self._unit_dir(layer, c) / f"{what}.png"
        if not path.is_file():
            raise NotFound(f"unit {layer}/{c} is not computed yet; request /api/unit/{layer}/{c} first")
        return path.read_bytes()

    def blocks(self, ref: Any, layer: Any) -> dict:
        """Building blocks of a sample at ``layer``: per grid position, the channels that fire most there and
        their contribution A·∂y/∂A to the predicted class (one forward and backward, in the worker)."""
        ref, layer = self.check_ref(ref), self.check_layer(layer)
        from ..microscope_site import _slug

        path = self.results / ref / f"blocks-{_slug(layer)}.json"
        if path.is_file():
            return json.loads(path.read_text())

        def run(report):
            from ..inside.microscope import building_blocks

            bb = building_blocks(self.model, self._device_x(ref), layer)
            g = bb.grid
            cells = [
                [
                    [
                        [t["channel"], round(t["activation"], 5), round(t["contribution"], 5)]
                        for t in bb.at(0, i, j, k=BLOCKS_K)
                        if t["activation"] > 0
                    ]
                    for j in range(g[1])
                ]
                for i in range(g[0])
            ]
            out = {
                "ref": ref,
                "layer": layer,
                "grid": list(g),
                "class": int(bb.classes[0]),
                "class_name": self.class_names[int(bb.classes[0])],
                "cells": cells,
                "total": [[round(float(v), 5) for v in r] for r in bb.contributions[0].sum(0)],
            }
            atomic_write(path, json.dumps(out).encode())
            return out

        return self.worker.run(f"blocks/{ref}/{layer}", run)

    # -- the leaderboard (cnnlens.metrics) -------------------------------------
    def _leaderboard_path(self) -> Path:
        key = json.dumps(
            {"n": self.leaderboard_n, "methods": LEADERBOARD_METHODS, "metrics": LEADERBOARD_METRICS}, sort_keys=True
        )
        return self.results / f"leaderboard-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"

    def leaderboard(self, start: bool = False) -> dict:
        """The leaderboard of a few methods on the first ``leaderboard_n`` images (cached), its job's state
        (``start``: run it in the worker), or ``status: none`` when it has not been asked for."""
        path = self._leaderboard_path()
        out = {"n": self.leaderboard_n, "methods": list(LEADERBOARD_METHODS), "metrics": list(LEADERBOARD_METRICS)}
        if path.is_file():
            return {**out, "status": "done", "progress": 1.0, **json.loads(path.read_text())}
        job = self.worker.get("leaderboard")
        if job is None and not start:
            return {**out, "status": "none", "progress": 0.0, "error": None}

        def run(report):
            from ..inside.microscope import dataset_images
            from ..metrics import benchmark
            from ..metrics.report import leaderboard_table

            n = min(self.leaderboard_n, self.n)
            x = dataset_images(self.dataset, range(n)).to(next(self.model.parameters()).device)
            y = torch.tensor([int(self.dataset[i][1]) for i in range(n)])
            lb = benchmark(
                self.model, x, y=y, methods=LEADERBOARD_METHODS, metrics=LEADERBOARD_METRICS, progress=_scaled(report)
            )
            header, rows = leaderboard_table(lb)
            info = {
                "header": header,
                "rows": rows,
                "best": {k: lb.clear_best(k) for k in lb.metrics},
                "scores": lb.rows(),
                "images": n,
                "target": lb.settings.get("target"),
                "auc_settings": lb.settings.get("metrics", {}).get("deletion_auc"),
            }
            atomic_write(path, json.dumps(jsonable_(info)).encode())
            return info

        if start:
            job = self.worker.submit("leaderboard", run)
        return {**out, **job.to_dict()}

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after its running job (waiting at most ``timeout`` s) and close the store."""
        self.worker.close(timeout)
        if self.store is not None:
            self.store.close()


def pair_figure(
    image: torch.Tensor,
    map_a: torch.Tensor,
    map_b: torch.Tensor,
    name_a: str,
    name_b: str,
    roles: tuple[str, str] = ("", ""),
    method: str = "Grad-CAM",
):
    """A map (Grad-CAM) toward a and toward b over the image, on one shared scale, and b − a (red: evidence
    for b rather than a); a PIL image drawn by :func:`cnnlens.viz.panels_image` (fast: galleries draw many)."""
    from ..viz import DIVERGING, SEQUENTIAL, overlay_array, panels_image

    vmax = max(float(map_a.max()), float(map_b.max()), 1e-12)
    vmin = min(float(map_a.min()), float(map_b.min()), 0.0)
    diff = map_b - map_a
    m = float(diff.abs().max()) or 1.0
    ra, rb = roles
    pre = "" if method == "Grad-CAM" else f"{method} "
    panels = [
        overlay_array(image, map_a, vmin=vmin, vmax=vmax),
        overlay_array(image, map_b, vmin=vmin, vmax=vmax),
        overlay_array(image, diff, diverging=True),
    ]
    titles = [
        f"{pre}toward {name_a[:14]}" + (f" ({ra})" if ra else ""),  # the bitmap font has ASCII only
        f"{pre}toward {name_b[:14]}" + (f" ({rb})" if rb else ""),
        f"{name_b[:10]} - {name_a[:10]}",
    ]
    return panels_image(panels, titles, bars=[None, (SEQUENTIAL, vmin, vmax), (DIVERGING, -m, m)])
