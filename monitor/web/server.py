"""The daemon's HTTP port: uvicorn (h11) serving the FastAPI application on its own thread.

`WebServer(services, host, port)` binds the port in start() (a clash raises at once, naming host and port), runs
uvicorn's event loop on the thread "http" without signal handlers (the daemon's own stay in charge), and stops
within its timeout: live streams end first, then uvicorn closes its connections; what is left is aborted.
Bounds: open connections (server.max_connections, kept below the fd limit; per client, with a reserve for health
checks: monitor.web.protocol), silent connections (first byte), request heads (head_timeout), idle keep-alive
(keepalive_timeout), upload bodies (size, deadline, memory), decodes (pixel budget), viewers, failed logins.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import resource
import socket
import threading
import time
from typing import Any, Iterator

import uvicorn

from monitor import __version__
from monitor.core.versions import versions
from monitor.web.app import create_app, load_static, route_table
from monitor.web.auth import Authenticator
from monitor.web.guard import HEAD_MAX_BYTES, Guard, allowed_host_names
from monitor.web.mjpeg import STALL_TIMEOUT, StreamHub
from monitor.web.clients import ClientWarnings
from monitor.web.protocol import FIRST_BYTE_TIMEOUT, HEALTH_RESERVE, ConnectionSlots, MonitorProtocol
from monitor.web.decoders import DecoderPool
from monitor.web.services import WebServices
from monitor.web.upload import DECODE_CPU_SECONDS, DECODERS, BodyBudget, PixelBudget

log = logging.getLogger(__name__)

UPLOADS_AT_ONCE = 4           # uploads parsed, decoded and classified at once
UPLOAD_BODIES = 4             # upload bodies held in memory at once, in units of upload_max_bytes
RESERVED_FDS = 128            # descriptors kept for cameras, SQLite, logs, model files, sinks
SHUTDOWN_GRACE = 0.4          # seconds open responses get to finish at stop() before they are cut


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield                     # the daemon owns SIGTERM/SIGINT/SIGHUP; uvicorn must not install handlers

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's own shutdown polls every 0.1 s and leaves connections that are still receiving open;
        # the daemon's stop budget is 1 s, and nothing may outlive it.
        loop = asyncio.get_running_loop()
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        deadline = loop.time() + self.config.timeout_graceful_shutdown
        while (self.server_state.connections or self.server_state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for task in list(self.server_state.tasks):
            task.cancel()
        for connection in list(self.server_state.connections):
            connection.transport.abort()
        for _ in range(5):        # let the cancelled tasks and the aborted connections finish
            if not self.server_state.tasks:
                break
            await asyncio.sleep(0.01)


class WebServer:
    """The HTTP server of the daemon: `services` is what it reads and drives of the daemon (monitor.web.services),
    `app` the FastAPI application it serves (routes reach this server through monitor.web.deps). Keyword arguments
    override the config (tests)."""

    def __init__(self, services: WebServices, host: str, port: int, *, request_timeout: float | None = None,
                 head_timeout: float | None = None, upload_timeout: float | None = None,
                 keepalive_timeout: float | None = None, max_connections: int | None = None,
                 max_connections_per_client: int | None = None, first_byte_timeout: float | None = None) -> None:
        cfg = services.config.server
        self.services = services
        self.host = host
        self._port = int(port)
        # request_timeout (tests): how long a viewer may take nothing, and the upload body deadline
        self.stall_timeout = request_timeout or STALL_TIMEOUT
        self.upload_timeout = upload_timeout or request_timeout or cfg.upload_timeout
        self.head_timeout = head_timeout or cfg.head_timeout
        self.keepalive_timeout = keepalive_timeout or cfg.keepalive_timeout
        self.max_connections = _connection_cap(max_connections or cfg.max_connections)
        self.max_connections_per_client = min(self.max_connections,
                                              max_connections_per_client or cfg.max_connections_per_client)
        self.health_reserve = max(1, min(HEALTH_RESERVE, self.max_connections // 8))
        self.first_byte_timeout = min(first_byte_timeout or FIRST_BYTE_TIMEOUT, self.head_timeout)
        self.slots = self._slots()
        self._refusals = ClientWarnings(log)
        self.auth = Authenticator(cfg.auth)
        self.upload_max_bytes = int(cfg.upload_max_bytes)
        self.streams = StreamHub(services, cfg.stream, services.metrics, stall_timeout=self.stall_timeout)
        self.pixels = PixelBudget(cfg.upload_max_pixels)
        self.decoders = DecoderPool(DECODERS, DECODE_CPU_SECONDS)    # processes start with the first upload
        # single uploads, and one batch (POST /api/classify/batch) beside them
        self.body_budget = BodyBudget(UPLOAD_BODIES * self.upload_max_bytes + int(cfg.batch_max_bytes))
        self.uploads: asyncio.Semaphore | None = None       # made on the server's loop
        self.stopping = threading.Event()
        self._server: _Uvicorn | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._counters: dict[int, Any] = {}
        self.static = load_static()
        self.versions = versions()
        self.app = create_app(self)
        self.routes = route_table(self.app)
        self._host_names = allowed_host_names(host, cfg.allowed_hosts)

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._socket.getsockname()[1] if self._socket is not None else self._port

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def connections(self) -> int:
        """Open HTTP connections."""
        return len(self._server.server_state.connections) if self._server is not None else 0

    @property
    def active_requests(self) -> int:
        """Requests being answered (streams included)."""
        return len(self._server.server_state.tasks) if self._server is not None else 0

    def count(self, status: int) -> None:
        """Count one response in metrics.http_requests by status code."""
        counter = self._counters.get(status)
        if counter is None:
            counter = self._counters[status] = self.services.metrics.http_requests.labels(code=str(int(status)))
        counter.inc()

    def _slots(self) -> ConnectionSlots:
        return ConnectionSlots(self.max_connections, self.max_connections_per_client, self.health_reserve)

    def refused_connection(self, client: str, why: str) -> None:
        """A connection answered 503 at once: `client` holds max_connections_per_client (why "per_client"), or
        every slot is taken ("total"). A WARNING at most once a minute per client (rate-limited in all)."""
        self.count(503)
        if why == "per_client":
            self._refusals.warn(client, "web: %s holds %d connections (server.max_connections_per_client); "
                                "more from it are refused with 503", client, self.max_connections_per_client)
        else:
            self._refusals.warn("*", "web: all %d connections in use (server.max_connections; %d of them kept for "
                                "health checks); new ones are refused with 503", self.max_connections,
                                self.health_reserve)

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("web server already started")
        self.stopping.clear()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(128)
        except OSError as e:
            sock.close()
            where = f"[{self.host}]:{self._port}" if ":" in self.host else f"{self.host}:{self._port}"
            log.error("web: cannot listen on %s: %s", where, e.strerror or e)
            raise OSError(e.errno, f"cannot listen on {where} (server.host, server.port): {e.strerror or e}") from e
        sock.setblocking(False)
        protocol = type("Protocol", (MonitorProtocol,), {"web": self})
        guard = Guard(self.app, self.routes, self.auth, self._host_names, self.count)
        config = uvicorn.Config(
            guard, lifespan="off", log_config=None, access_log=False, http=protocol, loop="asyncio", ws="none",
            server_header=False,
            headers=[("server", f"monitor/{__version__}")], timeout_keep_alive=self.keepalive_timeout,
            h11_max_incomplete_event_size=HEAD_MAX_BYTES, timeout_graceful_shutdown=SHUTDOWN_GRACE)
        # uvicorn logs a warning per malformed request and info lines of its own: ours are in monitor.web.
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
        self._server = _Uvicorn(config)
        self._socket = sock
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                self._thread.join(2)
                self._server, self._socket, self._thread = None, None, None
                sock.close()
                raise RuntimeError(f"web server on {self.host}:{self.port} did not start")
            time.sleep(0.005)
        log.debug("web: listening on %s (at most %d connections)", self.url, self.max_connections)
        warning = exposure_warning(self.host, self.port, self.auth.enabled)
        if warning:
            log.warning("web: %s", warning)

    def _run(self) -> None:
        async def serve() -> None:
            self.uploads = asyncio.Semaphore(UPLOADS_AT_ONCE)
            await self._server.serve(sockets=[self._socket])

        try:
            asyncio.run(serve())
        except Exception:
            log.exception("web: the HTTP server failed")

    def stop(self, timeout: float = 5.0) -> None:
        """End live streams, stop accepting, let open responses finish (briefly), close every connection."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        deadline = time.monotonic() + timeout
        self.stopping.set()
        self.streams.close(max(0.1, min(0.3, deadline - time.monotonic())))
        server.should_exit = True
        self.decoders.close(max(0.1, min(0.5, deadline - time.monotonic())))  # a decode still running ends: 503
        thread.join(max(0.1, deadline - time.monotonic()))
        if thread.is_alive():
            server.force_exit = True
            log.warning("web: HTTP server did not stop in time; abandoned")
        if self._socket is not None:
            self._socket.close()
        self._server, self._thread, self._socket = None, None, None
        # A new hub so the server can be started again after stop().
        self.streams = StreamHub(self.services, self.streams.cfg, self.services.metrics,
                                 stall_timeout=self.stall_timeout)
        self.decoders = DecoderPool(DECODERS, DECODE_CPU_SECONDS)
        self.slots = self._slots()


def exposure_warning(host: str, port: int, auth_enabled: bool) -> str | None:
    """What start() warns about when the port is reachable from other machines (server.host not 127.x, ::1 or
    localhost; a name is not resolved) and nobody has to log in; None otherwise."""
    if auth_enabled or host.lower() == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass                      # a name, or 0.0.0.0 / :: (every interface)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (f"listening on {where} with server.auth.mode none: anyone who can reach this port can watch the "
            f"cameras, label examples and retrain; set server.auth (basic or bearer), or server.host: 127.0.0.1")


def _connection_cap(wanted: int) -> int:
    """server.max_connections, lowered to fit the process's soft fd limit with RESERVED_FDS to spare."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - RESERVED_FDS >= wanted:
        return int(wanted)
    cap = max(8, soft - RESERVED_FDS)
    log.warning("web: server.max_connections %d lowered to %d: the process may open only %d files "
                "(raise LimitNOFILE= in the systemd unit)", wanted, cap, soft)
    return cap
