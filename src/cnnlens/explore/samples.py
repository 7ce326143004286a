"""The samples area: the evaluation, the confusion matrix, a cell's gallery, a sample, its images.

Queries of the store (no model work), and the pair drawings of the galleries (Grad-CAM toward two classes,
run in the worker and cached as ``results/.../<ref>/pair-A-B.png``).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from typing import Any

import torch

from ..attribution import gradcam, saliency
from ..files import atomic_write
from ..report import png_bytes
from ..viz import DIVERGING, SEQUENTIAL, overlay_array, panels_image, to_pil
from .errors import BadRequest, NotFound
from .store import Store
from .uploads import Uploads
from .workspace import Workspace

log = logging.getLogger(__name__)


class Samples:
    """The overview, the confusion cells, the samples (of the dataset and uploaded) and their images."""

    def __init__(self, ws: Workspace, uploads: Uploads):
        self.ws, self.uploads = ws, uploads
        self._eval = None

    def evaluation(self):
        store = self.ws.ready()
        with self.ws.lock:
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
        pairs = self._confused_pairs(r, off)
        return {
            "model": self.ws.model_name,
            "data": self.ws.data_label,
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

    @staticmethod
    def _confused_pairs(r, off: torch.Tensor) -> list[dict]:
        """The off-diagonal cells with a count, most confused first (ties by true, then predicted class)."""
        C = r.confusion
        sup = C.sum(1).tolist()
        return sorted(
            (
                {
                    "true": t,
                    "pred": p,
                    "true_name": r.class_names[t],
                    "pred_name": r.class_names[p],
                    "count": int(C[t, p]),
                    "share": int(C[t, p]) / max(1, sup[t]),
                }
                for t, p in off.nonzero().tolist()
            ),
            key=lambda d: (-d["count"], d["true"], d["pred"]),
        )

    def confusion_table(self) -> dict:
        """The full K×K confusion matrix (rows true, columns predicted) with the class names, for download."""
        r = self.evaluation()
        return {
            "model": self.ws.model_name,
            "data": self.ws.data_label,
            "class_names": list(r.class_names),
            "rows": "true class",
            "columns": "predicted class",
            "confusion": r.confusion.tolist(),
        }

    def confusion_csv(self) -> str:
        """The full confusion matrix as CSV: a header of predicted class names, one row per true class."""
        t = self.confusion_table()
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["true \\ predicted", *t["class_names"]])
        for name, row in zip(t["class_names"], t["confusion"], strict=True):
            w.writerow([name, *row])
        return buf.getvalue()

    def cell(self, true: Any, pred: Any, page: Any = 1, sort: str = "confidence", order: str | None = None) -> dict:
        """One page of the cell (true, pred): rows with top-k and probabilities."""
        ws = self.ws
        store = ws.ready()
        r, c = ws.check_class(true), ws.check_class(pred)
        if sort not in Store.SORTS:
            raise BadRequest(f"sort={str(sort)[:30]!r}: use one of {', '.join(Store.SORTS)}")
        if order not in (None, "", "asc", "desc"):
            raise BadRequest(f"order={str(order)[:30]!r}: use asc or desc")
        if not re.fullmatch(r"[0-9]{1,9}", str(page)) or int(page) < 1:
            raise NotFound(f"no page {str(page)[:30]!r}; pages start at 1")
        page = int(page)
        count = store.cell_count(r, c)
        pages = max(1, (count + ws.page_size - 1) // ws.page_size)
        if page > pages:
            raise NotFound(f"no page {page}; the cell has {pages}")
        desc = None if not order else order == "desc"
        if desc is None:
            desc = r != c
        rows = store.cell(r, c, sort=sort, descending=desc, offset=(page - 1) * ws.page_size, limit=ws.page_size)
        names = store.class_names
        for row in rows:
            row["ref"] = str(row["idx"])
            row["pred_name"], row["true_name"] = names[row["pred"]], names[row["true"]]
            row["second_name"] = names[row["second"]]
            row["top"] = [
                {"class": int(k), "name": names[k], "prob": p}
                for k, p in zip(row["top_classes"], row["top_probs"], strict=True)
            ]
        return {
            "true": r,
            "pred": c,
            "true_name": names[r],
            "pred_name": names[c],
            "count": count,
            "page": page,
            "pages": pages,
            "page_size": ws.page_size,
            "sort": sort,
            "order": "desc" if desc else "asc",
            "samples": rows,
        }

    def sample(self, ref: Any) -> dict:
        """The sample's classes and top-k (from the store, or one forward for an upload)."""
        ref = self.ws.check_ref(ref)
        names = self.ws.class_names
        if ref.startswith("u"):
            pred = self.uploads.prediction(ref)
            row = {"ref": ref, "idx": None, "path": None, "true": None, **pred}
        else:
            store = self.ws.ready()
            stored = store.sample(int(ref))
            if stored is None:
                raise NotFound(f"no sample {ref} in the store")
            row = stored
            row["ref"] = ref
        row["top"] = [
            {"class": int(k), "name": names[k], "prob": p}
            for k, p in zip(row["top_classes"], row["top_probs"], strict=True)
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
        n = len(self.ws.class_names)
        if re.fullmatch(r"[0-9]{1,9}", t) and int(t) < n:
            return int(t), "class"
        raise NotFound(f"no target {t[:40]!r}; use predicted, true, second or a class index 0..{n - 1}")

    # -- images ---------------------------------------------------------------
    def image_png(self, ref: Any) -> bytes:
        ref = self.ws.check_ref(ref)
        buf = io.BytesIO()
        to_pil(self.ws.tensor(ref)[0]).save(buf, format="PNG")
        return buf.getvalue()

    def pair_png(self, ref: Any, a: Any = None, b: Any = None) -> bytes:
        """Grad-CAM toward class a (default: true, or second for uploads) and b (default: predicted)
        side by side, and their difference b − a: what made it b rather than a."""
        ws = self.ws
        ref = ws.check_ref(ref)
        s = self.sample(ref)
        if a is None:
            a = s["true"] if s.get("true") is not None and s["true"] != s["pred"] else s["second"]
        if b is None:
            b = s["pred"]
        a, b = ws.check_class(a), ws.check_class(b)
        path = ws.results / ref / f"pair-{a}-{b}.png"
        if path.is_file():
            return path.read_bytes()

        def run(report):
            x = ws.device_tensor(ref)
            xx, t = x.repeat(2, 1, 1, 1), torch.tensor([a, b])
            try:
                e, what = gradcam(ws.model, xx, target=t), "Grad-CAM"
            except ValueError as err:  # no spatial layer (an MLP): the input gradient still compares the classes
                log.info("gallery maps by saliency: %s", err)
                e, what = saliency(ws.model, xx, target=t), "saliency"
            names = ws.class_names
            fig = pair_figure(x[0].cpu(), e.maps[0], e.maps[1], names[a], names[b], roles(s, a, b), what)
            png = png_bytes(fig)
            atomic_write(path, png)
            return png

        return ws.worker.run(f"pair/{ref}/{a}/{b}", run)


def roles(s: dict, a: int, b: int) -> tuple[str, str]:
    """What classes ``a`` and ``b`` are to the sample ``s``: true, predicted, true = predicted, second or class."""

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
