"""Attribution in the report: running several methods and scoring them, the tables and notes of a section.

Shared by ``cnnlens explain`` and the demo (:mod:`cnnlens.demo.attribution`); the figures are
:mod:`cnnlens.figures.attribution`.
"""

from __future__ import annotations

import html
import logging
import time
from typing import Any, Callable, Sequence

import torch

from ..registry import method_info, title_of
from ..results import Explanation
from .faithfulness import Faithfulness, faithfulness

log = logging.getLogger(__name__)


FAITH_INTRO = (
    "<b>How faithful is a map?</b> <i>Deletion</i> (Petsiuk et al. 2018): replace the pixels by a blurred copy in "
    "order of importance and re-score; a map that found what the model uses makes the class probability fall fast "
    "(low area under the curve). <i>Insertion</i>: start from the blurred image and put the pixels back in the same "
    "order (high area = faithful). <i>Model randomisation</i> (Adebayo et al. 2018): re-initialise the layers of a "
    "copy of the model from the top down and rank-correlate (Spearman) each map with the trained model's: a map "
    "that explains the model must change when its weights do.")


def _log_cause(name: str, e: Exception) -> None:
    """A bridged library's own error (chained as the cause of the one-line one), for ``--debug`` / ``-v``."""
    if e.__cause__ is not None:
        log.info("%s: the bridged library's own error", name, exc_info=e.__cause__)


def run_methods(model, x: torch.Tensor, methods: Sequence[str], target: Any = "predicted", *,
                layer: Any = None, settings: dict | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> dict[str, Explanation | Exception]:
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
            out[name] = fn(model, x, target=target, **kw)
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
            out[name].extras["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def score_all(model, x: torch.Tensor, expls: dict, *, steps: int = 16, baseline: Any = "blur",
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, Faithfulness]:
    """Deletion and insertion curves of every explanation that ran."""
    out = {}
    ok = [(k, e) for k, e in expls.items() if isinstance(e, Explanation)]
    for i, (name, e) in enumerate(ok):
        if progress:
            progress(name, i, len(ok))
        out[name] = faithfulness(model, x, e, steps=steps, baseline=baseline)
    return out


GUIDED_NOTE = (
    "<p class=\"note\"><b>⚠ Sanity check.</b> Guided backprop barely changes when the network's top layers are "
    "re-initialised (Adebayo et al. 2018, “Sanity checks for saliency maps”; reproduced on EfficientNet-Lite0 in "
    "“How far to trust each map”, ρ ≈ 1 with the trained map): much of what it shows is image structure — edges "
    "passed through the ReLU masks — rather than what the model uses. Guided Grad-CAM inherits that detail; only "
    "its envelope, the Grad-CAM factor, depends on the model. Read the fine structure of both as a sharpened "
    "picture of the input, not as evidence for the class.</p>")


def faith_table(faith: dict, names: Sequence[str]) -> tuple[list[list[Any]], list[str]]:
    header = ["method"] + [f"{n} del / ins" for n in names] + ["mean deletion AUC ↓", "mean insertion AUC ↑"]
    rows = []
    for k, f in faith.items():
        cells = [f"{float(f.deletion_auc[i]):.3f} / {float(f.insertion_auc[i]):.3f}" for i in range(len(names))]
        rows.append([title_of(k)] + cells + [round(float(f.deletion_auc.mean()), 4),
                                                   round(float(f.insertion_auc.mean()), 4)])
    return rows, header


def summary(e: Explanation, f: Faithfulness | None, i: int) -> dict:
    d = {"method": e.method, "class": int(e.classes[i]), "layer": e.layer, "settings": e.settings}
    if f is not None:
        d["deletion_auc"] = float(f.deletion_auc[i])
        d["insertion_auc"] = float(f.insertion_auc[i])
    if "completeness_gap" in e.extras:
        d["completeness_gap"] = float(e.extras["completeness_gap"][i])
    if e.extras.get("completeness_note"):
        d["completeness"] = e.extras["completeness_note"]
    return d


# -- the demo -------------------------------------------------------------------------------------


def method_note(m: str, e: Explanation) -> str:
    """The paragraph under a method's maps: the completeness warning, if any, and what the method ran with."""
    return completeness_html(e) + _method_note(m, e)


def completeness_html(e: Explanation) -> str:
    """The completeness warning as a paragraph (empty when the attributions add up or were not checked)."""
    from .completeness import incomplete_note

    warn = incomplete_note(e.extras)
    if not warn:
        return ""
    gap = e.extras["completeness_gap"]
    worst = float(gap.max())
    return (f"<p class=\"warning\"><b>⚠ {html.escape(warn)}</b>: Σ attributions misses what the method promises "
            f"by {'an unbounded amount' if worst == float('inf') else f'{worst:.1%}'} "
            f"(tolerance {e.extras['completeness_tolerance']:.0%}).</p>")


def _method_note(m: str, e: Explanation) -> str:
    if m == "integrated_gradients":
        gap = e.extras["completeness_gap"].abs()
        tot = (e.extras["score"] - e.extras["baseline_score"]).abs()
        return (f"<p>Completeness: Σ attributions − (S(x) − S(x')) is at most {float(gap.max()):.3g} "
                f"(|S(x) − S(x')| up to {float(tot.max()):.3g}) with {e.settings['steps']} steps.</p>")
    if m == "cam" and e.raw is not None:
        return (f"<p>Check: the mean of each raw {e.raw.shape[-2]}×{e.raw.shape[-1]} map equals its score minus "
                f"the bias to within {float((e.raw.mean((1, 2)) - (e.extras['score'] - e.extras['bias'])).abs().max()):.2g}.</p>")
    if m == "occlusion":
        s = e.settings
        how = ("recomputing only each layer's region the square reaches (incremental inference; the same values as "
               "running the whole model per position)" if s.get("path") == "incremental" else
               f"running the whole model per position ({html.escape(str(s.get('full_reason') or 'full re-inference'))})")
        return (f"<p>{s['positions'][0]}×{s['positions'][1]} positions of a square of {s['window'][0]}×{s['window'][1]} "
                f"pixels, stride {s['stride'][0]}, fill {html.escape(str(s['fill']))}: computed by {how}.</p>")
    if m == "augmented_gradcam":
        s = e.settings
        return (f"<p>Solved on a {s['size'][0]}×{s['size'][1]} grid from {s['augmentations']} augmentations "
                f"(±{s['max_angle']}°, ±{s['max_shift']:.0%} shifts) of the {s['grid'][0]}×{s['grid'][1]} Grad-CAM; "
                f"λ = {s['lam']:.3g}, μ = {s['mu']:.3g}, {s['steps']} Adam steps.</p>")
    return ""
