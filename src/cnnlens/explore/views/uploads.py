"""Views of uploads: the page to drop an image on, and the upload itself (its body read by the responder)."""

from __future__ import annotations

from ..uploads import MAX_UPLOAD
from . import Context


def upload_page(ex, p) -> Context:
    return Context({"limit": MAX_UPLOAD // 2**20}, "upload.html.j2", "upload", None)


def upload(ex, p) -> Context:
    ref = ex.uploads.upload(p["body"])
    return Context({"ref": ref, "url": f"/sample/{ref}"})
