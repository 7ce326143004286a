"""cnnlens: explain what an image CNN does.

    import cnnlens
    model = cnnlens.load_model("efficientnet-lite0")   # input RGB in [0, 1], N×3×H×W
    x = cnnlens.load_images(["cat.jpg"], model)
    r = cnnlens.evaluate(cnnlens.load_model("digits-cnn"), "digits", topk=(1, 3))

Sub-packages: ``cnnlens.attribution`` (why this prediction), ``cnnlens.inside``
(what is inside), ``cnnlens.attacks`` (how it breaks).
"""

from __future__ import annotations

from .results import Explanation, Result
from .scan import Batch, scan
from .tap import LayerTap, find_last_spatial_layer, resolve_layer
from .targets import Target, as_target

__version__ = "0.1.0"


def __getattr__(name):  # lazy: keep `import cnnlens` light
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
