"""The one responder: it serves a view's answer as the page, its JSON, a PNG or a download, and maps the
explorer's errors to one-line answers.

A route of kind :data:`PAGE` answers its HTML page, or its JSON — the same view's :class:`~.views.Context` —
at its ``.json`` URL (``/cell/8/5.json``), with ``Accept: application/json`` or to a POST. Errors: 404 for anything
that does not exist, 4xx for a bad request, 503 while the scan runs (a page shows the scan's progress instead, or
a "computing" page polling the job); HTML for a page, JSON (``{"error", "status"}``) for everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..extras import require

require(
    "explore", "starlette", what="the explorer's web app"
)  # one line naming the extra, not a bare ModuleNotFoundError
from jinja2 import Environment  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response  # noqa: E402

from ..results import jsonable  # noqa: E402
from .errors import BadRequest, Computing, NotFound, NotReady  # noqa: E402
from .render import Urls  # noqa: E402
from .uploads import MAX_UPLOAD  # noqa: E402
from .views import Context  # noqa: E402

log = logging.getLogger(__name__)

#: what a route answers: a page (and its JSON), JSON, a PNG, a CSV download, or nothing (204)
PAGE, HTML, JSON, PNG, CSV, EMPTY = ("html", "json"), ("html",), ("json",), ("png",), ("csv",), ()
#: CORS-safelisted content types: a web page on another site may POST these to a local server
#: without asking first, so uploads must come as another type (the page sends application/octet-stream)
SIMPLE_TYPES = ("text/plain", "multipart/form-data", "application/x-www-form-urlencoded")

Reader = Callable[[Request], Awaitable[dict]]


@dataclass(frozen=True)
class Entry:
    """One row of the route table: ``path`` answers ``view`` for ``methods`` as ``kinds``; ``read`` takes what
    the view needs from the request besides its path and query parameters (a POST's consent, an upload)."""

    path: str
    view: Callable[[Any, dict], Any]
    methods: tuple[str, ...] = ("GET",)
    kinds: tuple[str, ...] = JSON
    read: Reader | None = None


def json_path(path: str) -> str:
    """A page's JSON URL: ``/cell/{r}/{c}`` → ``/cell/{r}/{c}.json``; ``/`` → ``/index.json``."""
    return "/index.json" if path == "/" else path + ".json"


def post_json(what: str) -> Reader:
    """A reader for a route a POST starts work on: ``start`` is True for a POST, which must say Content-Type
    application/json (not a request another site may send)."""

    async def read(request: Request) -> dict:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and kind != "application/json":
            raise BadRequest(f"start {what} with Content-Type application/json", 415)
        return {"start": request.method == "POST"}

    return read


async def upload_body(request: Request) -> dict:
    """The upload's bytes as ``body``: sent as application/octet-stream (or image/*), at most MAX_UPLOAD."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in SIMPLE_TYPES:
        raise BadRequest(
            f"send the image as the request body with Content-Type application/octet-stream (or image/*), not {kind}",
            415,
        )
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_UPLOAD:
        raise BadRequest(f"the upload is {int(size) / 2**20:.1f} MB; the limit is {MAX_UPLOAD // 2**20} MB", 413)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_UPLOAD:
            raise BadRequest(f"the upload is over the limit of {MAX_UPLOAD // 2**20} MB", 413)
        chunks.append(chunk)
    return {"body": b"".join(chunks)}


def prefers_json(accept: str) -> bool:
    """Whether an Accept header ranks application/json above text/html (a browser's ranks HTML first)."""
    q: dict[str, float] = {}
    for part in accept.lower().split(","):
        kind, *params = (s.strip() for s in part.split(";"))
        weight = 1.0
        for prm in params:
            key, _, value = prm.partition("=")
            if key.strip() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        q.setdefault(kind, weight)
    return q.get("application/json", 0.0) > q.get("text/html", 0.0)


class Responder:
    """Turns a route table entry into a Starlette endpoint over ``explorer``; renders pages with ``env``."""

    def __init__(self, explorer: Any, env: Environment, urls: Urls):
        self.ex, self.env, self.urls = explorer, env, urls

    def endpoint(self, entry: Entry, as_json: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of ``entry`` (``as_json``: its page's JSON URL)."""

        async def endpoint(request: Request) -> Response:
            fmt = entry.kinds[0] if entry.kinds else "empty"
            if fmt == "html" and "json" in entry.kinds:
                negotiated = request.method == "POST" or prefers_json(request.headers.get("accept", ""))
                fmt = "json" if as_json or negotiated else "html"
            try:
                params = {**request.query_params, **request.path_params}
                if entry.read is not None:
                    params.update(await entry.read(request))
                response = await run_in_threadpool(self.answer, entry, fmt, params)
            except (NotFound, Computing, NotReady, ValueError, TypeError) as e:
                response = self.error(fmt, e)
            if entry.kinds == PAGE:
                response.headers["Vary"] = "Accept"
            return response

        endpoint.__name__ = getattr(entry.view, "__name__", "endpoint")
        return endpoint

    def answer(self, entry: Entry, fmt: str, params: dict) -> Response:
        """Run the view and serve its answer as ``fmt`` (in a worker thread: views and pages may wait on the model)."""
        got = entry.view(self.ex, params)
        ctx = got if isinstance(got, Context) else Context(got)
        if fmt == "html":
            data = {ctx.name: ctx.data} if ctx.name else dict(ctx.data)
            return self.page(ctx.template or "error.html.j2", ctx.title, **data, **(ctx.extra() if ctx.extra else {}))
        if fmt == "png":
            return Response(ctx.data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
        if fmt == "csv":
            return Response(ctx.data, media_type="text/csv; charset=utf-8", headers=ctx.headers)
        if fmt == "empty":
            return Response(status_code=204)
        return JSONResponse(jsonable(ctx.data), headers=ctx.headers)

    def page(self, template: str, title: str, status_code: int = 200, **values) -> HTMLResponse:
        html = self.env.get_template(template).render(urls=self.urls, title=title, **values)
        return HTMLResponse(html, status_code=status_code)

    def error(self, fmt: str, e: Exception) -> Response:
        """The explorer's errors as one-line answers: JSON, or for a page an HTML page (while the scan runs: its
        progress; while a job runs: a "computing" page polling it)."""
        if isinstance(e, NotFound):
            status, msg = 404, str(e)
        elif isinstance(e, Computing):
            if fmt == "html":
                return self.page("computing.html.j2", "computing", message=str(e), url=e.url)
            status, msg = 503, str(e)
        elif isinstance(e, NotReady):
            status, msg = 503, str(e)
        elif isinstance(e, BadRequest):
            status, msg = e.status, str(e)
        else:
            status, msg = 400, str(e).splitlines()[0] if str(e) else type(e).__name__
        if fmt == "html":
            if status == 503:
                return self.page("scanning.html.j2", "scanning", status=self.ex.status())
            return self.page("error.html.j2", "error", status_code=status, status=status, message=msg)
        return JSONResponse({"error": msg, "status": status}, status_code=status)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own errors (no such route, a method not allowed) in the same one-line shape."""
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        msg = "no such page" if code == 404 else (getattr(exc, "detail", None) or "error")
        path = request.url.path
        if path.startswith(("/api/", "/img/")) or path.endswith(".json"):
            return JSONResponse({"error": msg, "status": code}, status_code=code)
        if path.startswith("/static/"):
            return PlainTextResponse(msg, status_code=code)
        return self.page("error.html.j2", "error", status_code=code, status=code, message=msg)

    async def server_error(self, request: Request, exc: Exception) -> Response:
        log.exception("explorer: %s failed", request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})", "status": 500}, status_code=500)
