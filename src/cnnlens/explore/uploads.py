"""Uploaded images: decoded by Pillow (with its decompression-bomb limit), kept as safetensors, predicted once.

Nothing from a request is unpickled. An upload's ref is ``u`` + 16 hex digits of its SHA-256; it is kept in
``uploads/<model hash>/<ref>.safetensors`` (preprocessed for the model) and its prediction in the results folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import warnings

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors.torch import save_file
from torch import nn

from ..data import Preprocess
from ..files import atomic_write
from ..tap import LayerTap
from .errors import BadRequest
from .workspace import Workspace

#: the largest upload accepted, in bytes
MAX_UPLOAD = 20 * 1024 * 1024


def decode_upload(data: bytes, model: nn.Module) -> torch.Tensor:
    """Image bytes → 1×C×H×W in [0, 1] for ``model`` (Pillow; bomb, truncation and non-images → BadRequest)."""
    if len(data) > MAX_UPLOAD:
        raise BadRequest(f"the upload is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD // 2**20} MB", 413)
    if not data:
        raise BadRequest("the upload is empty; send an image file (PNG, JPEG, ...)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own text names twice the limit for its error and the limit for its warning: name one limit
        got = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(got.group(1)):,} pixels" if got else "more pixels than the limit"
        raise BadRequest(
            f"the image is too large to decode safely ({size}); send an image of at most "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's decompression-bomb limit)",
            413,
        ) from None
    except UnidentifiedImageError:
        raise BadRequest(
            "the upload is not an image Pillow can read; send a PNG, JPEG, BMP, WebP, ... file", 415
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadRequest(
            f"the image is corrupt or truncated ({str(e).strip() or type(e).__name__}); send the whole file"
        ) from None
    try:
        x = Preprocess.for_model(model)(im)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"cannot use this image: {e}") from None
    return x.unsqueeze(0).float().contiguous()


class Uploads:
    """Keep uploaded images and predict their classes (one forward in the worker, cached)."""

    def __init__(self, ws: Workspace):
        self.ws = ws

    def upload(self, data: bytes) -> str:
        """Decode and keep an uploaded image; returns its ref (``u`` + 16 hex digits of its SHA-256)."""
        ws = self.ws
        ws.ready()
        x = decode_upload(data, ws.model)
        ref = "u" + hashlib.sha256(data).hexdigest()[:16]
        path = ws.upload_dir / f"{ref}.safetensors"
        if not path.is_file():
            ws.upload_dir.mkdir(parents=True, exist_ok=True)
            tmp = ws.upload_dir / f".{ref}.{os.getpid()}.{threading.get_ident()}.tmp"
            save_file({"x": x}, str(tmp))
            os.replace(tmp, path)
        return ref

    def prediction(self, ref: str) -> dict:
        """The model's classes for the upload ``ref`` (validated): pred, second, conf, margin, top-k."""
        ws = self.ws
        path = ws.results / ref / "prediction.json"
        if path.is_file():
            return json.loads(path.read_text())

        def run(report):
            x = ws.device_tensor(ref)
            with LayerTap(ws.model) as tap, torch.no_grad():
                logits = tap.run(x).float().cpu()
            order = torch.sort(-logits[0], stable=True).indices
            p = logits[0].softmax(0)
            pred, second = int(order[0]), int(order[1] if len(order) > 1 else order[0])
            top = order[: ws.k]
            out = {
                "pred": pred,
                "second": second,
                "conf": float(p[pred]),
                "margin": float(p[pred] - p[second]),
                "top_classes": top.tolist(),
                "top_probs": [round(float(p[c]), 6) for c in top],
            }
            atomic_write(path, json.dumps(out).encode())
            return out

        return ws.worker.run(f"predict/{ref}", run)
