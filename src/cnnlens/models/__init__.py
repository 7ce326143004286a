"""Models for cnnlens: ``load_model(name, weights)`` → a :class:`PixelModel` (input in [0, 1]) with a
:class:`ModelSpec`.

    >>> from cnnlens.models import load_model, known_models
    >>> known_models()
    ('efficientnet-lite0', 'digits-cnn')
    >>> model = load_model("digits-cnn")          # 1×32×32 grey digits, 10 classes
    >>> model.spec.pooled_layer
    'net.features'

See :mod:`cnnlens.models.loading` for every accepted name, and
:mod:`cnnlens.models.digits` for the digits data set.
"""

from __future__ import annotations

from .loading import PATTERNS, MissingFileError, known_models, load_model
from .spec import ModelSpec, Normalize, PixelModel

__all__ = ["load_model", "known_models", "ModelSpec", "PixelModel", "Normalize", "PATTERNS", "MissingFileError"]
