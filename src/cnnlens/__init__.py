"""cnnlens: explain what an image CNN does.

    import cnnlens
    model = cnnlens.load_model("efficientnet-lite0")   # input RGB in [0, 1], N×3×H×W
    x = cnnlens.load_images(["cat.jpg"], model)
    r = cnnlens.evaluate(cnnlens.load_model("digits-cnn"), "digits", topk=(1, 3))

Sub-packages: ``cnnlens.attribution`` (why this prediction), ``cnnlens.inside``
(what is inside), ``cnnlens.attacks`` (how it breaks).
"""

from __future__ import annotations

__version__ = "0.1.0"

#: names importable from cnnlens, loaded on first use so that `import cnnlens` (and `cnnlens --help`)
#: does not import torch
_LAZY = {
    "Explanation": "results", "Result": "results", "Batch": "scan", "scan": "scan", "LayerTap": "tap",
    "find_last_spatial_layer": "tap", "resolve_layer": "tap", "Target": "targets", "as_target": "targets",
}


def __getattr__(name):  # lazy: keep `import cnnlens` light
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in ("load_model", "ModelSpec", "PixelModel", "known_models"):
        from . import models

        return getattr(models, name)
    if name in ("load_images", "as_dataset"):
        from . import data

        return getattr(data, name)
    if name in ("evaluate", "EvaluationResult", "EvaluationAccumulator"):
        from . import evaluation

        return getattr(evaluation, name)
    if name in ("attribution", "inside", "attacks", "report", "viz"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cnnlens' has no attribute {name!r}")


__all__ = [
    "Batch", "Explanation", "LayerTap", "Result", "Target", "as_target", "find_last_spatial_layer",
    "resolve_layer", "scan", "load_model", "load_images", "evaluate",
]
