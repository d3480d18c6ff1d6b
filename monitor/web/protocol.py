"""uvicorn's HTTP/1.1 protocol (h11) with the connection limits a daemon on a small box needs.

uvicorn does keep-alive, pipelining, `Expect: 100-continue` and chunked bodies. What it leaves out, added here
as small overrides rather than a server of our own:
- a cap on open connections, checked when a connection is accepted (uvicorn's limit_concurrency answers 503
  per request but still keeps every accepted socket): past the cap a connection gets a 503 and is closed, so
  idle clients cannot use up the process's file descriptors (cameras and SQLite need them);
- a deadline for a whole request head, counted from the connection's start or the end of the previous
  response (uvicorn arms no timer before the first request, and its keep-alive timer restarts on every byte,
  so a client dripping one byte a second would hold a socket forever): 408, then closed;
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
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("monitor.web")

TRANSPORT_KEY = "monitor.transport"
STREAMING_KEY = "monitor.streaming"        # set by a response that runs until the client leaves
DISCARD_SECONDS = 1.0                      # an unread request body is dropped for this long after the answer ...
DISCARD_BYTES = 1 << 20                    # ... or up to this many bytes, then the connection is closed


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


class MonitorProtocol(H11Protocol):
    """Subclassed per WebServer with `web` set (see WebServer._protocol_class)."""

    web: Any = None

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn = _Connection(h11.SERVER, config.h11_max_incomplete_event_size)
        self._refused = False
        self._peer_eof = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._discarding = False
        self._discarded = 0

    # -- connection cap ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self.web.max_connections
        if len(self.connections) >= cap:
            self._refused = True
            self.transport = transport
            self.web.refused_connection()
            transport.write(plain_answer(503, f"too many open connections (server.max_connections: {cap})",
                                         {"retry-after": "2"}))
            transport.close()
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
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

    def _arm_head_timer(self, seconds: float | None = None) -> None:
        self._cancel_head_timer()
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
            log.debug("http: %s: no complete request head within %g s; closed", self._peer(), self.web.head_timeout)
            self.transport.write(plain_answer(408, f"request head not received within {self.web.head_timeout:g} s"))
        self.transport.close()

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

    # -- refusals ----------------------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        error = getattr(self.conn, "last_error", None)
        # h11's hint is 431 for a head too large; its 501 (a transfer coding other than chunked) is answered 400
        # like every other request it cannot read: 5xx stays for what the server itself fails at.
        status = 431 if getattr(error, "error_status_hint", 400) == 431 else 400
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
