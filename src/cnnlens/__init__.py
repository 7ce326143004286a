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

#: names importable from cnnlens (name → the submodule holding it), loaded on first use so that
#: `import cnnlens` (and `cnnlens --help`) does not import torch
_LAZY = {
    "Explanation": "results",
    "Result": "results",
    "Batch": "scanning",
    "scan": "scanning",
    "LayerTap": "tap",
    "find_last_spatial_layer": "tap",
    "resolve_layer": "tap",
    "Target": "targets",
    "as_target": "targets",
    "load_model": "models",
    "ModelSpec": "models",
    "PixelModel": "models",
    "known_models": "models",
    "load_images": "data",
    "as_dataset": "data",
    "evaluate": "evaluation",
    "EvaluationResult": "evaluation",
    "EvaluationAccumulator": "evaluation",
    "Report": "report",
}

#: the documented submodules, each reachable as an attribute (``cnnlens.metrics`` without importing it first)
SUBMODULES = (
    "attribution",
    "inside",
    "attacks",
    "metrics",
    "models",
    "data",
    "evaluation",
    "report",
    "viz",
    "results",
    "targets",
    "tap",
    "train",
    "explore",
    "microscope_draw",
    "microscope_site",
)

__all__ = sorted(_LAZY) + ["SUBMODULES", "__version__"]


def __getattr__(name):  # lazy: keep `import cnnlens` light
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cnnlens' has no attribute {name!r}")


def __dir__():
    """The public API and the submodules, for ``dir()`` and tab completion (no imported helper names)."""
    return sorted(set(__all__) | set(SUBMODULES))
