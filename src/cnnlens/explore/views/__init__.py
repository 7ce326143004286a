"""The explorer's views, one module per area: each view is a small function ``view(ex, p)`` of the
:class:`~cnnlens.explore.service.Explorer` and the request's parameters ``p`` (path and query parameters, and
what the route's reader took from the request: ``start`` for a JSON POST, ``body`` for an upload) that returns a
:class:`Context` (or, for an image or a download, its bytes or text).

The responder (:mod:`~cnnlens.explore.responder`) serves a :class:`Context` as its page or as its JSON, so a page
and its JSON come from the same view; the route table (:data:`cnnlens.explore.app.ROUTES`) says which URLs answer
which view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Context:
    """What a view answers: ``data`` is the JSON answer; the page renders ``template`` with ``data`` under
    ``name`` (or, with ``name=None``, ``data``'s keys), ``title`` and what ``extra()`` adds (page only: values
    the JSON does not carry, or checks that turn the page into a "computing" one)."""

    data: Any
    template: str | None = None
    title: str = ""
    name: str | None = "data"
    extra: Callable[[], dict] | None = None
    headers: dict[str, str] = field(default_factory=dict)
