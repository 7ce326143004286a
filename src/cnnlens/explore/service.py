"""The explorer's backend, by area, over one :class:`~cnnlens.explore.workspace.Workspace` (the model, the
dataset, the store, the cache and the one worker thread that runs everything touching the model).

===============  =============================================================================
area             serves
===============  =============================================================================
``samples``      the overview, the confusion matrix, a cell's gallery, a sample, its images
``uploads``      uploaded images (decoded, kept, predicted)
``explanations`` an attribution method on a sample (a polled job), its drawing
``attacks``      the smallest-ε attack on a sample (a polled job of its own), its drawing
``units``        the layers shown, the microscope scan, a layer, a unit, a sample's building blocks
``features``     feature visualisations of a unit and of a whole layer
``board``        the leaderboard
===============  =============================================================================

:class:`Explorer` composes them; its methods (what the CLI, the static export and the tests call) forward to
the areas, and the web views call the areas directly. Every ref, class, method, layer and target is validated
before anything is read; files are only ever read from the cache directory under names built from validated
parts, and nothing from a request is unpickled.

Cache layout (``cache/``): ``scan-<key>.sqlite`` (the store), ``uploads/<model hash>/<ref>.safetensors``,
``results/<model hash>-<data hash>/<ref>/<what>.png|.json``, ``fv/<model hash>/<layer>/<channel>-<key>.npz`` (feature
visualisations, :mod:`cnnlens.inside.fvcache`, shared by every dataset); each file written atomically.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .attacks import Attacks
from .errors import BadRequest, Computing, NotFound, NotReady
from .explanations import ACTIONS, FAITH_STEPS, SETTINGS, Explanations, check_action
from .featurevis import FV_GROUP, FeatureVis
from .leaderboard import LEADERBOARD_METHODS, LEADERBOARD_METRICS, Leaderboard
from .samples import Samples, pair_figure
from .store import Store
from .units import BLOCKS_K, INFLUENCE_IMAGES, UNIT_IMAGES, UNIT_K, Units
from .uploads import MAX_UPLOAD, Uploads, decode_upload
from .workspace import Workspace

__all__ = [
    "ACTIONS",
    "BLOCKS_K",
    "FAITH_STEPS",
    "FV_GROUP",
    "INFLUENCE_IMAGES",
    "LEADERBOARD_METHODS",
    "LEADERBOARD_METRICS",
    "MAX_UPLOAD",
    "PAGE_SIZE",
    "SETTINGS",
    "UNIT_IMAGES",
    "UNIT_K",
    "BadRequest",
    "Computing",
    "Explorer",
    "NotFound",
    "NotReady",
    "decode_upload",
    "pair_figure",
]

#: samples per gallery page
PAGE_SIZE = 24

#: Explorer's own names for the areas' public ones: area -> names
FORWARD: dict[str, tuple[str, ...]] = {
    "ws": (
        "model", "data", "data_label", "dataset", "n", "cache", "results", "upload_dir", "worker", "model_name",
        "model_batch", "batch_size", "device", "k", "page_size", "mhash", "dhash", "class_names",
        "start_scan", "wait_ready", "status", "check_ref", "check_class", "tensor", "device_tensor", "close",
    ),
    "samples": (
        "evaluation", "overview", "confusion_table", "confusion_csv", "cell", "sample", "resolve_target",
        "image_png", "pair_png",
    ),
    "uploads": ("upload",),
    "explanations": ("method", "method_png"),
    "attacks": ("attack", "attack_png"),
    "units": (
        "unit_layers", "check_layer", "check_channel", "microscope", "micro_scan", "layers", "layer", "top_png",
        "unit_dir", "influence_images", "present_classes", "unit", "unit_png", "blocks",
    ),
    "features": ("feature_vis", "feature_views", "layer_fv", "cancel_layer_fv"),
    "board": ("leaderboard",),
}  # fmt: skip
_AREA = {name: area for area, names in FORWARD.items() for name in names}


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
        self.ws = ws = Workspace(
            model,
            data,
            cache_dir,
            batch_size=batch_size,
            device=device,
            k=k,
            page_size=page_size,
            data_label=data_label,
        )
        self.uploads = Uploads(ws)
        self.samples = Samples(ws, self.uploads)
        self.attacks = Attacks(ws, self.samples)
        self.explanations = Explanations(ws, self.samples, self.attacks)
        self.units = Units(ws)
        self.features = FeatureVis(ws, self.units)
        self.board = Leaderboard(ws)

    def __getattr__(self, name: str) -> Any:
        area = self.__dict__.get(_AREA.get(name, ""))
        if area is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(area, name)

    @property
    def store(self) -> Store | None:
        """The store, once the scan is done (the CLI sets it after a scan of its own)."""
        return self.ws.store

    @store.setter
    def store(self, store: Store | None) -> None:
        self.ws.store = store

    @property
    def leaderboard_n(self) -> int:
        """The images the leaderboard scores (the dataset's first)."""
        return self.board.n

    @leaderboard_n.setter
    def leaderboard_n(self, n: int) -> None:
        self.board.n = n

    check_action = staticmethod(check_action)
