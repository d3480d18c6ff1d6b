"""The daemon's HTTP port: status page, MJPEG live view, JSON API, upload, /metrics, health, optional auth.

Built on http.server.ThreadingHTTPServer with bounds: a connection gets a handler thread only once its request
head is complete (see lobby.py), handler threads are capped (503 past the cap), every socket has a timeout,
stream viewers are capped (server.stream.max_viewers) and uploads are capped in size and concurrency.
"""
from __future__ import annotations

import io
import json
import logging
import re
import socket
import socketserver
import threading
import time
import urllib.parse
from email.errors import MissingHeaderBodySeparatorDefect
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor import __version__
from monitor.web import api
from monitor.web.api import ApiError
from monitor.web.auth import Authenticator
from monitor.web.lobby import Lobby
from monitor.web.mjpeg import BOUNDARY, WAIT_TICK, StreamHub, ViewerLimit, encode_jpeg, render
from monitor.web.upload import image_from_body

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0        # seconds a handler waits for one read or write on its socket
HEAD_TIMEOUT = 10.0           # seconds a new connection may take to send its whole request head
OTHER_HANDLERS = 16           # handler threads for everything but MJPEG viewers
UPLOADS_AT_ONCE = 4           # uploads read + classified at once (bounds memory: 4 x upload_max_bytes)
SNAPSHOT_MAX_BYTES = 20 * 1024 * 1024

_NAME = r"([A-Za-z0-9_.-]{1,64})"
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
_PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
             "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class _Route:
    __slots__ = ("pattern", "methods", "handler")

    def __init__(self, pattern: str, methods: tuple[str, ...], handler: str) -> None:
        self.pattern = re.compile(pattern)
        self.methods = methods
        self.handler = handler


_GET = ("GET", "HEAD")
ROUTES = (
    _Route(r"^/$", _GET, "page"),
    _Route(r"^/static/(app\.js|style\.css)$", _GET, "static"),
    _Route(r"^/healthz$", _GET, "healthz"),
    _Route(r"^/readyz$", _GET, "readyz"),
    _Route(r"^/metrics$", _GET, "metrics"),
    _Route(r"^/api/status$", _GET, "status"),
    _Route(r"^/api/events$", _GET, "events"),
    _Route(r"^/api/events/([0-9]{1,18})/snapshot\.jpg$", _GET, "event_snapshot"),
    _Route(r"^/api/classify$", ("POST",), "classify"),
    _Route(rf"^/stream/{_NAME}\.mjpg$", _GET, "stream"),
    _Route(rf"^/snapshot/{_NAME}\.jpg$", _GET, "snapshot"),
)


class _NotFound(Exception):
    pass


def _clean_path(raw: str) -> str:
    """The decoded path of a request target; _NotFound for anything that could be a path trick."""
    if not raw.startswith("/"):
        raise _NotFound
    low = raw.lower()
    if "\\" in raw or "\x00" in raw or "%2f" in low or "%5c" in low or "%00" in low:
        raise _NotFound
    try:
        path = urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise _NotFound from None
    if "\\" in path or "\x00" in path or "//" in path or any(c < " " or c == "\x7f" for c in path):
        raise _NotFound
    if any(seg in (".", "..") for seg in path.split("/")):
        raise _NotFound
    return path


def _load_static() -> dict[str, tuple[bytes, str]]:
    root = resources.files("monitor.web").joinpath("static")
    files = {}
    for name in ("index.html", "app.js", "style.css"):
        files[name] = (root.joinpath(name).read_bytes(), _STATIC_TYPES[Path(name).suffix])
    return files


class _SocketReader(io.RawIOBase):
    """The bytes the lobby already read (the request head), then the socket."""

    def __init__(self, head: bytes, sock: socket.socket) -> None:
        self._head = memoryview(head)
        self._raw = socket.SocketIO(sock, "rb")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int | None:
        if len(self._head):
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._raw.readinto(b)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False            # stop() waits for handlers itself, bounded by its timeout
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], web: WebServer) -> None:
        self.web = web
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.max_handlers = web.streams.cfg.max_viewers + OTHER_HANDLERS
        self._active = 0
        self._active_cond = threading.Condition()
        self._heads: dict[socket.socket, bytes] = {}
        self._heads_lock = threading.Lock()
        self.lobby = Lobby(self._dispatch, self.reject, head_timeout=web.head_timeout,
                           max_waiting=web.max_waiting)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS query that can hang); nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    # accept -> lobby (no thread yet) -> complete request head -> handler thread
    def process_request(self, request: Any, client_address: Any) -> None:
        self.lobby.add(request, client_address)

    def _dispatch(self, sock: socket.socket, addr: tuple, head: bytes) -> None:
        with self._active_cond:
            if self._active >= self.max_handlers:
                full = True
            else:
                full = False
                self._active += 1
        if full:
            self.reject(sock, 503, f"server busy ({self.max_handlers} requests in progress)")
            return
        with self._heads_lock:
            self._heads[sock] = head
        try:
            ThreadingHTTPServer.process_request(self, sock, addr)
        except Exception:
            with self._heads_lock:
                self._heads.pop(sock, None)
            self._done()
            raise

    def take_head(self, sock: socket.socket) -> bytes:
        with self._heads_lock:
            return self._heads.pop(sock, b"")

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        with self._active_cond:
            self._active -= 1
            self._active_cond.notify_all()

    @property
    def active(self) -> int:
        with self._active_cond:
            return self._active

    def wait_idle(self, timeout: float) -> bool:
        with self._active_cond:
            return self._active_cond.wait_for(lambda: self._active == 0, timeout)

    def reject(self, sock: socket.socket, status: int, reason: str) -> None:
        """Answer a connection that gets no handler (lobby thread: never blocks) and close it."""
        phrase = HTTPStatus(status).phrase
        body = json.dumps({"error": reason}).encode()
        head = (f"HTTP/1.0 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n" + ("Retry-After: 1\r\n" if status == 503 else "") + "\r\n").encode()
        self.web.count(status)
        log.debug("http: %s %d %s", "-", status, reason)
        try:
            sock.setblocking(False)
            sock.send(head + body)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("http: unhandled error serving %s", client_address[0] if client_address else "?")


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = f"monitor/{__version__}"
    sys_version = ""
    protocol_version = "HTTP/1.0"     # one request per connection: no idle keep-alive threads
    timeout = REQUEST_TIMEOUT

    # -- plumbing ------------------------------------------------------------------------------------------

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        self.timeout = self.server.web.request_timeout
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_SocketReader(self.server.take_head(self.connection), self.connection))
        self._headers_sent = False

    @property
    def web(self) -> WebServer:
        return self.server.web

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("http: %s %s", self.client_address[0] if self.client_address else "-", format % args)

    def send_response(self, code: int, message: str | None = None) -> None:
        self.web.count(code)
        super().send_response(code, message)

    def end_headers(self) -> None:
        self._headers_sent = True
        super().end_headers()

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(doc).encode("utf-8"), "application/json", headers, head)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.close_connection = True
        self._json(status, {"error": message}, headers, head=self.command == "HEAD")

    # http.server calls send_error itself for malformed request lines/headers (400, 414, 431, 501).
    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            # Unparsable request line: http.server would answer without a status line (HTTP/0.9 style).
            self.request_version = "HTTP/1.0"
        try:
            self._error(code, message or HTTPStatus(code).phrase)
        except OSError:
            pass

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9" and len(self.requestline.split()) == 2:
            # http.server would answer this HTTP/0.9 request with a bare body: no status line, no headers.
            self.send_error(400, "request line has no HTTP version (HTTP/0.9 is not supported)")
            return False
        if self.request_version.partition("/")[2].partition(".")[0].lstrip("0") == "":
            # HTTP/0.x spelled out: http.server takes any version below 2.0 (and answers "HTTP/0.9" bare too)
            self.send_error(505, f"HTTP version {self.request_version[5:]!r} is not supported (use HTTP/1.x)")
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._dispatch("OPTIONS")

    # Every method HTTP defines gets the route's 405 (or 404, 401); http.server's 501 is left for unknown ones.
    def do_TRACE(self) -> None:  # noqa: N802
        self._dispatch("TRACE")

    def do_CONNECT(self) -> None:  # noqa: N802
        self._dispatch("CONNECT")

    def _dispatch(self, method: str) -> None:
        try:
            # The target as sent: http.server rewrites a leading "//" in self.path, hiding that trick.
            words = self.requestline.split()
            target = words[1] if len(words) >= 2 else self.path
            raw_path, _, raw_query = target.partition("?")
            try:
                path = _clean_path(raw_path)
            except _NotFound:
                raise ApiError(404, "not found") from None
            # http.server skips a header line without a colon (and every line after it); refuse instead.
            # (Other defects the email parser reports concern a multipart body it never saw.)
            if any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in self.headers.defects):
                raise ApiError(400, "malformed request header line (no colon)")
            auth = self.web.auth
            if auth.protects(path) and not auth.check(self.headers.get("Authorization")):
                raise ApiError(401, "authentication required", {"WWW-Authenticate": auth.challenge()})
            for route in ROUTES:
                m = route.pattern.match(path)
                if m is None:
                    continue
                if method not in route.methods:
                    raise ApiError(405, f"method {method} not allowed on {path}",
                                   {"Allow": ", ".join(route.methods)})
                try:
                    query = urllib.parse.parse_qs(raw_query, keep_blank_values=True, max_num_fields=16,
                                                  errors="strict")
                except (ValueError, UnicodeDecodeError):
                    raise ApiError(400, "malformed query string") from None
                getattr(self, f"_r_{route.handler}")(*m.groups(), query=query, head=method == "HEAD")
                return
            raise ApiError(404, "not found")
        except ApiError as e:
            if self._headers_sent:
                self.close_connection = True
                return
            try:
                self._error(e.status, e.message, e.headers)
            except OSError:
                self.close_connection = True     # the client is gone; nothing left to tell it
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("http: error answering %s %s", method, self.path[:200])
            self.close_connection = True
            if not self._headers_sent:
                try:
                    self._error(500, "internal error (see the daemon's log)")
                except OSError:
                    pass

    # -- routes ----------------------------------------------------------------------------------------------

    def _r_page(self, query: dict, head: bool) -> None:
        body, ctype = self.web.static["index.html"]
        self._send(200, body, ctype, {"Content-Security-Policy": _PAGE_CSP, "Referrer-Policy": "no-referrer",
                                      "X-Frame-Options": "DENY"}, head)

    def _r_static(self, name: str, query: dict, head: bool) -> None:
        body, ctype = self.web.static[name]
        self._send(200, body, ctype, None, head)

    def _r_healthz(self, query: dict, head: bool) -> None:
        self._send(200, b"ok\n", "text/plain; charset=utf-8", None, head)

    def _r_readyz(self, query: dict, head: bool) -> None:
        ready = bool(self.web.app.ready())
        self._send(200 if ready else 503, b"ready\n" if ready else b"not ready\n", "text/plain; charset=utf-8",
                   None, head)

    def _r_metrics(self, query: dict, head: bool) -> None:
        self._send(200, generate_latest(self.web.app.metrics.registry), CONTENT_TYPE_LATEST, None, head)

    def _r_status(self, query: dict, head: bool) -> None:
        self._json(200, api.status_json(self.web.app, self.web.versions), head=head)

    def _r_events(self, query: dict, head: bool) -> None:
        params = api.events_params(query, self.web.app.cameras)
        events = self.web.app.events.query(**params)
        self._json(200, {"events": [api.event_json(e) for e in events]}, head=head)

    def _r_event_snapshot(self, event_id: str, query: dict, head: bool) -> None:
        ev = self.web.app.events.get(int(event_id))
        if ev is None:
            raise ApiError(404, f"no event {int(event_id)}")
        if not ev.get("snapshot"):
            raise ApiError(404, f"event {int(event_id)} has no snapshot")
        path = Path(ev["snapshot"])
        try:
            if not path.is_file() or path.stat().st_size > SNAPSHOT_MAX_BYTES:
                raise ApiError(404, f"snapshot of event {int(event_id)} is missing")
            data = path.read_bytes()
        except OSError:
            raise ApiError(404, f"snapshot of event {int(event_id)} cannot be read") from None
        self._send(200, data, "image/jpeg", {"Cache-Control": "private, max-age=3600"}, head)

    def _camera(self, name: str) -> Any:
        camera = self.web.app.cameras.get(name)
        if camera is None:
            raise ApiError(404, f"no camera named {name!r}")
        return camera

    def _r_snapshot(self, name: str, query: dict, head: bool) -> None:
        camera = self._camera(name)
        frame = camera.latest()
        if frame is None:
            raise ApiError(503, f"camera {name!r} has not delivered a frame yet", {"Retry-After": "2"})
        cfg = self.web.streams.cfg
        jpeg = encode_jpeg(render(self.web.app, name, frame.image, cfg.width), cfg.quality)
        self._send(200, jpeg, "image/jpeg", None, head)

    def _r_stream(self, name: str, query: dict, head: bool) -> None:
        self._camera(name)
        hub = self.web.streams
        try:
            encoder = hub.join(name)
        except ViewerLimit as e:
            raise ApiError(503, str(e), {"Retry-After": "5"}) from None
        try:
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store, private")
            self.send_header("Pragma", "no-cache")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Connection", "close")
            self.end_headers()
            if head:
                return
            # From here the encoder's fan-out thread writes to the socket; this thread only waits for the end
            # (viewer gone, stalled, stream or server stopped), so viewers cost no wake-ups per frame.
            peer = f"{self.client_address[0]}:{self.client_address[1]}" if self.client_address else "-"
            viewer = encoder.fanout.add(self.connection, peer)
            try:
                while not viewer.done.wait(WAIT_TICK):
                    if self.web.stopping.is_set():
                        break
            finally:
                if not viewer.done.is_set():
                    encoder.fanout.remove(viewer)
                    viewer.done.wait(2.0)      # its last write must not race the socket's close
            log.debug("mjpeg %s: viewer %s ended (%s): %d frames sent, %d skipped", name,
                      viewer.address, viewer.reason or "server stopping", viewer.sent, viewer.skipped)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass                                   # the viewer left before the stream began
        finally:
            hub.leave(name)

    def _r_classify(self, query: dict, head: bool) -> None:
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "chunked uploads are not accepted: send a Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise ApiError(411, "Content-Length required")
        if len(lengths) > 1 or not re.fullmatch(r"[0-9]{1,18}", lengths[0].strip()):
            raise ApiError(400, f"invalid Content-Length {lengths[0][:40]!r}")
        length = int(lengths[0])
        cap = self.web.upload_max_bytes
        if length > cap:
            self._discard_body(length)
            raise ApiError(413, f"upload of {length} bytes is larger than server.upload_max_bytes ({cap} bytes)")
        if not self.web.uploads.acquire(timeout=self.web.request_timeout):
            raise ApiError(503, "too many uploads at once, try again", {"Retry-After": "2"})
        try:
            body = self._read_body(length, cap)
            image = image_from_body(self.headers.get("Content-Type"), body)
            del body
            app = self.web.app
            predictions = app.classifier.classify([image], top_k=app.config.model.top_k)[0]
        finally:
            self.web.uploads.release()
        self._json(200, {"predictions": api.predictions_json(predictions), "model": api.model_json(app.classifier),
                         "width": int(image.shape[1]), "height": int(image.shape[0])})

    def _read_body(self, length: int, cap: int) -> bytes:
        chunks = []
        remaining = min(length, cap)           # never more than the cap, whatever the header said
        try:
            while remaining > 0:
                chunk = self.rfile.read1(min(remaining, 1 << 16))
                if not chunk:
                    raise ApiError(400, f"body ended after {length - remaining} of {length} bytes (Content-Length)")
                chunks.append(chunk)
                remaining -= len(chunk)
        except TimeoutError:
            raise ApiError(408, f"body not received within {self.web.request_timeout:g} s") from None
        return b"".join(chunks)

    def _discard_body(self, length: int, limit: int = 1 << 20, seconds: float = 1.0) -> None:
        # Read (and drop) a little of a refused body, so closing the socket does not reset the connection
        # before the client has read our 413.
        self.close_connection = True
        deadline = time.monotonic() + seconds
        remaining = min(length, limit)
        try:
            self.connection.settimeout(0.2)
            while remaining > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass
        finally:
            self.connection.settimeout(self.web.request_timeout)


class WebServer:
    """The HTTP server of the daemon. `app` provides config, cameras, results, alerts, events, classifier,
    metrics, started_at and ready() (see ARCHITECTURE.md)."""

    def __init__(self, app: Any, host: str, port: int, *, request_timeout: float = REQUEST_TIMEOUT,
                 head_timeout: float = HEAD_TIMEOUT, max_waiting: int = 1000) -> None:
        self.app = app
        self.host = host
        self._port = int(port)
        self.request_timeout = request_timeout
        self.head_timeout = head_timeout
        self.max_waiting = max_waiting
        server_cfg = app.config.server
        self.auth = Authenticator(server_cfg.auth)
        self.upload_max_bytes = int(server_cfg.upload_max_bytes)
        self.streams = StreamHub(app, server_cfg.stream, app.metrics, stall_timeout=request_timeout)
        self.uploads = threading.BoundedSemaphore(UPLOADS_AT_ONCE)
        self.static = _load_static()
        self.versions = api.versions()
        self.stopping = threading.Event()
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counters: dict[int, Any] = {}

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._http.server_address[1] if self._http is not None else self._port

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def active_requests(self) -> int:
        return self._http.active if self._http is not None else 0

    @property
    def lobby(self) -> Lobby | None:
        return self._http.lobby if self._http is not None else None

    def count(self, status: int) -> None:
        """Count one response in metrics.http_requests by status code."""
        counter = self._counters.get(status)
        if counter is None:
            counter = self._counters[status] = self.app.metrics.http_requests.labels(code=str(int(status)))
        counter.inc()

    def start(self) -> None:
        if self._http is not None:
            raise RuntimeError("web server already started")
        self.stopping.clear()
        self._http = _HTTPServer((self.host, self._port), self)
        self._http.lobby.start()
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="http", daemon=True)
        self._thread.start()
        log.debug("web: listening on %s", self.url)       # the daemon logs its URL at info

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end streams, wait (bounded) for requests in progress, close the socket."""
        http = self._http
        if http is None:
            return
        deadline = time.monotonic() + timeout
        self.stopping.set()
        http.shutdown()                      # returns once serve_forever has left its loop (<= poll_interval)
        http.lobby.stop(max(0.1, deadline - time.monotonic()))
        self.streams.close(max(0.1, deadline - time.monotonic()))
        if not http.wait_idle(max(0.0, deadline - time.monotonic())):
            log.warning("web: %d requests still in progress at shutdown; abandoned", http.active)
        http.server_close()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        self._http = None
        self._thread = None
        # A new hub so the server can be started again after stop().
        self.streams = StreamHub(self.app, self.streams.cfg, self.app.metrics, stall_timeout=self.request_timeout)
