"""uvicorn's HTTP/1.1 protocol (h11) with the connection limits a daemon on a small box needs.

uvicorn does keep-alive, pipelining, `Expect: 100-continue` and chunked bodies. What it leaves out, added here
as small overrides rather than a server of our own:
- a cap on open connections, checked when a connection is accepted (uvicorn's limit_concurrency answers 503
  per request but still keeps every accepted socket): past the cap a connection gets a 503 and is closed, so
  idle clients cannot use up the process's file descriptors (cameras and SQLite need them);
- a cap per client (server.max_connections_per_client; a client is its address, an IPv6 one its /64, see
  monitor.web.clients), so that one client cannot take the whole cap from the others;
- a reserve for health checks: the last HEALTH_RESERVE slots of the cap, one per client at a time. The target
  is not known when a connection is accepted, so a connection accepted into the reserve is answered for
  /healthz or /readyz only (anything else 503), once, and must send its whole request head within
  first_byte_timeout: however the rest is held, a health check from another client still gets through;
- a deadline for the first byte (FIRST_BYTE_TIMEOUT): a connection that sends nothing is closed silently long
  before the head deadline, so idle sockets do not sit on slots;
- a deadline for a whole request head, counted from the connection's start or the end of the previous
  response (uvicorn arms no timer before the first request, and its keep-alive timer restarts on every byte,
  so a client dripping one byte a second would hold a socket forever): 408, then closed;
- a deadline for a client that reads nothing (stall_timeout, as for live views): a response the client does
  not take (say, pipelined requests whose answers it never reads) would otherwise wait for it forever;
- refusals of malformed requests as JSON with the status h11 means (400, 431 head too large) instead of a
  plain-text 400 for all;
- a request whose client half-closed after sending it is still answered (asyncio would close the socket on
  EOF and drop the answer);
- the asyncio transport in the request scope, for the MJPEG stream's flow control.
"""
from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any, Protocol

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from monitor.web.clients import client_key

log = logging.getLogger("monitor.web")

TRANSPORT_KEY = "monitor.transport"
STREAMING_KEY = "monitor.streaming"        # set by a response that runs until the client leaves
DISCARD_SECONDS = 1.0                      # an unread request body is dropped for this long after the answer ...
DISCARD_BYTES = 1 << 20                    # ... or up to this many bytes, then the connection is closed
# A client writes its request as soon as it is connected (no TLS on this port), so its first byte comes within
# a round trip; 5 s leaves room for two lost segments resent (RTO 1 s, then 2 s: RFC 6298) on a poor link and
# is half the default head_timeout. A browser's speculative connection that is closed unused is reopened.
FIRST_BYTE_TIMEOUT = 5.0
HEALTH_RESERVE = 4                         # slots at the top of max_connections kept for health checks
HEALTH_TARGETS = (b"/healthz", b"/readyz")


class ConnectionSlots:
    """Who holds the server.max_connections slots: `total` in all, `per_client` per client, the last `reserve`
    for health checks, one per client. When the reserve is full, a newcomer takes the place of its oldest
    connection that has not sent a whole request head: a health check sends its request as soon as it is
    connected and is answered at once, so a connection sitting there without one is not a health check in
    progress (and clients squatting on the reserve only displace each other). Used on the server's event loop
    only; its size is bounded by the open connections (a client without any is forgotten)."""

    def __init__(self, total: int, per_client: int, reserve: int) -> None:
        self.total = int(total)
        self.per_client = int(per_client)
        self.reserve = int(reserve)
        self.general = 0
        self.reserved = 0
        self.by_client: dict[str, int] = {}
        self.reserve_holders: dict[str, MonitorProtocol] = {}     # client -> its reserve connection, oldest first
        self.preempted = 0

    def take(self, client: str, conn: MonitorProtocol) -> str:
        """"general" or "reserve" (a slot taken), or why none is left: "per_client" or "total"."""
        held = self.by_client.get(client, 0)
        if held >= self.per_client:
            return "per_client"
        if self.general < self.total - self.reserve:
            self.general += 1
            kind = "general"
        elif client in self.reserve_holders:
            return "total"
        else:
            if self.reserved >= self.reserve:
                idle = next((c for c in self.reserve_holders.values() if c.waiting_for_head()), None)
                if idle is None:
                    return "total"
                idle.preempt()                                  # gives its slot back
                self.preempted += 1
            self.reserved += 1
            self.reserve_holders[client] = conn
            kind = "reserve"
        self.by_client[client] = held + 1
        return kind

    def give_back(self, client: str, kind: str) -> None:
        if kind == "reserve":
            self.reserved -= 1
            self.reserve_holders.pop(client, None)
        else:
            self.general -= 1
        left = self.by_client.get(client, 1) - 1
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)


def health_target(raw_path: bytes) -> bool:
    """Whether a request target (without query; origin- or absolute-form) is exactly /healthz or /readyz."""
    if raw_path[:8].lower().startswith((b"http://", b"https://")):
        rest = raw_path.split(b"://", 1)[1]
        slash = rest.find(b"/")
        raw_path = rest[slash:] if slash >= 0 else b"/"
    return raw_path in HEALTH_TARGETS


class _Connection(h11.Connection):
    """h11's connection that remembers why it refused the peer's data (uvicorn only says "invalid request")."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.last_error = e
            raise


def plain_answer(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 error response with a JSON body, written straight to a transport (no h11 state)."""
    body = json.dumps({"error": message}).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n").encode() + body


class ServerLimits(Protocol):
    """What the protocol uses of its server (monitor.web.server.WebServer, which imports this module)."""
    slots: ConnectionSlots
    first_byte_timeout: float
    head_timeout: float
    stall_timeout: float

    def count(self, status: int) -> None: ...

    def refused_connection(self, client: str, why: str) -> None: ...


class MonitorProtocol(H11Protocol):
    """Subclassed per WebServer with `web` set (see WebServer.start())."""

    web: ServerLimits

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn = _Connection(h11.SERVER, config.h11_max_incomplete_event_size)
        self._refused = False
        self._peer_eof = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_limit = 0.0                # seconds the pending head deadline allows (for the 408's text)
        self._discarding = False
        self._discarded = 0
        self._client = "-"
        self._slot: str | None = None         # "general" or "reserve" while the connection holds one
        self._slots: ConnectionSlots | None = None
        self._silent = True                   # nothing received yet
        self._opened = 0.0
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stall_mark = 0
        self._full_app: Any = None

    # -- connection caps ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        web = self.web
        peer = transport.get_extra_info("peername")
        self._client = client_key(peer[0] if isinstance(peer, tuple) and peer else None)
        slots: ConnectionSlots = web.slots
        self.transport = transport
        kind = slots.take(self._client, self)
        if kind not in ("general", "reserve"):
            self._refused = True
            web.refused_connection(self._client, kind)
            if kind == "per_client":
                message = ("too many open connections from your address "
                           f"(server.max_connections_per_client: {slots.per_client})")
            else:
                message = f"too many open connections (server.max_connections: {slots.total})"
            transport.write(plain_answer(503, message, {"retry-after": "2"}))
            transport.close()
            return
        self._slot, self._slots = kind, slots
        super().connection_made(transport)
        if kind == "reserve":
            self._full_app, self.app = self.app, self._health_only   # uvicorn runs self.app for each request
        self._opened = self.loop.time()
        self._arm_head_timer(web.first_byte_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_stall_timer()
        if self._refused:
            return
        self._give_back()
        super().connection_lost(exc)

    def _give_back(self) -> None:
        if self._slot is not None and self._slots is not None:
            self._slots.give_back(self._client, self._slot)
            self._slot = None

    def waiting_for_head(self) -> bool:
        """No whole request head received yet (and not closing)."""
        return self.cycle is None and not self.transport.is_closing()

    def preempt(self) -> None:
        """Closed to make room in the health-check reserve (ConnectionSlots): the slot is free at once."""
        self._give_back()
        log.debug("http: %s: no request on a health-check slot another client needs; closed", self._peer())
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._silent:
            self._silent = False
            if self._slot == "general":       # a reserve connection keeps first_byte_timeout for its whole head
                self._arm_head_timer(max(0.001, self.web.head_timeout - (self.loop.time() - self._opened)),
                                     self.web.head_timeout)
        if self._discarding:
            self._discarded += len(data)
            if self._discarded > DISCARD_BYTES:
                self.transport.close()
                return
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused or self.cycle is None or self.cycle.response_complete:
            return None                               # nothing in flight: close (a partial head is dropped)
        if self.cycle.scope.get("extensions", {}).get(STREAMING_KEY):
            return None                               # a live view's viewer left: close, the stream ends
        self._peer_eof = True
        if self.cycle.more_body:
            # The body can never complete: h11 turns the EOF into its error, answered by send_400_response.
            self.conn.receive_data(b"")
            self.handle_events()
        return True                                   # keep the socket open to send the answer

    # -- request head deadline ---------------------------------------------------------------------------------

    def _arm_head_timer(self, seconds: float | None = None, limit: float | None = None) -> None:
        self._cancel_head_timer()
        self._head_limit = limit or seconds or self.web.head_timeout
        self._head_timer = self.loop.call_later(seconds or self.web.head_timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        partial = bool(self.conn.trailing_data[0]) and not self._discarding
        if partial:
            self.web.count(408)
            log.debug("http: %s: no complete request head within %g s; closed", self._peer(), self._head_limit)
            self.transport.write(plain_answer(408, f"request head not received within {self._head_limit:g} s"))
        elif self._silent:
            log.debug("http: %s: sent nothing within %g s; closed", self._peer(), self._head_limit)
        self.transport.close()

    # -- a client that takes nothing -----------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._stall_mark = self.transport.get_write_buffer_size()
        self._cancel_stall_timer()
        self._stall_timer = self.loop.call_later(self.web.stall_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_stall_timer()

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _write_stalled(self) -> None:
        self._stall_timer = None
        if self.transport.is_closing() or not self.flow.write_paused:
            return
        queued = self.transport.get_write_buffer_size()
        streaming = self.cycle is not None and self.cycle.scope.get("extensions", {}).get(STREAMING_KEY)
        if queued < self._stall_mark or streaming:
            # It took some (a slow link: give it another period), or it is a live view (StreamHub drops stalled
            # viewers itself, counting them).
            self._stall_mark = queued
            self._stall_timer = self.loop.call_later(self.web.stall_timeout, self._write_stalled)
            return
        log.debug("http: %s: took nothing of %d queued bytes in %g s; connection aborted", self._peer(), queued,
                  self.web.stall_timeout)
        self.transport.abort()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self.cycle is not None:
            self._cancel_head_timer()
            self._discarding = False
            self._discarded = 0
            extensions = self.cycle.scope.setdefault("extensions", {})  # type: ignore[typeddict-item]
            extensions[TRANSPORT_KEY] = self.transport

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            if self._peer_eof:
                rest = self.conn.trailing_data[0]
                if b"\r\n\r\n" not in rest and b"\n\n" not in rest:
                    self.transport.close()            # the client sent all it will: no whole request is left
                    return
            if self.conn.their_state is h11.SEND_BODY:
                # Answered before the body was read (413, 401, 404...): take in and drop a little of the rest
                # so the client reads the answer (closing at once would reset the connection), then close.
                self._discarding = True
                self._arm_head_timer(DISCARD_SECONDS)
            else:
                self._discarding = False
                self._arm_head_timer()
        super().on_response_complete()

    # -- the health-check reserve ------------------------------------------------------------------------------

    async def _health_only(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The application of a connection in the reserve: /healthz and /readyz, then the connection closes."""
        if scope["type"] != "http" or not health_target(scope.get("raw_path") or b""):
            self.web.count(503)
            log.debug("http: %s %s %r on a health-check slot -> 503", self._peer(), scope.get("method"),
                      (scope.get("raw_path") or b"")[:200])
            body = json.dumps({"error": "server busy: only /healthz and /readyz are answered now "
                                        "(server.max_connections reached)"}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"), (b"retry-after", b"2")]})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return

        async def closing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"connection" for k, _ in headers):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self._full_app(scope, receive, closing)

    # -- refusals ----------------------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        error = self.conn.last_error if isinstance(self.conn, _Connection) else None
        # h11's hint is 431 for a head too large; its 501 (a transfer coding other than chunked) is answered 400
        # like every other request it cannot read: 5xx stays for what the server itself fails at.
        status = 431 if error is not None and error.error_status_hint == 431 else 400
        text = str(error) if error is not None else msg
        if status == 431:
            message = f"request head larger than {self.config.h11_max_incomplete_event_size} bytes"
        elif "without sending complete message body" in text:
            message = f"request body ended early: {text}"
        else:
            message = f"malformed HTTP request: {text}"
        self.web.count(status)
        log.debug("http: %s: %d %s", self._peer(), status, message)
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()                    # an answer is already on its way: it cannot be replaced
            return
        self.transport.write(plain_answer(status, message))
        self.transport.close()

    def _peer(self) -> str:
        return "%s:%d" % self.client if self.client else "-"
