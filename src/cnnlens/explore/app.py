"""The explorer's web app: the route table over the views, served by one responder.

Every page is also its JSON, from the same view: ``/cell/8/5`` and ``/cell/8/5.json`` (or ``Accept:
application/json``); ``/`` has ``/index.json``. The older ``/api/...`` URLs of the pages' JSON stay as aliases of
the same views; jobs (methods, attacks, units, feature visualisations, the leaderboard) are polled as JSON;
images are PNG under ``/img``. Errors are one line: 404 for anything that does not exist, 4xx for a bad request,
503 while the scan runs (see :mod:`~cnnlens.explore.responder`).
"""

from __future__ import annotations

from pathlib import Path

from ..extras import require

require(
    "explore", "starlette", what="the explorer's web app"
)  # one line naming the extra, not a bare ModuleNotFoundError
from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.middleware.trustedhost import TrustedHostMiddleware  # noqa: E402
from starlette.routing import BaseRoute, Mount, Route  # noqa: E402
from starlette.staticfiles import StaticFiles  # noqa: E402

from .render import Urls, render_cell, render_overview, templates  # noqa: E402
from .responder import CSV, EMPTY, HTML, JSON, PAGE, PNG, Entry, Responder, json_path, post_json, upload_body  # noqa: E402
from .service import Explorer  # noqa: E402
from .views import attacks, explanations, leaderboard, samples, units, uploads  # noqa: E402

__all__ = ["HERE", "ROUTES", "Urls", "make_app", "render_cell", "render_overview", "templates"]

HERE = Path(__file__).parent
GET, POST, GET_POST = ("GET",), ("POST",), ("GET", "POST")
#: a POST starts work (with Content-Type application/json): the leaderboard, a layer's render, its cancellation
RUN_BOARD, RUN_LAYER, CANCEL = (
    post_json("the leaderboard"),
    post_json("the feature visualisations"),
    post_json("the cancellation"),
)

#: every URL of the app: path, view, methods, kinds (PAGE: the page and its .json), and what to read first
# fmt: off
ROUTES = [
    # pages (each also its JSON at PATH.json, or with Accept: application/json)
    Entry("/",                                      samples.overview,          GET,      PAGE),
    Entry("/cell/{r}/{c}",                          samples.cell,              GET,      PAGE),
    Entry("/sample/{ref}",                          samples.sample,            GET,      PAGE),
    Entry("/upload",                                uploads.upload_page,       GET,      HTML),
    Entry("/layers",                                units.layers,              GET,      PAGE),
    Entry("/layer/{name}",                          units.layer,               GET,      PAGE),
    Entry("/unit/{name}/{channel}",                 units.unit,                GET,      PAGE),
    Entry("/leaderboard",                           leaderboard.leaderboard,   GET_POST, PAGE, RUN_BOARD),
    # jobs and other JSON
    Entry("/api/status",                            samples.status,            GET,      JSON),
    Entry("/api/confusion.json",                    samples.confusion_json,    GET,      JSON),
    Entry("/api/confusion.csv",                     samples.confusion_csv,     GET,      CSV),
    Entry("/api/upload",                            uploads.upload,            POST,     JSON, upload_body),
    Entry("/api/sample/{ref}/method/{method}",      explanations.method,       GET,      JSON),
    Entry("/api/sample/{ref}/attack/{toward}",      attacks.attack,            GET,      JSON),
    Entry("/api/sample/{ref}/blocks",               units.blocks,              GET,      JSON),
    Entry("/api/microscope",                        units.microscope,          GET,      JSON),
    Entry("/api/layer/{name}/fv",                   units.layer_fv,            GET_POST, JSON, RUN_LAYER),
    Entry("/api/layer/{name}/fv/cancel",            units.cancel_layer_fv,     POST,     JSON, CANCEL),
    Entry("/api/unit/{name}/{channel}/fv",          units.feature_vis,         GET,      JSON),
    Entry("/api/unit/{name}/{channel}/views",       units.feature_views,       GET,      JSON),
    # images
    Entry("/img/sample/{ref}.png",                  samples.image,             GET,      PNG),
    Entry("/img/sample/{ref}/pair.png",             samples.pair,              GET,      PNG),
    Entry("/img/sample/{ref}/method/{method}.png",  explanations.method_png,   GET,      PNG),
    Entry("/img/sample/{ref}/attack/{toward}.png",  attacks.attack_png,        GET,      PNG),
    Entry("/img/unit/{name}/{channel}/{what}.png",  units.unit_png,            GET,      PNG),
    # the older /api URLs of the pages' JSON: aliases of the same views
    Entry("/api/overview",                          samples.overview,          GET,      JSON),
    Entry("/api/cell/{r}/{c}",                      samples.cell,              GET,      JSON),
    Entry("/api/sample/{ref}",                      samples.sample,            GET,      JSON),
    Entry("/api/layers",                            units.layers,              GET,      JSON),
    Entry("/api/layer/{name}",                      units.layer,               GET,      JSON),
    Entry("/api/unit/{name}/{channel}",             units.unit,                GET,      JSON),
    Entry("/api/leaderboard",                       leaderboard.leaderboard,   GET_POST, JSON, RUN_BOARD),
    Entry("/favicon.ico",                           samples.favicon,           GET,      EMPTY),
]
# fmt: on


def make_app(explorer: Explorer, allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app serving ``explorer`` (start its scan with ``explorer.start_scan()``).

    ``allowed_hosts``: the Host headers answered (others get 400), e.g. ``["127.0.0.1", "localhost"]``
    for a server on the loopback, so a web page cannot reach it through DNS rebinding.
    """
    responder = Responder(explorer, templates(), Urls())
    # a page's PATH.json first: PATH's last parameter would take "5.json" as its value
    routes: list[BaseRoute] = [
        Route(json_path(e.path), responder.endpoint(e, as_json=True), methods=list(e.methods))
        for e in ROUTES
        if e.kinds == PAGE
    ]
    routes += [Route(e.path, responder.endpoint(e), methods=list(e.methods)) for e in ROUTES]
    routes.append(Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"))
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))] if allowed_hosts else []
    handlers = {HTTPException: responder.http_error, 500: responder.server_error}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
