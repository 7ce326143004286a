"""Evaluation: confusion matrix (raw and normalised by class support), top-k accuracy,
per-class precision/recall, the most confused pairs; all from one streaming scan.

:class:`EvaluationAccumulator` keeps a K×K count matrix and one hit count per k,
so memory does not depend on the dataset size and shards merge by addition
(``torchrun`` gives the same numbers as one process).

Ties. Classes are ranked by logit, highest first, ties broken by the lower class
index, the order ``torch.argmax`` uses. The prediction (confusion-matrix column)
is the rank-0 class, and a sample is a top-k hit when its true class ``c`` has
rank < k, where ``rank(c) = #{j : ℓ_j > ℓ_c} + #{j < c : ℓ_j = ℓ_c}``. So top-1
accuracy always equals trace(confusion) / n, and results do not depend on how a
device orders equal values in ``torch.topk``.

Example::

    r = cnnlens.evaluate(cnnlens.load_model("digits-cnn"), "digits", topk=(1, 3))
    r.topk_accuracy[1], r.confusion_normalized[3], r.most_confused[:3]
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .autograd import needs_autograd
from .data import as_dataset, require_labels
from .results import Result, jsonable
from .scanning import Batch, scan
from .tap import LayerTap

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib) in figure(), files() and the report sections; the
# report's png_bytes (presentation).

log = logging.getLogger(__name__)


#: the most classes a confusion-matrix figure shows; beyond, the most confused sub-matrix
def _check_topk(topk, num_classes: int | None) -> tuple[int, ...]:
    if isinstance(topk, int) and not isinstance(topk, bool):
        topk = (topk,)
    try:
        ks = tuple(sorted({int(k) for k in topk}))
    except (TypeError, ValueError):
        raise TypeError(f"topk={topk!r}: give an int or a list of ints, e.g. (1, 5)") from None
    if not ks:
        raise ValueError("topk is empty; give at least one k, e.g. (1, 5)")
    if ks[0] < 1:
        raise ValueError(f"topk={list(ks)}: every k must be ≥ 1")
    if num_classes is not None and ks[-1] > num_classes:
        raise ValueError(f"top-{ks[-1]} is more than the model's {num_classes} classes; choose k ≤ {num_classes}")
    return ks


def default_topk(num_classes: int | None) -> tuple[int, ...]:
    """(1, 5) without the k above the number of classes."""
    return tuple(k for k in (1, 5) if num_classes is None or k <= num_classes) or (1,)


def true_class_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rank of each sample's true class (0 = predicted), ties broken by the lower class index.

    ``rank(c) = #{j : ℓ_j > ℓ_c} + #{j < c : ℓ_j = ℓ_c}``

    >>> true_class_rank(torch.tensor([[1., 3., 3., 0.], [1., 3., 3., 0.]]), torch.tensor([1, 2])).tolist()
    [0, 1]
    """
    lc = logits.gather(1, labels.view(-1, 1))
    idx = torch.arange(logits.shape[1], device=logits.device).view(1, -1)
    above = (logits > lc).sum(1)
    tied_lower = ((logits == lc) & (idx < labels.view(-1, 1))).sum(1)
    return above + tied_lower


class EvaluationAccumulator:
    """Confusion counts and top-k hits over a stream of batches (mergeable).

    State: ``confusion`` (K×K int64, rows true, columns predicted) and
    ``hits[k]`` (int64); ``merge`` adds them, so shards of a dataset merge to
    the one-pass result. ``num_classes=None`` takes K from the first batch;
    ``topk=None`` means (1, 5) without the k above K.

    >>> acc = EvaluationAccumulator(3, topk=(1, 2))
    >>> acc.update(Batch(x=torch.zeros(2, 1, 1, 1), y=torch.tensor([0, 2]),
    ...                  logits=torch.tensor([[2., 1., 0.], [0., 2., 1.]]), index=torch.arange(2)))
    >>> acc.compute().topk_accuracy
    {1: 0.5, 2: 1.0}
    """

    layers: Sequence[str] = ()

    def __init__(
        self,
        num_classes: int | None = None,
        topk: Sequence[int] | int | None = (1, 5),
        class_names: Sequence[str] | None = None,
    ):
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes={num_classes!r}: give a positive int")
        if class_names is not None:
            class_names = tuple(str(c) for c in class_names)
            if num_classes is None:
                num_classes = len(class_names)
            elif len(class_names) != num_classes:
                raise ValueError(f"{len(class_names)} class names for {num_classes} classes; give one name per class")
        self.num_classes = num_classes
        self._default_topk = topk is None
        self.topk = default_topk(num_classes) if topk is None else _check_topk(topk, num_classes)
        self.class_names = class_names
        self.confusion: torch.Tensor | None = None
        self.hits = torch.zeros(len(self.topk), dtype=torch.long)
        if num_classes is not None:
            self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def _init(self, k: int) -> None:
        self.num_classes = k
        self.topk = default_topk(k) if self._default_topk else _check_topk(self.topk, k)
        self.hits = torch.zeros(len(self.topk), dtype=torch.long)
        self.confusion = torch.zeros(k, k, dtype=torch.long)

    def update(self, batch: Batch) -> None:
        logits, y = batch.logits, batch.y
        if logits.dim() != 2:
            raise ValueError(f"the model output has shape {tuple(logits.shape)}; evaluation needs N×K logits")
        if self.confusion is None:
            self._init(logits.shape[1])
        assert self.confusion is not None  # allocated by __init__ or _init
        K = self.num_classes
        if logits.shape[1] != K:
            raise ValueError(
                f"the model gives {logits.shape[1]} logits but the evaluation is set up for {K} "
                "classes; give num_classes/class_names matching the model"
            )
        y = torch.as_tensor(y).to(logits.device).long().view(-1)
        if y.numel() != logits.shape[0]:
            raise ValueError(
                f"{y.numel()} labels for {logits.shape[0]} samples; the data must yield (x, y) "
                "with one class index per image"
            )
        if y.numel() == 0:
            return
        if int(y.min()) < 0 or int(y.max()) >= K:
            bad = int(y.max()) if int(y.max()) >= K else int(y.min())
            raise ValueError(
                f"label {bad} is outside the model's classes 0–{K - 1}; check the dataset's class "
                "mapping (ImageFolder folders must name the model's classes)"
            )
        if torch.isnan(logits).any():
            raise ValueError("the model produced NaN logits; check the weights and the input range [0, 1]")
        pred = logits.argmax(1)  # first maximum: rank 0 under the tie rule
        flat = (y * K + pred).cpu()
        self.confusion += torch.bincount(flat, minlength=K * K).view(K, K)
        rank = true_class_rank(logits, y)
        ks = torch.tensor(self.topk, device=rank.device).view(-1, 1)
        self.hits += (rank.view(1, -1) < ks).sum(1).cpu()

    def merge(self, other: EvaluationAccumulator) -> EvaluationAccumulator:
        """A new accumulator holding both shards' counts."""
        if not isinstance(other, EvaluationAccumulator):
            raise ValueError("can only merge evaluation accumulators with the same top-k")
        K = self.num_classes or other.num_classes
        mine, theirs = (
            a.topk if a.num_classes else default_topk(K) if a._default_topk else a.topk for a in (self, other)
        )
        if mine != theirs:
            raise ValueError("can only merge evaluation accumulators with the same top-k")
        out = EvaluationAccumulator(K, mine, self.class_names or other.class_names)
        for part in (self, other):
            if part.confusion is not None:
                if part.num_classes != out.num_classes:
                    raise ValueError(f"cannot merge evaluations over {part.num_classes} and {out.num_classes} classes")
                assert out.confusion is not None  # out has part's classes (checked above)
                out.confusion += part.confusion
            out.hits += part.hits
        return out

    def compute(self) -> EvaluationResult:
        if self.confusion is None or int(self.confusion.sum()) == 0:
            raise ValueError("no samples were evaluated: the dataset is empty")
        return EvaluationResult.from_counts(
            self.confusion, dict(zip(self.topk, self.hits.tolist(), strict=True)), self.class_names
        )


@dataclass(frozen=True)
class EvaluationResult(Result):
    """What :func:`evaluate` returns.

    confusion: K×K int64, rows true class, columns predicted class.
    confusion_normalized: rows divided by class support (rows sum to 1; a class
        without samples has a zero row).
    topk_accuracy: {k: hits / n}.
    per_class: one dict per class: ``class``, ``index``, ``precision`` = C[i,i] / Σ_r C[r,i],
        ``recall`` = C[i,i] / Σ_c C[i,c], ``f1``, ``support`` = Σ_c C[i,c]
        (0 where a denominator is 0, as scikit-learn's ``zero_division=0``).
    most_confused: off-diagonal pairs by count: ``true``, ``predicted`` (names),
        ``true_index``, ``predicted_index``, ``count``, ``rate`` (= count / support).
    class_names: K names; n: number of samples.
    """

    confusion: torch.Tensor
    confusion_normalized: torch.Tensor
    topk_accuracy: dict
    per_class: list
    most_confused: list
    class_names: tuple
    n: int
    topk_hits: dict = field(default_factory=dict)

    def headline(self) -> str:
        acc = ", ".join(f"top-{k} {100 * v:.1f} %" for k, v in self.topk_accuracy.items())
        return f"EvaluationResult: {self.n} images, {len(self.class_names)} classes, {acc}"

    def figure(self, normalized: bool = False):
        """The confusion matrix as an annotated heat map (``normalized=True``: rows divided by class support).

        >>> cnnlens.evaluate(model, "digits").figure(normalized=True).savefig("confusion.png")  # doctest: +SKIP
        """
        from .figures.evaluation import confusion_figure

        return confusion_figure(self, normalized=normalized)

    @staticmethod
    def from_counts(
        confusion: torch.Tensor, hits: dict[int, int], class_names: Sequence[str] | None = None, max_pairs: int = 20
    ) -> EvaluationResult:
        """Build the result from confusion counts and top-k hit counts."""
        C = confusion.detach().cpu().long()
        K = C.shape[0]
        names = tuple(class_names) if class_names else tuple(str(i) for i in range(K))
        n = int(C.sum())
        row = C.sum(1, keepdim=True).double()
        norm = torch.where(row > 0, C.double() / row.clamp_min(1), torch.zeros((), dtype=torch.float64)).float()
        diag, support, predicted = C.diag().tolist(), C.sum(1).tolist(), C.sum(0).tolist()
        per_class = []
        for i in range(K):
            p = diag[i] / predicted[i] if predicted[i] > 0 else 0.0
            r = diag[i] / support[i] if support[i] > 0 else 0.0
            f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
            per_class.append(
                {"class": names[i], "index": i, "precision": p, "recall": r, "f1": f1, "support": int(support[i])}
            )
        off = C.clone()
        off.fill_diagonal_(0)
        flat = off.flatten()
        count = int((flat > 0).sum())
        order = _top_pairs(flat, min(count, max_pairs))  # count desc, then row-major (true, predicted)
        pairs = []
        for j in order:
            t, q = divmod(int(j), K)
            pairs.append(
                {
                    "true": names[t],
                    "predicted": names[q],
                    "true_index": t,
                    "predicted_index": q,
                    "count": int(C[t, q]),
                    "rate": int(C[t, q]) / support[t],
                }
            )
        acc = {int(k): h / n for k, h in sorted(hits.items())}
        return EvaluationResult(
            confusion=C,
            confusion_normalized=norm,
            topk_accuracy=acc,
            per_class=per_class,
            most_confused=pairs,
            class_names=names,
            n=n,
            topk_hits={int(k): int(h) for k, h in sorted(hits.items())},
        )

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy, trace(confusion) / n."""
        return float(self.confusion.diag().sum()) / self.n

    @property
    def num_classes(self) -> int:
        return self.confusion.shape[0]

    # -- files ----------------------------------------------------------------
    def summary(self) -> dict:
        """JSON-ready summary (without the matrices)."""
        return {
            "n": self.n,
            "num_classes": self.num_classes,
            "topk_accuracy": self.topk_accuracy,
            "topk_hits": self.topk_hits,
            "per_class": self.per_class,
            "most_confused": self.most_confused,
        }

    def to_dict(self) -> dict:
        return jsonable(self.summary())

    def confusion_csv(self, normalized: bool = False) -> str:
        """The full matrix as CSV: a header of predicted class names, one row per true class."""
        M = self.confusion_normalized if normalized else self.confusion
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["true \\ predicted", *self.class_names])
        for name, row in zip(self.class_names, M.tolist(), strict=True):
            w.writerow([name, *(f"{v:.6g}" if normalized else v for v in row)])
        return buf.getvalue()

    def per_class_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["index", "class", "precision", "recall", "f1", "support"])
        for r in self.per_class:
            w.writerow(
                [r["index"], r["class"], f"{r['precision']:.6g}", f"{r['recall']:.6g}", f"{r['f1']:.6g}", r["support"]]
            )
        return buf.getvalue()

    def confusion_json(self) -> str:
        """Both matrices in full, with the class names."""
        return json.dumps(
            {
                "class_names": list(self.class_names),
                "rows": "true class",
                "columns": "predicted class",
                "confusion": self.confusion.tolist(),
                "confusion_normalized": [[round(v, 6) for v in r] for r in self.confusion_normalized.tolist()],
            }
        )

    def files(self) -> dict[str, bytes]:
        """Every file :meth:`save` writes, by name: matrices as PNG/CSV/JSON, per-class CSV, summary JSON."""
        from .figures.evaluation import confusion_figure

        out = {
            "confusion.csv": self.confusion_csv().encode(),
            "confusion_normalized.csv": self.confusion_csv(normalized=True).encode(),
            "confusion.json": self.confusion_json().encode(),
            "per_class.csv": self.per_class_csv().encode(),
            "evaluation.json": json.dumps(self.to_dict(), indent=2).encode(),
        }
        for norm, name in ((False, "confusion.png"), (True, "confusion_normalized.png")):
            out[name] = _fig_png(confusion_figure(self, normalized=norm))
        return out

    def save(self, directory: str | Path, stem: str | None = None) -> Path:
        """Write :meth:`files` into ``directory``; returns the path of ``evaluation.json``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            (d / name).write_bytes(data)
        return d / "evaluation.json"


def _top_pairs(flat: torch.Tensor, m: int) -> list[int]:
    """Indices of the m largest entries, by value desc then index asc (stable for big matrices)."""
    if m == 0:
        return []
    vals, idx = torch.sort(flat, descending=True, stable=True)
    return idx[:m].tolist()


class PredictionAccumulator:
    """Each sample's index, label and predicted class over a stream of batches (mergeable; for selections)."""

    layers: Sequence[str] = ()

    def __init__(self) -> None:
        self.index: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.pred: list[torch.Tensor] = []

    def update(self, batch: Batch) -> None:
        self.index.append(batch.index.cpu())
        self.y.append(batch.y.cpu())
        self.pred.append(batch.logits.argmax(1).cpu())

    def merge(self, other: PredictionAccumulator) -> PredictionAccumulator:
        out = PredictionAccumulator()
        out.index, out.y, out.pred = self.index + other.index, self.y + other.y, self.pred + other.pred
        return out

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.index:
            return (torch.empty(0, dtype=torch.long),) * 3
        index, y, pred = torch.cat(self.index), torch.cat(self.y), torch.cat(self.pred)
        order = torch.argsort(index)
        return index[order], y[order], pred[order]


def select_samples(
    model: torch.nn.Module,
    data,
    *,
    misclassified: bool = False,
    true: int | None = None,
    predicted: int | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    device=None,
) -> list[int]:
    """Indices of the samples of ``data`` that the model gets wrong (``misclassified``), whose label is
    ``true``, and/or that it predicts as ``predicted`` — every condition given must hold; one scan.

    ``select_samples(model, "digits", true=8, predicted=5)`` is the cell (8, 5) of the confusion matrix.

    >>> select_samples(cnnlens.load_model("digits-cnn"), "digits", misclassified=True)[:3]  # doctest: +SKIP
    """
    (res,) = scan(model, as_dataset(data, model), [PredictionAccumulator()], batch_size=batch_size, device=device)
    index, y, pred = res
    if (misclassified or true is not None) and len(y) and bool((y < 0).any()):
        raise ValueError(
            "selecting by the true class or by mistakes needs labels, and this data has none; "
            "give a labelled dataset (an ImageFolder with one sub-folder per class)"
        )
    keep = torch.ones(len(index), dtype=torch.bool)
    if misclassified:
        keep &= y != pred
    if true is not None:
        keep &= y == int(true)
    if predicted is not None:
        keep &= pred == int(predicted)
    chosen = index[keep].tolist()
    return chosen[:limit] if limit is not None else chosen


@needs_autograd
def evaluate(
    model: torch.nn.Module,
    data,
    topk: Sequence[int] | int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    class_names: Sequence[str] | None = None,
    num_workers: int = 0,
) -> EvaluationResult:
    """Confusion matrix, top-k accuracy and per-class scores of ``model`` on ``data``, in one pass.

    ``data``: ``"digits"``, an ImageFolder path, a ``Dataset`` or a ``DataLoader``
    of (x, y) with x in [0, 1]. ``topk`` defaults to (1, 5) without the k above
    the number of classes; an explicit k above it is an error. Top-k accuracy =
    #{samples whose true class ranks < k} / n (ties: lower class index first, see
    the module docstring). Under ``torchrun`` each process scans a shard and all
    get the same result.

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> data = torch.utils.data.TensorDataset(torch.rand(10, 1, 2, 2), torch.randint(0, 3, (10,)))
    >>> r = evaluate(net, data, topk=(1, 3))
    >>> r.topk_accuracy[3], int(r.confusion.sum())
    (1.0, 10)
    """
    data = as_dataset(data, model)
    require_labels(data, "evaluation")
    spec = getattr(model, "spec", None)
    K = (getattr(spec, "num_classes", 0) or None) if spec is not None else None
    names = class_names or (tuple(spec.class_names) if spec is not None and spec.class_names else None)
    from_data = getattr(getattr(data, "dataset", data), "cnnlens_class_names", None)
    if (
        class_names is None
        and from_data
        and spec is not None
        and K == len(from_data)
        and getattr(spec, "extra", {}).get("class_names_from") == "numbers"
    ):
        names = tuple(from_data)  # a model without class names: the folders name its classes
    if names is not None and K is not None and len(names) != K:
        raise ValueError(f"{len(names)} class names for a model with {K} classes; give one name per class")
    if names is not None:
        K = len(names)
    ks = None if topk is None else _check_topk(topk, K)
    if device is not None:
        p, want = next(model.parameters(), None), torch.device(device)
        if p is not None and (p.device.type != want.type or (want.index is not None and p.device != want)):
            raise ValueError(
                f"the model is on {p.device} but device={device!s}; move it first with "
                f"model.to({str(device)!r}) or leave device unset"
            )
    acc = EvaluationAccumulator(K, ks, names)
    (result,) = scan(
        model, data, [acc], batch_size=batch_size, device=device, progress=progress, num_workers=num_workers
    )
    return result


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------


def _fig_png(fig) -> bytes:
    from .report import png_bytes

    return png_bytes(fig)


def per_class_shown(result: EvaluationResult, limit: int = 30, lowest: int = 20) -> tuple[list[dict], str]:
    """The per-class rows a table shows, and what they are: the classes present in the data (support > 0);
    with more than ``limit`` of them, the ``lowest`` by recall."""
    rows = [r for r in result.per_class if r["support"] > 0] or list(result.per_class)
    K = result.num_classes
    what = f"the {len(rows)} classes present in the data (of {K})" if len(rows) < K else f"all {K} classes"
    if len(rows) > limit:
        rows = sorted(rows, key=lambda r: (r["recall"], r["index"]))[:lowest]
        what = f"the {lowest} classes with the lowest recall, of " + what
    return rows, what


# ---------------------------------------------------------------------------
# predictions (top-k on a batch of images)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TopK(Result):
    """The k most likely classes of each image: ``classes`` N×k, ``probs`` N×k (softmax), ``names``."""

    classes: torch.Tensor
    probs: torch.Tensor
    names: tuple

    def labels(self, i: int) -> list[tuple[str, float]]:
        return list(zip(self.names[i], self.probs[i].tolist(), strict=True))


def predict_topk(model: torch.nn.Module, x: torch.Tensor, k: int = 5, batch_size: int = 32) -> TopK:
    """Softmax top-k of ``model`` on images ``x`` (N×C×H×W in [0, 1]); the model is left as it was.

    Order: probability descending, ties by lower class index (as :func:`evaluate`).

    >>> import torch.nn as nn
    >>> r = predict_topk(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), torch.rand(2, 1, 2, 2), k=2)
    >>> r.classes.shape, bool((r.probs[:, 0] >= r.probs[:, 1]).all())
    (torch.Size([2, 2]), True)
    """
    outs = []
    with LayerTap(model) as tap, torch.no_grad():
        for b in range(0, x.shape[0], batch_size):
            out = tap.run(x[b : b + batch_size])
            if not torch.is_tensor(out) or out.dim() != 2:
                raise TypeError("the model must return N×K logits; wrap it so forward() returns them")
            outs.append(out.detach().float().cpu())
    logits = torch.cat(outs)
    K = logits.shape[1]
    _check_topk((k,), K)
    probs = logits.softmax(1)
    # stable sort on −p keeps the lower index first among ties
    order = torch.sort(-probs, dim=1, stable=True).indices[:, :k]
    spec = getattr(model, "spec", None)
    cn = tuple(spec.class_names) if spec is not None and spec.class_names else tuple(str(i) for i in range(K))
    names = tuple(tuple(cn[j] for j in row) for row in order.tolist())
    return TopK(classes=order, probs=probs.gather(1, order), names=names)


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

INTRO = (
    "<p>The <b>confusion matrix</b> counts, for every true class (row), how often the model predicted each "
    "class (column); the diagonal holds the correct predictions. Raw counts favour frequent classes, so the "
    "second matrix divides each row by its <b>class support</b> (the number of samples of that class): every "
    "row then sums to 1 and reads as “of the images of class <i>r</i>, this fraction went to <i>c</i>”. "
    "With imbalanced classes this normalised view shows which classes are misclassified, whatever their size.</p>"
    "<p><b>Top-k accuracy</b> counts an image as correct when its true class is among the k highest-scoring "
    "outputs (top-5 error = 1 − top-5 accuracy). It forgives near misses between similar classes. "
    "Ties are broken by the lower class index, so top-1 accuracy equals the diagonal of the confusion matrix "
    "divided by n.</p>"
)


def report_section(
    report, result: EvaluationResult, settings: dict | None = None, title: str = "Evaluation", intro: str = INTRO
):
    """Add the evaluation section (figures, top-k, per-class table, most confused pairs) to ``report``."""
    from .figures.evaluation import MAX_FIGURE_CLASSES, confusion_figure, present_classes

    sec = report.section(title, intro=intro, settings=settings or {})
    acc = ", ".join(f"top-{k}: <b>{v:.2%}</b>" for k, v in result.topk_accuracy.items())
    sec.text(f"<p>{result.n} images, {result.num_classes} classes. {acc}.</p>")
    K = result.num_classes
    present = present_classes(result)
    if len(present) < K:
        note = (
            f" Rows and columns: the {len(present)} classes present in the data (of {K})"
            if len(present) <= MAX_FIGURE_CLASSES
            else f" The {MAX_FIGURE_CLASSES} of the {len(present)} classes present in the data with the most confusions"
        ) + "; “other classes” counts predictions of any other class; the full matrix is in the CSV."
    else:
        note = (
            ""
            if K <= MAX_FIGURE_CLASSES
            else (f" Showing the {MAX_FIGURE_CLASSES} classes with the most confusions; the full matrix is in the CSV.")
        )
    sec.figure(
        confusion_figure(result, normalized=False),
        "Confusion matrix, raw counts (rows: true class, columns: predicted)." + note,
        name="confusion",
    )
    sec.figure(
        confusion_figure(result, normalized=True),
        "Confusion matrix normalised by class support: each row sums to 1, an empty class gives a zero row." + note,
        name="confusion-normalized",
    )
    rows, what = per_class_shown(result)
    cap = (
        "Per-class precision (of the images predicted as the class, the fraction that are it), recall "
        "(of the images of the class, the fraction found) and support"
    )
    cap += "." if what.startswith("all") else f": {what}; every class is in per_class.csv and results.json."
    sec.table(
        [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in rows],
        header=["class", "precision", "recall", "F1", "support"],
        caption=cap,
    )
    if result.most_confused:
        sec.table(
            [[p["true"], p["predicted"], p["count"], f"{p['rate']:.1%}"] for p in result.most_confused[:10]],
            header=["true class", "predicted as", "count", "share of the true class"],
            caption="The most confused pairs (off-diagonal cells with the highest counts).",
        )
    else:
        sec.text("<p>No confusions: every image was classified correctly.</p>")
    sec.data("evaluation", result.to_dict())
    return sec


TOPK_INTRO = (
    "<p>EfficientNet-Lite0 (ImageNet, 1000 classes) on the photos that ship with scikit-image. Each bar is the "
    "softmax probability of one of the five highest-scoring classes; top-5 accuracy asks whether the true "
    "class is among them. Neighbouring ImageNet classes (cat breeds, cups) often share the mass.</p>"
)


def topk_section(
    report,
    model,
    names: list[str],
    x: torch.Tensor,
    k: int = 5,
    title: str = "Top-5 predictions",
    settings: dict | None = None,
):
    """Add a section with each image and its top-k classes and probabilities."""
    from .figures.evaluation import topk_figure

    r = predict_topk(model, x, k=k)
    sec = report.section(title, intro=TOPK_INTRO, settings=settings or {})
    items = [(topk_figure(x[i], r.labels(i), names[i]), names[i]) for i in range(len(names))]
    sec.gallery(items, caption=f"Top-{k} classes with their probabilities.", width=420)
    sec.data(
        "topk",
        {
            n: [
                {"class": c, "index": int(j), "probability": float(p)}
                for (c, p), j in zip(r.labels(i), r.classes[i].tolist(), strict=True)
            ]
            for i, n in enumerate(names)
        },
    )
    return sec, r
