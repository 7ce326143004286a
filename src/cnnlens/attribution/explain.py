"""Several attribution methods on a batch of images, scored, as one value: :func:`explain_images`.

What ``cnnlens explain`` does, for a Python user: the maps of each method, their deletion/insertion scores,
the methods that did not apply (with the reason), the time each took and the top-k predictions.
:func:`cnnlens.attribution.report.add_explain_section` presents an :class:`ExplainRun` in a report.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..evaluation import predict_topk
from ..registry import method_info
from ..results import Explanation, Result
from ..tap import LayerTap
from .faithfulness import Faithfulness, faithfulness

# Late (CONTRIBUTING.md, Imports): the drawing layer (matplotlib), in ExplainRun.preview().

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExplainRun(Result):
    """What :func:`explain_images` returns.

    images: the N×C×H×W images explained (float, CPU); names: one name per image;
    explanations: {method: Explanation} of the methods that ran; failures: {method: reason} of those that
    did not apply; faithfulness: {method: Faithfulness} (empty when ``faithfulness_steps=0``);
    seconds: {method: wall time of its call}; top: the top-k predictions (:class:`cnnlens.evaluation.TopK`);
    settings: what ran (methods, target, layer, faithfulness steps and baseline);
    class_names: the model's class names (``model.spec.class_names``), if it has them.
    """

    images: torch.Tensor
    names: list
    explanations: dict
    failures: dict
    faithfulness: dict
    seconds: dict
    top: Any
    settings: dict = dataclasses.field(default_factory=dict)
    class_names: list | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def headline(self) -> str:
        return f"ExplainRun: {len(self.explanations)} method(s) on {len(self)} image(s)" + (
            f", {len(self.failures)} did not apply" if self.failures else ""
        )

    def preview(self):
        """Every method's maps over the first images (at most 4): the explain page's grid."""
        from ..figures.attribution import images_by_methods_figure

        if not self.explanations:
            return None
        return images_by_methods_figure(
            self.images, self.names, self.explanations, self.faithfulness, rows=range(min(4, len(self)))
        )


def explain_images(
    model,
    x: torch.Tensor,
    methods: Sequence[str] = ("saliency", "gradcam"),
    target: Any = "predicted",
    *,
    names: Sequence[str] | None = None,
    layer: Any = None,
    settings: dict | None = None,
    faithfulness_steps: int = 16,
    baseline: Any = "blur",
    topk: int = 5,
    progress: Callable[[str, int, int], None] | None = None,
) -> ExplainRun:
    """Run each method on ``x``, score each map's deletion/insertion curves, and predict the top-k classes.

    ``methods``: registry names or ``captum:<Class>``; ``settings``: {method: keyword arguments}; ``layer``
    goes to the methods that read one. A method that does not apply to the model (``ValueError``) is kept
    in ``failures`` with its reason; if none applies, the first reason is raised. ``progress(stage, done,
    total)`` with ``stage`` "maps" then "faithfulness", counted in images × methods.

    >>> run = explain_images(model, x, ["saliency", "gradcam"], faithfulness_steps=8)      # doctest: +SKIP
    >>> run.faithfulness["gradcam"].deletion_auc                                           # doctest: +SKIP
    """
    methods = list(methods)
    if not methods:
        raise ValueError("give at least one method, e.g. methods=['saliency', 'gradcam']")
    for k in methods:
        method_info(k)  # an unknown name is one line before any work
    n = x.shape[0]
    total = n * len(methods) * (2 if faithfulness_steps > 0 else 1)
    tick = (lambda stage, done: progress(stage, done, total)) if progress else (lambda stage, done: None)
    expls = run_methods(
        model,
        x,
        methods,
        target=target,
        layer=layer,
        settings=settings,
        progress=lambda name, d, t: tick("maps", d * n),
    )
    tick("maps", len(methods) * n)
    failed = {k: e for k, e in expls.items() if not isinstance(e, Explanation)}
    if len(failed) == len(methods):
        raise ValueError(f"no method applies: {next(iter(failed.values()))}")
    faith = (
        score_all(
            model,
            x,
            expls,
            steps=faithfulness_steps,
            baseline=baseline,
            progress=lambda name, d, t: tick("faithfulness", (len(methods) + d) * n),
        )
        if faithfulness_steps > 0
        else {}
    )
    tick("faithfulness", total)
    ok = {k: e for k, e in expls.items() if isinstance(e, Explanation)}
    top = predict_topk(model, x, k=min(topk, _num_classes(model, x)))
    return ExplainRun(
        images=x.detach().float().cpu(),
        names=list(names) if names is not None else [f"#{i}" for i in range(n)],
        explanations=ok,
        failures={k: str(e) for k, e in failed.items()},
        faithfulness=faith,
        seconds={k: e.extras.get("seconds") for k, e in ok.items()},
        top=top,
        settings={
            "methods": methods,
            "target": target,
            "layer": layer,
            "faithfulness_steps": faithfulness_steps,
            "baseline": baseline,
        },
        class_names=list(getattr(getattr(model, "spec", None), "class_names", ()) or ()) or None,
    )


def _num_classes(model, x: torch.Tensor) -> int:
    with LayerTap(model) as tap, torch.no_grad():
        return tap.run(x[:1]).shape[1]


def _log_cause(name: str, e: Exception) -> None:
    """A bridged library's own error (chained as the cause of the one-line one), for ``--debug`` / ``-v``."""
    if e.__cause__ is not None:
        log.info("%s: the bridged library's own error", name, exc_info=e.__cause__)


def run_methods(
    model,
    x: torch.Tensor,
    methods: Sequence[str],
    target: Any = "predicted",
    *,
    layer: Any = None,
    settings: dict | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Explanation | Exception]:
    """Run each method on the batch; a method that does not apply (ValueError) is kept as its error."""
    out: dict[str, Explanation | Exception] = {}
    for i, name in enumerate(methods):
        info = method_info(name)
        fn = info.fn
        kw = dict((settings or {}).get(name, {}))
        if layer is not None and info.layered:
            kw.setdefault("layer", layer)
        if progress:
            progress(name, i, len(methods))
        t0 = time.perf_counter()
        try:
            e_ok = fn(model, x, target=target, **kw)
            out[name] = e_ok
        except ValueError as e:
            log.warning("%s does not apply: %s", name, e)
            _log_cause(name, e)
            out[name] = e
        except (TypeError, AssertionError, NotImplementedError) as e:
            if not name.startswith("captum:"):
                raise
            log.warning("%s does not apply: %s", name, e)  # Captum refuses a layer type, an argument, ...
            _log_cause(name, e)
            out[name] = ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__)
        else:
            e_ok.extras["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def score_all(
    model,
    x: torch.Tensor,
    expls: dict,
    *,
    steps: int = 16,
    baseline: Any = "blur",
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Faithfulness]:
    """Deletion and insertion curves of every explanation that ran."""
    out = {}
    ok = [(k, e) for k, e in expls.items() if isinstance(e, Explanation)]
    for i, (name, e) in enumerate(ok):
        if progress:
            progress(name, i, len(ok))
        out[name] = faithfulness(model, x, e, steps=steps, baseline=baseline)
    return out
