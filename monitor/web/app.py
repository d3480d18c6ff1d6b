"""The FastAPI application: the routers of monitor.web.routes, the API documentation, the error answers, and
ROUTES, the route table the guard and the tests use.

Routing of refusals (404, 405 with Allow, 401, 501, 505) happens before FastAPI, in monitor.web.guard, from the
route table built here out of the application's own routes, so the two cannot disagree.

The documentation (/docs: Swagger UI) comes from fastapi-offline: the page's scripts and styles are files of that
package served under /docs/assets, never a CDN (the daemon may have no internet, and a page with the API's
credentials should load nothing from elsewhere); they are routes like the others, behind the same guard and
credentials. No ReDoc page: its bundle fetches its logo from cdn.redoc.ly whatever the options.
"""
from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, Pattern, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Mount
from starlette.routing import Route as StarletteRoute

from monitor import __version__
from monitor.web import api
from monitor.web.deps import Server, server_of
from monitor.web.errors import ApiError, error_response
from monitor.web.params import QUERY_ERROR
from monitor.web.paths import STATIC_FILES
from monitor.web.routes import batch, cameras, classify, custom, events, pages, status

log = logging.getLogger("monitor.web")

ROUTERS = (pages.router, status.router, events.router, classify.router, batch.router, cameras.router,
           custom.router)
DOCS_ASSETS = "/docs/assets"
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}


class Route(NamedTuple):
    pattern: Pattern[str]
    methods: tuple[str, ...]
    handler: str


def route_table(app: FastAPI) -> tuple[Route, ...]:
    """(regex, methods, handler name) of every route the application serves; GET routes take HEAD too, and so do
    mounted static files (the documentation's assets)."""
    out: list[Route] = []
    for r in _flat(app.routes):
        if isinstance(r, Mount):
            methods = {"GET", "HEAD"}
        elif isinstance(r, StarletteRoute):
            methods = set(r.methods or ())
            if "GET" in methods:
                methods.add("HEAD")
        else:
            raise TypeError(f"route of an unknown kind in the application: {r!r}")
        out.append(Route(r.path_regex, tuple(m for m in ("GET", "HEAD", "POST") if m in methods), r.name or ""))
    return tuple(out)


def _flat(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for r in routes:
        # FastAPI keeps an included router behind a wrapper of its own (a private class), whose original_router
        # holds the routes as declared.
        included = getattr(r, "original_router", None)
        out.extend(_flat(included.routes) if included is not None else [r])
    return out


def load_static() -> dict[str, tuple[bytes, str]]:
    root = resources.files("monitor.web").joinpath("static")
    return {name: (root.joinpath(name).read_bytes(), _STATIC_TYPES[Path(name).suffix])
            for name in ("index.html", *STATIC_FILES)}


def create_app(server: Server | None) -> FastAPI:
    """The application; its routes read `server` (monitor.web.deps). Without one it only lists its routes
    (ROUTES)."""
    app = FastAPIOffline(title="monitor", version=__version__, static_url=DOCS_ASSETS, redoc_url=None,
                         # the validator badge would send the API's description to validator.swagger.io
                         swagger_ui_parameters={"validatorUrl": None},
                         description="Camera monitoring daemon: status, events, live MJPEG views, image "
                                     "classification. Every 4xx/5xx answer is JSON {\"error\": message}.")
    app.state.server = server
    for router in ROUTERS:
        app.include_router(router)
    _answers_400(app)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        # a message built from an exception may carry a server path (the database, a head file): name its key
        config = server_of(request).services.config
        return error_response(exc.status, api.without_paths(exc.message, config), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, validation_message(exc.errors()))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("http: error answering %s %s", request.method, request.url.path[:200], exc_info=exc)
        return error_response(500, "internal error (see the daemon's log)")

    return app


def _answers_400(app: FastAPI) -> None:
    """/openapi.json without FastAPI's 422 answers: a request it cannot validate is answered 400 with an Error
    (validation_message()), which the routes list."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()                       # kept by FastAPI as app.openapi_schema
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                answers = operation.get("responses", {})
                if "HTTPValidationError" in str(answers.get("422")):    # FastAPI's own, not a route's
                    del answers["422"]
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    # FastAPI's documented way to change the schema (docs: "Extending OpenAPI")
    app.openapi = openapi       # type: ignore[method-assign]


def validation_message(errors: Sequence[Any]) -> str:
    """The first error of a request FastAPI could not validate: the query models' own message (it names the
    parameter), else where it was and what pydantic said."""
    first = errors[0] if errors else {}
    if first.get("type") == QUERY_ERROR:
        return str(first.get("msg"))
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid request')}"


ROUTES = route_table(create_app(None))      # every route, as the guard routes them (tests enumerate them)
