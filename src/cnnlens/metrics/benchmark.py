"""A leaderboard: every attribution method on every metric, with confidence intervals and seconds per map.

:func:`benchmark` explains N images with each method, times it, and scores the
maps with the localisation metrics (when boxes or masks are given: pointing game, relevance mass and
rank, the box cut from the map — Zhou et al. 2016 — and the map-seeded GrabCut mask — Simonyan et al.
2014), deletion /
insertion AUC, faithfulness correlation, ROAD (MoRF, LeRF), max-sensitivity and
model-parameter randomisation. Settings are chosen to keep a run short (fewer
random subsets, ROAD levels and noise samples than the metrics' defaults); all
of them are recorded in ``Leaderboard.settings``.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .. import attribution
from ..attribution import deletion, insertion
from ..autograd import needs_autograd
from ..results import Result
from .common import masks_of
from .faithfulness import faithfulness_correlation, road
from .localisation import pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from .objects import localisation_accuracy, localisation_iou, segmentation_iou
from .randomisation import model_parameter_randomisation
from .result import Aggregate, MetricResult, aggregate
from .robustness import max_sensitivity

log = logging.getLogger(__name__)

#: every metric the leaderboard knows, in column order: name → (higher is better, needs ground truth)
METRICS: dict[str, tuple[bool, bool]] = {
    "pointing_game": (True, True),
    "relevance_mass_accuracy": (True, True),
    "relevance_rank_accuracy": (True, True),
    "localisation_iou": (True, True),
    "localisation_accuracy": (True, True),
    "segmentation_iou": (True, True),
    "deletion_auc": (False, False),
    "insertion_auc": (True, False),
    "faithfulness_correlation": (True, False),
    "road_morf": (False, False),
    "road_lerf": (True, False),
    "max_sensitivity": (False, False),
    "model_parameter_randomisation": (False, False),
}

#: the benchmark's default settings per metric (short runs; the metric functions' own defaults are Quantus')
DEFAULTS: dict[str, dict] = {
    "localisation_iou": {"threshold": 0.2},
    "localisation_accuracy": {"threshold": 0.2, "iou": 0.5},
    "segmentation_iou": {"foreground": 0.95, "background": 0.30},
    "deletion_auc": {"steps": 16, "baseline": "blur"},
    "insertion_auc": {"steps": 16, "baseline": "blur"},
    "faithfulness_correlation": {"runs": 30, "subset_fraction": 0.05, "baseline": "black", "seed": 0},
    "road_morf": {"percentages": (10, 30, 50, 70, 90), "noise": 0.01, "seed": 0},
    "road_lerf": {"percentages": (10, 30, 50, 70, 90), "noise": 0.01, "seed": 0},
    "max_sensitivity": {"radius": 0.1, "samples": 5, "seed": 0},
    "model_parameter_randomisation": {"seed": 42, "abs": True},
}

#: method settings that keep the slow methods short in a benchmark
METHOD_DEFAULTS: dict[str, dict] = {
    "smoothgrad": {"n": 16},
    "integrated_gradients": {"steps": 16},
    "augmented_gradcam": {"augmentations": 8, "steps": 40},
}


@dataclasses.dataclass(frozen=True)
class Leaderboard(Result):
    """Methods × metrics: per-map scores, their mean with a 95 % t interval, and seconds per map.

    ``scores[method][metric]``: N float64 per-map scores (NaN where undefined);
    ``aggregates[method][metric]``: :class:`Aggregate`; seconds_per_map[method]: wall time of the
    method's call / N (on a shared machine, a rough figure); higher_is_better[metric];
    examples[method]: the maps of the first ``keep`` images (for figures); objects[method]: for those images,
    ``"boxes"`` cut from the maps (keep×4, when a box metric ran) and ``"masks"`` segmented by GrabCut
    (keep×H×W, when segmentation_iou ran).
    """

    methods: list
    metrics: list
    scores: dict
    aggregates: dict
    seconds_per_map: dict
    higher_is_better: dict
    n: int
    settings: dict = dataclasses.field(default_factory=dict)
    examples: dict = dataclasses.field(default_factory=dict)
    objects: dict = dataclasses.field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One dict per (method, metric): mean, low, high, n, seconds per map — the CSV's rows."""
        out = []
        for m in self.methods:
            for k in self.metrics:
                a: Aggregate = self.aggregates[m][k]
                out.append(
                    {
                        "method": m,
                        "metric": k,
                        "mean": a.mean,
                        "ci_low": a.low,
                        "ci_high": a.high,
                        "n": a.n,
                        "undefined": a.undefined,
                        "higher_is_better": self.higher_is_better[k],
                        "seconds_per_map": self.seconds_per_map[m],
                    }
                )
        return out

    def csv(self) -> str:
        buf = io.StringIO()
        rows = self.rows()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["method", "metric"], lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        return buf.getvalue()

    def clear_best(self, metric: str) -> str | None:
        """The best method on ``metric`` only when its 95 % interval does not overlap the runner-up's (so the
        ranking is not noise); None otherwise."""
        vals = sorted(
            ((self.aggregates[m][metric], m) for m in self.methods if self.aggregates[m][metric].n > 0),
            key=lambda t: t[0].mean,
            reverse=self.higher_is_better[metric],
        )
        if not vals:
            return None
        if len(vals) == 1:
            return vals[0][1]
        (a, m), (b, _) = vals[0], vals[1]
        apart = a.low > b.high if self.higher_is_better[metric] else a.high < b.low
        return m if apart else None

    def best(self, metric: str) -> str | None:
        """The method with the best mean on ``metric`` (None if all are undefined)."""
        vals = [(self.aggregates[m][metric].mean, m) for m in self.methods if self.aggregates[m][metric].n > 0]
        if not vals:
            return None
        return (max if self.higher_is_better[metric] else min)(vals)[1]


def _check_names(given, known, what):
    if given is None:
        return list(known)
    names = [g.strip().replace("-", "_") for g in given]
    bad = [g for g in names if g not in known]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(map(repr, bad))}; choose from {', '.join(known)}")
    return names


@needs_autograd
def benchmark(
    model: nn.Module,
    x: torch.Tensor,
    *,
    y: torch.Tensor | None = None,
    boxes: Any = None,
    masks: Any = None,
    objects: Any = None,
    methods: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    target: Any = None,
    method_settings: dict | None = None,
    metric_settings: dict | None = None,
    level: float = 0.95,
    keep: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> Leaderboard:
    """Score every method in ``methods`` (default: all of ``cnnlens.attribution.METHODS``) on every metric.

    ``target``: default ``"true"`` when labels ``y`` are given (the box is the labelled object's),
    else ``"predicted"``. ``boxes`` (N×4) or ``masks`` (N×H×W) enable the localisation metrics;
    without them they are left out. ``objects`` (N×H×W): the objects' own pixels for ``segmentation_iou``
    (``cluttered_digits().ink``; default: ``masks``, else the boxes' rectangles); ``segmentation_iou`` is
    left out of the default metrics when OpenCV (``cnnlens[segment]``) is not installed.
    ``method_settings[name]`` / ``metric_settings[name]`` override
    :data:`METHOD_DEFAULTS` / :data:`DEFAULTS`. ``progress(done, total)`` counts (method, metric) pairs.

    >>> lb = benchmark(model, ds.x[:16], y=ds.y[:16], boxes=ds.boxes[:16])       # doctest: +SKIP
    >>> lb.aggregates["gradcam"]["pointing_game"].mean                          # doctest: +SKIP
    """
    method_names = _check_names(methods, list(attribution.METHODS), "method")
    has_truth = boxes is not None or masks is not None
    wanted = _wanted_metrics(metrics, has_truth)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    truth = _Truth(boxes, masks, objects, n=x.shape[0], size=size) if has_truth else None
    if target is None:
        target = "true" if y is not None else "predicted"
    msets = _merged(METHOD_DEFAULTS, method_settings)
    ksets = _merged(DEFAULTS, metric_settings)
    total, done = len(method_names) * (1 + len(wanted)), 0

    def tick() -> None:  # after each method's maps and each metric
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    scores: dict = {}
    seconds: dict = {}
    examples: dict = {}
    kept: dict = {}  # what each map became (boxes, masks) on the first `keep` images
    for name in method_names:
        st = msets.get(name, {})
        t0 = time.perf_counter()
        e = attribution.METHODS[name](model, x, target=target, y=y, **st)
        seconds[name] = (time.perf_counter() - t0) / x.shape[0]
        tick()
        examples[name] = e.maps[:keep].clone()
        scores[name] = _score_maps(model, x, e, name, st, truth, wanted, ksets, keep, kept, tick)
        log.info("benchmark: %s done (%.3f s per map)", name, seconds[name])
    aggs = {m: {k: aggregate(scores[m][k], level) for k in wanted} for m in method_names}
    settings = {
        "target": target if isinstance(target, str) else "given",
        "level": level,
        "metrics": {k: ksets.get(k, {}) for k in wanted},
        "methods": {m: msets.get(m, {}) for m in method_names},
        "ground_truth": has_truth,
    }
    return Leaderboard(
        methods=method_names,
        metrics=wanted,
        scores=scores,
        aggregates=aggs,
        seconds_per_map=seconds,
        higher_is_better={k: METRICS[k][0] for k in wanted},
        n=x.shape[0],
        settings=settings,
        examples=examples,
        objects=kept,
    )


def _wanted_metrics(metrics: Sequence[str] | None, has_truth: bool) -> list[str]:
    """The metrics to run: those asked for (default: all), less those needing a ground truth when there is none
    (an error if asked for by name) and, by default, ``segmentation_iou`` without OpenCV."""
    wanted = _check_names(metrics, list(METRICS), "metric")
    if not has_truth:
        dropped = [k for k in wanted if METRICS[k][1]]
        if dropped and metrics is not None:
            raise ValueError(
                f"{', '.join(dropped)} need a ground truth; give boxes= or masks= (for an ImageFolder: a boxes CSV)"
            )
        wanted = [k for k in wanted if not METRICS[k][1]]
    if "segmentation_iou" in wanted and metrics is None and not _has_opencv():
        log.info("benchmark: segmentation_iou left out (pip install 'cnnlens[segment]' for OpenCV's GrabCut)")
        wanted.remove("segmentation_iou")
    return wanted


def _merged(defaults: dict, overrides: dict | None) -> dict:
    """{name: settings}: a copy of ``defaults`` with each name's ``overrides`` laid over it."""
    out = {k: dict(v) for k, v in defaults.items()}
    for k, v in (overrides or {}).items():
        out.setdefault(k, {}).update(v)
    return out


def _score_maps(model, x, e, name: str, st: dict, truth, wanted: list[str], ksets: dict, keep: int, kept: dict, tick):
    """One method's maps ``e`` scored on every wanted metric ({metric: per-map scores}); what each map became
    (boxes, masks) on the first ``keep`` images goes into ``kept[name]``; ``tick()`` after each metric."""
    classes = e.classes.to(x.device)
    row = {}
    for k in wanted:
        r = _score(k, model, x, e, classes, name, st, truth, ksets.get(k, {}))
        row[k] = r.scores
        for what in ("boxes", "masks"):  # what the map became, kept for the figure
            if what in r.extras:
                kept.setdefault(name, {})[what] = r.extras[what][:keep].clone()
        tick()
    return row


def _has_opencv() -> bool:
    return importlib.util.find_spec("cv2") is not None


class _Truth:
    """The ground truth in the forms the metrics take: boxes and masks as given, boxes from masks (their tight
    box) for the box-cut localisation, and the objects' pixels for the segmentation."""

    def __init__(self, boxes, masks, objects, n: int, size: tuple[int, int]):
        self.boxes, self.masks = boxes, masks
        region = masks_of(boxes, masks, n, size)
        if boxes is not None:
            self.box_list = torch.as_tensor(boxes).reshape(-1, 4)
        else:
            rows, cols = region.any(2), region.any(1)
            idx_r, idx_c = torch.arange(size[0]), torch.arange(size[1])
            big = max(size)
            self.box_list = torch.stack(
                [
                    torch.where(cols, idx_c, big).min(1).values,
                    torch.where(rows, idx_r, big).min(1).values,
                    torch.where(cols, idx_c, -1).max(1).values + 1,
                    torch.where(rows, idx_r, -1).max(1).values + 1,
                ],
                1,
            )
        self.objects = region if objects is None else masks_of(masks=objects, n=n, size=size)


def _score(
    k: str, model, x, e, classes, method: str, method_settings: dict, truth: _Truth | None, s: dict
) -> MetricResult:
    boxes, masks = (truth.boxes, truth.masks) if truth is not None else (None, None)
    # benchmark() drops the metrics that need a ground truth when there is none
    if k == "localisation_iou":
        assert truth is not None
        return localisation_iou(e, truth.box_list, **s)
    if k == "localisation_accuracy":
        assert truth is not None
        return localisation_accuracy(e, truth.box_list, **s)
    if k == "segmentation_iou":
        assert truth is not None
        return segmentation_iou(e, x, truth.objects, **s)
    if k == "pointing_game":
        return pointing_game(e, boxes, masks=masks)
    if k == "relevance_mass_accuracy":
        return relevance_mass_accuracy(e, boxes, masks=masks)
    if k == "relevance_rank_accuracy":
        return relevance_rank_accuracy(e, boxes, masks=masks)
    if k in ("deletion_auc", "insertion_auc"):
        curve = (deletion if k == "deletion_auc" else insertion)(model, x, e, classes, **s)
        return MetricResult(k, curve.auc.double(), k == "insertion_auc", classes.cpu(), method, settings=s)
    if k == "faithfulness_correlation":
        s = dict(s)
        frac = s.pop("subset_fraction", None)
        if frac is not None and "subset_size" not in s:
            s["subset_size"] = max(1, min(x[0].numel() - 1, round(frac * x[0].numel())))
        return faithfulness_correlation(model, x, e, classes, **s)
    if k in ("road_morf", "road_lerf"):
        return road(model, x, e, classes, order=k[5:], **s)
    if k == "max_sensitivity":
        return max_sensitivity(model, x, method, classes, explanation=e, **s, **method_settings)
    if k == "model_parameter_randomisation":
        return model_parameter_randomisation(model, x, method, classes, explanation=e, **s, **method_settings)
    raise ValueError(f"unknown metric {k!r}")
