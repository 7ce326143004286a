"""The explorer's web app: Starlette routes over an :class:`~cnnlens.explore.service.Explorer`.

Every route is thin: validate the request, call the explorer, render a template or answer
JSON / PNG. Every page has a JSON twin under ``/api`` (``/api/overview``, ``/api/cell/R/C``,
``/api/sample/REF``, ``/api/status``); images are PNG under ``/img``. Errors are one line:
404 for anything that does not exist, 4xx for a bad upload, 503 while the scan runs.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from ..extras import require

require(
    "explore", "starlette", what="the explorer's web app"
)  # one line naming the extra, not a bare ModuleNotFoundError
from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response  # noqa: E402
from starlette.routing import Mount, Route  # noqa: E402
from starlette.staticfiles import StaticFiles  # noqa: E402

from ..results import jsonable
from .service import ACTIONS, MAX_UPLOAD, SETTINGS, BadRequest, Computing, Explorer, NotFound, NotReady

log = logging.getLogger(__name__)

HERE = Path(__file__).parent


def templates():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("cnnlens.explore", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * float(v):.1f} %"
    env.filters["f3"] = lambda v: "–" if v is None else f"{float(v):.3f}"
    return env


class Urls:
    """Links of the live app, or of a static export (``static=True``: files next to each other, no samples)."""

    def __init__(self, static: bool = False):
        self.static = static

    def home(self) -> str:
        return "index.html" if self.static else "/"

    def asset(self, name: str) -> str:
        return f"static/{name}" if self.static else f"/static/{name}"

    def cell(self, r: int, c: int, page: int = 1, sort: str | None = None, order: str | None = None) -> str:
        if self.static:
            return f"cell-{r}-{c}-{page}.html"
        q = [f"page={page}"] if page != 1 else []
        if sort:
            q.append(f"sort={sort}")
        if order:
            q.append(f"order={order}")
        return f"/cell/{r}/{c}" + ("?" + "&".join(q) if q else "")

    def sample(self, ref: str) -> str | None:
        return None if self.static else f"/sample/{ref}"

    def image(self, ref: str) -> str:
        return f"img/sample-{ref}.png" if self.static else f"/img/sample/{ref}.png"

    def pair(self, ref: str, a: int, b: int) -> str:
        return f"img/pair-{ref}-{a}-{b}.png" if self.static else f"/img/sample/{ref}/pair.png?a={a}&b={b}"


BLUE, ORANGE = (33, 102, 172), (214, 96, 77)


def colour(v: float, rgb: tuple[int, int, int] = BLUE) -> str:
    """A white → ``rgb`` background for a value in [0, 1] (the matrix cells)."""
    v = max(0.0, min(1.0, float(v)))
    r, g, b = (round(255 + (a - 255) * v) for a in rgb)
    return f"rgb({r},{g},{b})"


def render_overview(env, ex_overview: dict, urls: Urls) -> str:
    """The overview page. Matrix colours: the diagonal in blue, the confusions in red, each on its own scale
    (the largest diagonal / off-diagonal value is full colour; any confusion gets at least a light tint)."""
    o = ex_overview
    raw, norm = o["confusion"], o["confusion_normalized"]
    m = len(raw)
    scale = {}
    for key, M in (("raw", raw), ("norm", norm)):
        diag = max([M[i][i] for i in range(m)] + [1e-12])
        off = max([M[i][j] for i in range(m) for j in range(m) if i != j] + [1e-12])
        scale[key] = (diag, off)

    def bg(key, v, i, j):
        if v == 0:
            return "rgb(255,255,255)"
        diag, off = scale[key]
        return colour(v / diag) if i == j else colour(0.15 + 0.85 * v / off, ORANGE)

    cells = [
        [
            {"raw": v, "norm": norm[i][j], "bg_raw": bg("raw", v, i, j), "bg_norm": bg("norm", norm[i][j], i, j)}
            for j, v in enumerate(row)
        ]
        for i, row in enumerate(raw)
    ]
    return env.get_template("overview.html.j2").render(o=o, cells=cells, urls=urls, title="overview")


def render_cell(env, cell: dict, urls: Urls, names) -> str:
    return env.get_template("cell.html.j2").render(
        c=cell, urls=urls, title=f"{cell['true_name']} → {cell['pred_name']}", names=names
    )


#: CORS-safelisted content types: a web page on another site may POST these to a local server
#: without asking first, so uploads must come as another type (the page sends application/octet-stream)
_SIMPLE_TYPES = ("text/plain", "multipart/form-data", "application/x-www-form-urlencoded")


def make_app(explorer: Explorer, allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app serving ``explorer`` (start its scan with ``explorer.start_scan()``).

    ``allowed_hosts``: the Host headers answered (others get 400), e.g. ``["127.0.0.1", "localhost"]``
    for a server on the loopback, so a web page cannot reach it through DNS rebinding.
    """
    env = templates()
    urls = Urls()
    ex = explorer

    def page(title: str, body_tpl: str, **kw) -> HTMLResponse:
        return HTMLResponse(env.get_template(body_tpl).render(urls=urls, title=title, **kw))

    def computing(message: str, url: str) -> HTMLResponse:
        return HTMLResponse(
            env.get_template("computing.html.j2").render(urls=urls, title="computing", message=message, url=url)
        )

    def guarded(kind: str):
        """Map the explorer's errors to one-line answers: JSON for ``api``/``img``, HTML for pages."""

        def deco(fn):
            @functools.wraps(fn)
            async def wrapper(request: Request):
                try:
                    return await fn(request)
                except NotFound as e:
                    status, msg = 404, str(e)
                except Computing as e:
                    if kind == "page":
                        return computing(str(e), e.url)
                    status, msg = 503, str(e)
                except NotReady as e:
                    status, msg = 503, str(e)
                except BadRequest as e:
                    status, msg = e.status, str(e)
                except (ValueError, TypeError) as e:
                    status, msg = 400, str(e).splitlines()[0] if str(e) else type(e).__name__
                if kind == "page":
                    if status == 503:
                        return page("scanning", "scanning.html.j2", status=ex.status())
                    return HTMLResponse(
                        env.get_template("error.html.j2").render(urls=urls, title="error", status=status, message=msg),
                        status_code=status,
                    )
                return JSONResponse({"error": msg, "status": status}, status_code=status)

            return wrapper

        return deco

    async def run(fn, *args):
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(fn, *args)

    # -- pages ------------------------------------------------------------------
    @guarded("page")
    async def overview(request: Request):
        o = await run(ex.overview)
        return HTMLResponse(render_overview(env, o, urls))

    @guarded("page")
    async def cell(request: Request):
        q = request.query_params
        c = await run(
            lambda: ex.cell(
                request.path_params["r"],
                request.path_params["c"],
                q.get("page", "1"),
                q.get("sort", "confidence"),
                q.get("order"),
            )
        )
        return HTMLResponse(render_cell(env, c, urls, ex.class_names))

    @guarded("page")
    async def sample(request: Request):
        s = await run(ex.sample, request.path_params["ref"])
        return page(
            f"sample {s['ref']}",
            "sample.html.j2",
            s=s,
            actions=ACTIONS,
            names=ex.class_names,
            settings=SETTINGS,
            unit_layers=await run(ex.unit_layers),
        )

    @guarded("page")
    async def layers_page(request: Request):
        return page("units", "layers.html.j2", o=await run(ex.layers))

    @guarded("page")
    async def layer_page(request: Request):
        lay = await run(ex.layer, request.path_params["name"])
        return page(f"layer {lay['name']}", "layer.html.j2", layer=lay)

    @guarded("page")
    async def unit_page(request: Request):
        p = request.path_params
        u = await run(ex.unit, p["name"], p["channel"])
        if u["status"] == "error":
            raise BadRequest(f"unit {u['layer']}/{u['channel']} failed: {u['error']}", 500)
        if u["status"] != "done":
            return computing(
                f"computing unit {u['layer']}/{u['channel']} ({u['status']})", f"/api/unit/{u['layer']}/{u['channel']}"
            )
        lay = await run(ex.layers)
        row = next(r for r in lay["layers"] if r["name"] == u["layer"])
        return page(f"unit {u['layer']}/{u['channel']}", "unit.html.j2", u=u, layer=row, names=ex.class_names)

    @guarded("page")
    async def leaderboard_page(request: Request):
        return page("leaderboard", "leaderboard.html.j2", lb=await run(ex.leaderboard))

    async def upload_page(request: Request):
        return page("upload", "upload.html.j2", limit=MAX_UPLOAD // 2**20)

    # -- JSON -------------------------------------------------------------------
    async def api_status(request: Request):
        return JSONResponse(ex.status())

    @guarded("api")
    async def api_overview(request: Request):
        return JSONResponse(jsonable(await run(ex.overview)))

    @guarded("api")
    async def api_confusion_json(request: Request):
        return JSONResponse(
            jsonable(await run(ex.confusion_table)),
            headers={"Content-Disposition": 'attachment; filename="confusion.json"'},
        )

    @guarded("api")
    async def api_confusion_csv(request: Request):
        from starlette.responses import Response

        return Response(
            await run(ex.confusion_csv),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="confusion.csv"'},
        )

    @guarded("api")
    async def api_cell(request: Request):
        q = request.query_params
        c = await run(
            lambda: ex.cell(
                request.path_params["r"],
                request.path_params["c"],
                q.get("page", "1"),
                q.get("sort", "confidence"),
                q.get("order"),
            )
        )
        return JSONResponse(jsonable(c))

    @guarded("api")
    async def api_sample(request: Request):
        return JSONResponse(jsonable(await run(ex.sample, request.path_params["ref"])))

    @guarded("api")
    async def api_method(request: Request):
        p = request.path_params
        out = await run(ex.method, p["ref"], p["method"], request.query_params.get("target", "predicted"))
        if out.get("status") == "done":
            out["png"] = (
                f"/img/sample/{out['ref']}/method/{out['method']}.png?target="
                f"{request.query_params.get('target', 'predicted')}"
            )
        return JSONResponse(jsonable(out))

    @guarded("api")
    async def api_microscope(request: Request):
        return JSONResponse(await run(ex.microscope))

    @guarded("api")
    async def api_layers(request: Request):
        return JSONResponse(jsonable(await run(ex.layers)))

    @guarded("api")
    async def api_layer(request: Request):
        return JSONResponse(jsonable(await run(ex.layer, request.path_params["name"])))

    def unit_api(method):
        """A JSON route for one unit (/api/unit/{name}/{channel}...): the explorer's ``method(layer, channel)``."""

        @guarded("api")
        async def handler(request: Request):
            p = request.path_params
            return JSONResponse(jsonable(await run(method, p["name"], p["channel"])))

        return handler

    api_unit, api_fv, api_views = unit_api(ex.unit), unit_api(ex.feature_vis), unit_api(ex.feature_views)

    def starts_work(request: Request, what: str) -> bool:
        """A POST starts work and must say Content-Type application/json: not a request another site may send."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and kind != "application/json":
            raise BadRequest(f"start {what} with Content-Type application/json", 415)
        return request.method == "POST"

    @guarded("api")
    async def api_layer_fv(request: Request):
        start = starts_work(request, "the feature visualisations")
        return JSONResponse(jsonable(await run(ex.layer_fv, request.path_params["name"], start)))

    @guarded("api")
    async def api_layer_fv_cancel(request: Request):
        if not starts_work(request, "the cancellation"):
            raise BadRequest("cancel with a POST (Content-Type application/json)", 405)
        return JSONResponse(jsonable(await run(ex.cancel_layer_fv, request.path_params["name"])))

    @guarded("api")
    async def api_blocks(request: Request):
        layer = request.query_params.get("layer")
        if layer is None:
            layer = (await run(ex.unit_layers) or [None])[-1]
        return JSONResponse(jsonable(await run(ex.blocks, request.path_params["ref"], layer)))

    @guarded("api")
    async def api_leaderboard(request: Request):
        return JSONResponse(jsonable(await run(ex.leaderboard, starts_work(request, "the leaderboard"))))

    @guarded("api")
    async def api_upload(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in _SIMPLE_TYPES:
            raise BadRequest(
                f"send the image as the request body with Content-Type application/octet-stream "
                f"(or image/*), not {kind}",
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
        ref = await run(ex.upload, b"".join(chunks))
        return JSONResponse({"ref": ref, "url": f"/sample/{ref}"})

    # -- images -----------------------------------------------------------------
    def png(data: bytes) -> Response:
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @guarded("img")
    async def img_sample(request: Request):
        return png(await run(ex.image_png, request.path_params["ref"]))

    @guarded("img")
    async def img_pair(request: Request):
        q = request.query_params
        return png(await run(ex.pair_png, request.path_params["ref"], q.get("a"), q.get("b")))

    @guarded("img")
    async def img_method(request: Request):
        p = request.path_params
        return png(await run(ex.method_png, p["ref"], p["method"], request.query_params.get("target", "predicted")))

    @guarded("img")
    async def img_unit(request: Request):
        p = request.path_params
        return png(await run(ex.unit_png, p["name"], p["channel"], p["what"]))

    async def not_found(request: Request, exc: HTTPException):
        msg = "no such page" if exc.status_code == 404 else (exc.detail or "error")
        if request.url.path.startswith(("/api/", "/img/")):
            return JSONResponse({"error": msg, "status": exc.status_code}, status_code=exc.status_code)
        if request.url.path.startswith("/static/"):
            return PlainTextResponse(msg, status_code=exc.status_code)
        return HTMLResponse(
            env.get_template("error.html.j2").render(urls=urls, title="error", status=exc.status_code, message=msg),
            status_code=exc.status_code,
        )

    async def server_error(request: Request, exc: Exception):
        log.exception("explorer: %s failed", request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})", "status": 500}, status_code=500)

    async def favicon(request: Request):
        return Response(status_code=204)

    routes = [
        Route("/", overview),
        Route("/favicon.ico", favicon),
        Route("/cell/{r}/{c}", cell),
        Route("/sample/{ref}", sample),
        Route("/upload", upload_page),
        Route("/layers", layers_page),
        Route("/leaderboard", leaderboard_page),
        Route("/api/leaderboard", api_leaderboard, methods=["GET", "POST"]),
        Route("/layer/{name}", layer_page),
        Route("/unit/{name}/{channel}", unit_page),
        Route("/api/microscope", api_microscope),
        Route("/api/layers", api_layers),
        Route("/api/layer/{name}", api_layer),
        Route("/api/layer/{name}/fv", api_layer_fv, methods=["GET", "POST"]),
        Route("/api/layer/{name}/fv/cancel", api_layer_fv_cancel, methods=["POST"]),
        Route("/api/unit/{name}/{channel}", api_unit),
        Route("/api/unit/{name}/{channel}/fv", api_fv),
        Route("/api/unit/{name}/{channel}/views", api_views),
        Route("/api/sample/{ref}/blocks", api_blocks),
        Route("/img/unit/{name}/{channel}/{what}.png", img_unit),
        Route("/api/status", api_status),
        Route("/api/overview", api_overview),
        Route("/api/confusion.json", api_confusion_json),
        Route("/api/confusion.csv", api_confusion_csv),
        Route("/api/cell/{r}/{c}", api_cell),
        Route("/api/sample/{ref}", api_sample),
        Route("/api/sample/{ref}/method/{method}", api_method),
        Route("/api/upload", api_upload, methods=["POST"]),
        Route("/img/sample/{ref}.png", img_sample),
        Route("/img/sample/{ref}/pair.png", img_pair),
        Route("/img/sample/{ref}/method/{method}.png", img_method),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = []
    if allowed_hosts:
        from starlette.middleware import Middleware
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: not_found, 500: server_error}
    )
