"""The ASGI layer in front of the FastAPI application: what every request goes through first.

In order: HTTP versions other than 1.x (505), methods HTTP does not define (501), too many header lines (431),
the request target (absolute-form accepted; path tricks such as encoded slashes, dot segments, NUL or
backslashes are 404 before any routing), authentication (401, the same answer for every path), the route
table (404, 405 with Allow), the query string (400). Every answer is counted by status code in
monitor_http_requests_total and logged at debug with its request line.
"""
from __future__ import annotations

import json
import logging
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable

from monitor.web.app import HEAD_KEY, Route

if TYPE_CHECKING:
    from monitor.web.server import WebServer

log = logging.getLogger("monitor.web")

# RFC 9110 section 9 and RFC 5789: the methods HTTP defines; any other is 501.
STANDARD_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
MAX_HEADERS = 100
HEAD_MAX_BYTES = 64 * 1024    # request line + header lines (h11 applies its limit only to a head still arriving)
MAX_QUERY_FIELDS = 16


class Refusal(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def clean_path(raw: bytes) -> str:
    """The decoded path of a request target (origin-form or absolute-form); Refusal 404 for anything that could
    be a path trick."""
    text = raw.decode("latin-1")
    low = text.lower()
    if low.startswith(("http://", "https://")):               # absolute-form (RFC 9112 section 3.2.2)
        rest = text.split("://", 1)[1]
        slash = rest.find("/")
        text = rest[slash:] if slash >= 0 else "/"
        low = text.lower()
    if not text.startswith("/"):
        raise Refusal(404, "not found")
    if "\\" in text or "\x00" in text or "%2f" in low or "%5c" in low or "%00" in low:
        raise Refusal(404, "not found")
    try:
        path = urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise Refusal(404, "not found") from None
    if "\\" in path or "\x00" in path or "//" in path or any(c < " " or c == "\x7f" for c in path):
        raise Refusal(404, "not found")
    if any(seg in (".", "..") for seg in path.split("/")):
        raise Refusal(404, "not found")
    return path


class Guard:
    """ASGI middleware: refusals before the application, counting and logging of every answer."""

    def __init__(self, web: WebServer, app: Callable[..., Any], routes: tuple[Route, ...]) -> None:
        self.web = web
        self.app = app
        self.routes = routes

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return                                            # no lifespan, no websockets
        method = scope["method"]
        target = scope.get("raw_path", b"").decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        started = [0]

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started[0] = message["status"]
                self.web.count(message["status"])
            await send(message)

        try:
            inner = self._check(scope)
        except Refusal as r:
            log.debug("http: %s %s %s HTTP/%s -> %d", _peer(scope), method, target, scope.get("http_version"),
                      r.status)
            await _answer(counted, r.status, r.message, r.headers)
            return
        try:
            await self.app(inner, receive, counted)
        except Exception as exc:                              # the app's handler logged it and answered 500
            if not started[0]:
                log.error("http: error answering %s %s", method, target[:200], exc_info=exc)
                await _answer(counted, 500, "internal error (see the daemon's log)")
        log.debug("http: %s %s %s HTTP/%s -> %d", _peer(scope), method, target, scope.get("http_version"),
                  started[0])

    def _check(self, scope: dict[str, Any]) -> dict[str, Any]:
        method = scope["method"]
        version = scope.get("http_version", "1.1")
        if version not in ("1.0", "1.1"):
            raise Refusal(505, f"HTTP version {version!r} is not supported (use HTTP/1.x)")
        if method not in STANDARD_METHODS:
            raise Refusal(501, f"method {method[:40]!r} is not supported")
        if len(scope["headers"]) > MAX_HEADERS:
            raise Refusal(431, f"more than {MAX_HEADERS} header lines")
        size = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) + sum(
            len(k) + len(v) + 4 for k, v in scope["headers"])
        if size > HEAD_MAX_BYTES:
            raise Refusal(431, f"request head larger than {HEAD_MAX_BYTES} bytes")
        path = clean_path(scope.get("raw_path") or scope["path"].encode())
        auth = self.web.auth
        if auth.protects(path):
            client = (scope.get("client") or (None,))[0]
            if wait := auth.blocked(client):      # too many failed logins from this client (auth.py)
                raise Refusal(429, "too many failed logins from your address",
                              {"Retry-After": auth.retry_after(wait)})
            header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if not auth.check(header.decode("latin-1") if header is not None else None, client):
                raise Refusal(401, "authentication required", {"WWW-Authenticate": auth.challenge()})
        route = next((r for r in self.routes if r.pattern.match(path)), None)
        if route is None:
            raise Refusal(404, "not found")
        if method not in route.methods:
            raise Refusal(405, f"method {method} not allowed on {path}", {"Allow": ", ".join(route.methods)})
        try:
            urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True,
                                  max_num_fields=MAX_QUERY_FIELDS, errors="strict")
        except (ValueError, UnicodeDecodeError):
            raise Refusal(400, "malformed query string") from None
        inner = dict(scope, path=path, raw_path=path.encode("utf-8"))
        if method == "HEAD":
            # FastAPI routes are declared for GET; uvicorn still drops the body (its own scope says HEAD).
            inner["method"] = "GET"
            inner[HEAD_KEY] = True
        return inner


def _peer(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


async def _answer(send: Callable[..., Any], status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
