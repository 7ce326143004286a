"""A disk cache of feature visualisations: one file per (model weights, layer, channel, settings).

:func:`cnnlens.inside.maximize_channels` takes ``cache=DIR`` (or a :class:`FeatureCache`):
a channel found there is loaded, the others are rendered in one optimisation and
stored, so a second run — the static microscope site built again, a unit page visited
again in the explorer — computes nothing.

The key of a channel is the SHA-256 of its model's weights (:func:`model_hash`: every
state_dict tensor's name, dtype, shape and bytes, and the model's spec), the layer, the
channel, every setting that changes the picture (steps, size, lr, parameterisation,
seed, transformation robustness and its transforms, diversity and its weight,
regularisers, redirected ReLU, ...) and :data:`VERSION` (raised when the optimisation
itself changes). A channel's result does not depend on the other channels rendered
with it (each image starts from the noise a render of its channel alone would draw,
see ``maximize(noise=...)``), so channels rendered together are stored apart.

Files: ``DIR/<model hash>/<layer>/<channel>-<key>.npz`` holding float32 arrays
(``images``, ``activation``, ``start``, ``objective``), read with
``allow_pickle=False`` — nothing is ever unpickled — and written atomically (a temporary
file renamed into place). A file that cannot be read, or holds the wrong shapes, is
rendered again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import atomic_write

log = logging.getLogger(__name__)

#: raised when the optimisation changes what it draws (old files are then never read again)
VERSION = 2

FIELDS = ("images", "activation", "start", "objective")


def model_hash(model: nn.Module) -> str:
    """SHA-256 of the state_dict (names, dtypes, shapes, bytes) and the spec (class names, input size, ...)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(repr(getattr(model, "spec", None)).encode())
    return h.hexdigest()


def _canon(v: Any) -> Any:
    """A JSON value standing for a setting (tensors and arrays by dtype, shape and a hash of their bytes)."""
    if isinstance(v, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(v).detach().cpu().contiguous()
        return {
            "tensor": str(t.dtype),
            "shape": list(t.shape),
            "sha256": hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest(),
        }
    if isinstance(v, dict):
        return {str(k): _canon(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    if isinstance(v, float):
        return repr(v)  # exact: 0.1 and 0.1000000001 are different settings
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return f"{type(v).__qualname__}:{v!r}"


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)


class FeatureCache:
    """Feature visualisations of one model on disk (see the module's doc).

    >>> cache = FeatureCache("fv-cache", model)                       # doctest: +SKIP
    >>> maximize_channels(model, "features.4", range(16), cache=cache)  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, model: nn.Module | None = None, *, mhash: str | None = None):
        if mhash is None:
            if model is None:
                raise TypeError("FeatureCache needs the model (or its model_hash as mhash=)")
            mhash = model_hash(model)
        self.root = Path(root).expanduser()
        self.mhash = str(mhash)
        self.hits = 0
        self.misses = 0

    def key(self, layer: str, channel: int, settings: dict) -> str:
        blob = json.dumps(
            {
                "version": VERSION,
                "model": self.mhash,
                "layer": layer,
                "channel": int(channel),
                "settings": _canon(settings),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, layer: str, channel: int, key: str) -> Path:
        return self.root / self.mhash[:16] / _slug(layer) / f"{int(channel)}-{key[:24]}.npz"

    def load(self, layer: str, channel: int, key: str, shapes: dict) -> dict | None:
        """The stored arrays as float32 tensors, or None (missing, unreadable or of the wrong shapes)."""
        f = self.path(layer, channel, key)
        if not f.is_file():
            self.misses += 1
            return None
        try:
            with np.load(f, allow_pickle=False) as z:
                out = {k: torch.from_numpy(np.array(z[k], dtype=np.float32)) for k in FIELDS}
            for k in FIELDS:
                if tuple(out[k].shape) != tuple(shapes[k]):
                    raise ValueError(f"{k} has shape {tuple(out[k].shape)}, expected {tuple(shapes[k])}")
            if not bool(torch.isfinite(out["images"]).all()):
                raise ValueError("images hold non-finite values")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            log.warning(
                "feature visualisation cache file %s is unreadable (%s); rendering it again",
                f,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
            )
            self.misses += 1
            return None
        self.hits += 1
        return out

    def save(self, layer: str, channel: int, key: str, arrays: dict) -> None:
        """Write the arrays atomically: a temporary file in the same folder, renamed into place."""
        arrays = {k: torch.as_tensor(arrays[k]).detach().float().cpu().numpy() for k in FIELDS}
        atomic_write(self.path(layer, channel, key), lambda fh: np.savez(fh, **arrays))


def as_cache(cache, model: nn.Module) -> FeatureCache | None:
    """None, a :class:`FeatureCache`, or a folder (str / PathLike) for one."""
    if cache is None or isinstance(cache, FeatureCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return FeatureCache(cache, model)
    raise TypeError(f"cache must be a folder (str or Path) or a FeatureCache, got {type(cache).__name__}")
