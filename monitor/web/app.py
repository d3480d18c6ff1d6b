"""The FastAPI application: every route of the HTTP port, typed by monitor.web.models.

Routing of refusals (404, 405 with Allow, 401, 501, 505) happens before FastAPI, in monitor.web.guard, from
the ROUTES table built here out of the application's own routes, so the two cannot disagree.
"""
from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Pattern

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor import __version__
from monitor.alerts.events import EventStoreError
from monitor.render.jpeg import encode_jpeg
from monitor.web import api, models
from monitor.web.api import ApiError
from monitor.web.mjpeg import BOUNDARY, ViewerLimit, render
from monitor.web.protocol import STREAMING_KEY, TRANSPORT_KEY
from monitor.web.upload import ClientGone, body_kind, checked_decode, file_field, read_body

if TYPE_CHECKING:
    from monitor.web.server import WebServer

log = logging.getLogger("monitor.web")

SNAPSHOT_MAX_BYTES = 20 * 1024 * 1024
HEAD_KEY = "monitor.head"               # scope key: the request was a HEAD (FastAPI routes see it as GET)
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
_PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
             "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_NO_STORE = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class _Regex(Convertor):
    def __init__(self, regex: str) -> None:
        self.regex = regex

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: Any) -> str:
        return str(value)


# Path parameters as strict as the names they hold: anything else never reaches a handler (404).
register_url_convertor("camera", _Regex(r"[A-Za-z0-9_.-]{1,64}"))
register_url_convertor("event_id", _Regex(r"[0-9]{1,18}"))
register_url_convertor("static_file", _Regex(r"app\.js|style\.css"))


class Route(NamedTuple):
    pattern: Pattern[str]
    methods: tuple[str, ...]
    handler: str


def route_table(app: FastAPI | APIRouter) -> tuple[Route, ...]:
    """(regex, methods, handler name) of every route the application serves; GET routes take HEAD too."""
    out: list[Route] = []
    for r in app.routes:
        included = getattr(r, "original_router", None)           # FastAPI's wrapper of include_router()
        if included is not None:
            out.extend(route_table(included))
            continue
        methods = set(getattr(r, "methods", None) or ())
        if "GET" in methods:
            methods.add("HEAD")
        out.append(Route(r.path_regex, tuple(m for m in ("GET", "HEAD", "POST") if m in methods), r.name))
    return tuple(out)


def load_static() -> dict[str, tuple[bytes, str]]:
    root = resources.files("monitor.web").joinpath("static")
    return {name: (root.joinpath(name).read_bytes(), _STATIC_TYPES[Path(name).suffix])
            for name in ("index.html", "app.js", "style.css")}


def _query(request: Request) -> dict[str, list[str]]:
    # Validated by the guard already (strict decoding, at most 16 fields).
    return urllib.parse.parse_qs(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True,
                                 max_num_fields=16)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, {**_NO_STORE, **(headers or {})})


_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": models.Error} for code in (400, 401, 404, 503)}


router = APIRouter()


def _web(request: Request) -> WebServer:
    return request.app.state.web


def _daemon(request: Request) -> Any:
    return request.app.state.web.app


# -- page, health, metrics ----------------------------------------------------------------------------------

@router.get("/", include_in_schema=False)
async def page(request: Request) -> Response:
    body, ctype = _web(request).static["index.html"]
    return Response(body, 200, {**_NO_STORE, "Content-Security-Policy": _PAGE_CSP,
                                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}, ctype)


@router.get("/static/{name:static_file}", include_in_schema=False)
async def static(name: str, request: Request) -> Response:
    body, ctype = _web(request).static[name]
    return Response(body, 200, _NO_STORE, ctype)


@router.get("/healthz", summary="Liveness: the HTTP server answers", response_class=Response)
async def healthz() -> Response:
    return Response(b"ok\n", 200, _NO_STORE, "text/plain; charset=utf-8")


@router.get("/readyz", summary="Readiness: the pipeline runs (503 until it does)", response_class=Response)
async def readyz(request: Request) -> Response:
    daemon = _daemon(request)
    ready = bool(daemon.ready())
    # A paused camera (MQTT enabled/set OFF) keeps the daemon ready: a 503 would let whoever may pause one take the
    # whole daemon out of its load balancer or restart loop (and a restart keeps the pause). It is said here.
    paused = sorted(getattr(daemon, "paused", ()))
    body = (b"ready\n" if ready else b"not ready\n") + (f"paused: {', '.join(paused)}\n".encode() if paused else b"")
    return Response(body, 200 if ready else 503, _NO_STORE, "text/plain; charset=utf-8")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(_daemon(request).metrics.registry), 200, _NO_STORE, CONTENT_TYPE_LATEST)


# -- JSON API -----------------------------------------------------------------------------------------------

@router.get("/api/status", response_model=models.Status, responses=_ERRORS,
            summary="Cameras, latest predictions, model, uptime, versions")
def status(request: Request) -> JSONResponse:
    web = _web(request)
    doc = models.Status.model_validate(api.status_json(web.app, web.versions))
    return JSONResponse(doc.model_dump(mode="json"), 200, _NO_STORE)


@router.get("/api/events", response_model=models.Events, responses=_ERRORS,
            summary="Alert events, newest first (?camera=&since=&limit=)")
def events(request: Request) -> JSONResponse:
    daemon = _daemon(request)
    params = api.events_params(_query(request), daemon.cameras)
    try:
        rows = daemon.events.query(**params, strict=True)
    except EventStoreError as e:
        log.error("http: /api/events: %s", e)
        raise ApiError(503, f"event history unavailable: {e}", {"Retry-After": "5"}) from None
    doc = models.Events(events=[models.Event.model_validate(api.event_json(e)) for e in rows])
    return JSONResponse(doc.model_dump(mode="json"), 200, _NO_STORE)


@router.get("/api/events/{event_id:event_id}/snapshot.jpg", response_class=Response, responses=_ERRORS,
            summary="The snapshot JPEG saved when the event started")
def event_snapshot(event_id: str, request: Request) -> Response:
    number = int(event_id)
    try:
        ev = _daemon(request).events.get(number, strict=True)
    except EventStoreError as e:
        log.error("http: event snapshot: %s", e)
        raise ApiError(503, f"event history unavailable: {e}", {"Retry-After": "5"}) from None
    if ev is None:
        raise ApiError(404, f"no event {number}")
    if not ev.snapshot:
        raise ApiError(404, f"event {number} has no snapshot")
    path = Path(ev.snapshot)
    try:
        if not path.is_file() or path.stat().st_size > SNAPSHOT_MAX_BYTES:
            raise ApiError(404, f"snapshot of event {number} is missing")
        data = path.read_bytes()
    except OSError:
        raise ApiError(404, f"snapshot of event {number} cannot be read") from None
    return Response(data, 200, {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
                    "image/jpeg")


@router.post("/api/classify", response_model=models.Classification,
             responses={**_ERRORS, **{c: {"model": models.Error} for c in (408, 411, 413, 415)}},
             summary="Classify an uploaded image (multipart field 'file', or a raw image/* body)")
async def classify(request: Request) -> JSONResponse:
    return await _classify(_web(request), request)


# -- live view ----------------------------------------------------------------------------------------------

def _camera(request: Request, name: str) -> Any:
    camera = _daemon(request).cameras.get(name)
    if camera is None:
        raise ApiError(404, f"no camera named {name!r}")
    return camera


@router.get("/snapshot/{camera:camera}.jpg", response_class=Response, responses=_ERRORS,
            summary="The newest frame of a camera with the overlay, as JPEG")
def snapshot(camera: str, request: Request) -> Response:
    frame = _camera(request, camera).latest()
    if frame is None:
        raise ApiError(503, f"camera {camera!r} has not delivered a frame yet", {"Retry-After": "2"})
    cfg = _web(request).streams.cfg
    jpeg = encode_jpeg(render(_daemon(request), camera, frame.image, cfg.width), cfg.quality)
    return Response(jpeg, 200, _NO_STORE, "image/jpeg")


@router.get("/stream/{camera:camera}.mjpg", response_class=Response, responses=_ERRORS,
            summary="Live view: multipart/x-mixed-replace JPEG stream with the overlay")
async def stream(camera: str, request: Request) -> Response:
    _camera(request, camera)
    return MjpegResponse(_web(request), camera)


def build_app(web: WebServer) -> FastAPI:
    """The application for one WebServer (it holds the daemon as `web.app`)."""
    app = FastAPI(title="monitor", version=__version__, docs_url=None, redoc_url=None,
                  description="Camera monitoring daemon: status, events, live MJPEG views, image classification.")
    app.state.web = web
    app.include_router(router)
    from monitor.web import custom   # after this module registered the path convertors its routes use
    app.include_router(custom.router)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        # a message built from an exception may carry a server path (the database, a head file): name its key
        daemon = getattr(web, "app", None)
        return _error(exc.status, api.without_paths(exc.message, getattr(daemon, "config", None)), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("http: error answering %s %s", request.method, request.url.path[:200], exc_info=exc)
        return _error(500, "internal error (see the daemon's log)")

    return app


async def _classify(web: WebServer, request: Request) -> JSONResponse:
    headers = request.headers
    lengths = headers.getlist("content-length")
    if not lengths and "transfer-encoding" not in headers:
        raise ApiError(411, "Content-Length (or Transfer-Encoding: chunked) required")
    length = int(lengths[0]) if lengths else None           # h11 has checked it is one non-negative number
    cap = web.upload_max_bytes
    if length is not None and length > cap:
        raise ApiError(413, f"upload of {length} bytes is larger than server.upload_max_bytes ({cap} bytes)")
    kind = body_kind(headers.get("content-type"))
    deadline = time.monotonic() + web.upload_timeout
    try:
        body = await read_body(request.receive, length, cap, deadline, web.body_budget)
    except ClientGone:
        return _error(400, "client hung up")               # nobody reads it; counted all the same
    try:
        if not await _acquire(web.uploads, max(0.1, deadline - time.monotonic())):
            raise ApiError(503, "too many uploads at once, try again", {"Retry-After": "2"})
        try:
            explain = _query(request).get("explain", ["false"])[0].lower() in ("true", "1")
            # The decode stops (its process is killed) when the client hangs up: nobody would read the answer.
            gone: list[bool] = []

            async def hangup() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass

            work = asyncio.ensure_future(run_in_threadpool(_decode_and_classify, web, kind, body, deadline,
                                                           explain, lambda: bool(gone)))
            watch = asyncio.ensure_future(hangup())
            try:
                await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
                if not work.done():
                    gone.append(True)
                size, predictions, explanation = await work
            except ClientGone:
                return _error(400, "client hung up")       # nobody reads it; counted all the same
            except BaseException:
                gone.append(True)                           # (cancelled: the server stops)
                raise
            finally:
                watch.cancel()
        finally:
            web.uploads.release()
    finally:
        web.body_budget.give(len(body))
        del body
    classifier = web.app.classifier
    doc = models.Classification(predictions=api.predictions_json(predictions), model=api.model_json(classifier),
                                width=int(size[0]), height=int(size[1]), explanation=explanation)
    return JSONResponse(doc.model_dump(mode="json"), 200, _NO_STORE)


async def _acquire(semaphore: asyncio.Semaphore, timeout: float) -> bool:
    try:
        await asyncio.wait_for(semaphore.acquire(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


def _decode_and_classify(web: WebServer, kind: Any, body: bytes, deadline: float, explain: bool = False,
                         cancelled: Any = None) -> tuple[Any, list[Any], dict[str, Any] | None]:
    if kind.multipart:
        data, name = file_field(body, kind.boundary)
    else:
        data, name = body, f"upload ({kind.media_type})"
    image, size = checked_decode(data, name, web.pixels, web.decoders, deadline, cancelled)
    del data
    app = web.app
    if explain:
        from monitor.web.custom import classify_explained
        return (size, *classify_explained(app.classifier, image, app.config.model.top_k))
    return size, app.classifier.classify([image], top_k=app.config.model.top_k)[0], None


class MjpegResponse(Response):
    """multipart/x-mixed-replace: the encoder's parts, fanned out (see monitor.web.mjpeg)."""

    media_type = f"multipart/x-mixed-replace; boundary={BOUNDARY}"

    def __init__(self, web: WebServer, camera: str) -> None:
        super().__init__(None, 200, {"Cache-Control": "no-store, private", "Pragma": "no-cache",
                                     "X-Content-Type-Options": "nosniff"}, self.media_type)
        del self.headers["content-length"]
        self.web = web
        self.camera = camera

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        hub = self.web.streams
        try:
            encoder = hub.join(self.camera, asyncio.get_running_loop())
        except ViewerLimit as e:
            await _error(503, str(e), {"Retry-After": "5"})(scope, receive, send)
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            transport = scope.get("extensions", {}).get(TRANSPORT_KEY)
            if scope.get(HEAD_KEY) or transport is None:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            scope["extensions"][STREAMING_KEY] = True
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "-"
            viewer = await encoder.serve(peer, transport, send, receive, self.web.stopping.is_set)
            log.debug("mjpeg %s: viewer %s ended (%s): %d frames sent, %d skipped", self.camera, peer,
                      viewer.reason, viewer.sent, viewer.skipped)
            if viewer.reason != "stalled":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            hub.leave(self.camera)


ROUTES = route_table(build_app(None))      # every route, as the guard routes them (tests enumerate them)
