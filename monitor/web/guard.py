"""The ASGI layer in front of the FastAPI application: what every request goes through first.

In order: HTTP versions other than 1.x (505), too many header lines (431), the host the request is for (421),
cross-site requests that could change something (403), methods HTTP does not define (501), the request target
(absolute-form accepted; path tricks such as encoded slashes, dot segments, NUL or backslashes are 404 before
any routing), authentication (429 for a client with too many failed logins, else 401, the same answer for every
path), the route table (404, 405 with Allow), the query string (400). Every answer is counted by status code in
monitor_http_requests_total and logged at debug with its request line.

Host (421, DNS rebinding): a page on a name its owner controls can point that name at this machine and then
read and write the daemon from the victim's browser as its own origin; the browser still says that name in
Host. Only IP literals, `localhost`, server.host and server.allowed_hosts are answered, with any port, on
every route (/healthz too: probes use an IP or localhost). A request without Host (HTTP/1.0; h11 refuses it on
1.1) is answered: browsers always send one. In absolute-form the target's authority is the host.

Cross-site (403, CSRF): browsers send cached Basic credentials with another site's form posts and no-cors
fetches. Every method but GET, HEAD and OPTIONS must come from this origin: `Sec-Fetch-Site` (set by the
browser, never by a page) same-origin or none decides when present; else an `Origin` must be this server's
scheme, host and port exactly (`null`, several, or anything else: refused); a request with neither comes
from no browser (curl, scripts) and passes. Auth mode does not matter: with auth off the browser needs no
credentials at all.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import re
import urllib.parse
from typing import Any, Callable

from monitor.web.app import Route
from monitor.web.auth import Authenticator
from monitor.web.deps import HEAD_KEY
from monitor.web.errors import ApiError

log = logging.getLogger("monitor.web")

# RFC 9110 section 9 and RFC 5789: the methods HTTP defines; any other is 501.
STANDARD_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
MAX_HEADERS = 100
HEAD_MAX_BYTES = 64 * 1024    # request line + header lines (h11 applies its limit only to a head still arriving)
MAX_QUERY_FIELDS = 16
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))      # exact spelling: "post" is not safe either
SAME_ORIGIN_SITES = frozenset(("same-origin", "none"))     # Sec-Fetch-Site values of this origin or the user
DEFAULT_PORTS = {"http": 80, "https": 443}
# uri-host [":" port] (RFC 9110 section 7.2): an IPv6 literal in brackets or a name / IPv4 literal; nothing else.
_AUTHORITY_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]{2,45})\]|(?P<name>[A-Za-z0-9._-]{1,253}))(?::(?P<port>[0-9]{0,5}))?")
_ORIGIN_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)")


def clean_path(raw: bytes) -> str:
    """The decoded path of a request target (origin-form or absolute-form); ApiError 404 for anything that could
    be a path trick."""
    text = raw.decode("latin-1")
    low = text.lower()
    if low.startswith(("http://", "https://")):               # absolute-form (RFC 9112 section 3.2.2)
        rest = text.split("://", 1)[1]
        slash = rest.find("/")
        text = rest[slash:] if slash >= 0 else "/"
        low = text.lower()
    if not text.startswith("/"):
        raise ApiError(404, "not found")
    if "\\" in text or "\x00" in text or "%2f" in low or "%5c" in low or "%00" in low:
        raise ApiError(404, "not found")
    try:
        path = urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ApiError(404, "not found") from None
    if "\\" in path or "\x00" in path or "//" in path or any(c < " " or c == "\x7f" for c in path):
        raise ApiError(404, "not found")
    if any(seg in (".", "..") for seg in path.split("/")):
        raise ApiError(404, "not found")
    return path


def parse_authority(text: str, scheme: str = "http") -> tuple[str, int] | None:
    """(host, port) of a Host value or an origin's authority, the host lower-case and an IP literal in its
    canonical form ("[::1]", "127.0.0.1"), the port defaulted from `scheme`; None when it is not one."""
    m = _AUTHORITY_RE.fullmatch(text)
    if m is None:
        return None
    port_text = m.group("port")
    port = int(port_text) if port_text else DEFAULT_PORTS.get(scheme, 0)     # "host:" is the default port
    if port_text and not 0 < port < 65536:
        return None
    if m.group("v6") is not None:
        try:
            return f"[{ipaddress.IPv6Address(m.group('v6')).compressed}]", port
        except ValueError:
            return None
    name = m.group("name").lower()
    if name.replace(".", "").isdigit():
        try:
            name = str(ipaddress.IPv4Address(name))    # strict dotted quad: no 127.1, no octal, no hex
        except ValueError:
            return None
    return name, port


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


def allowed_host_names(server_host: str, allowed: tuple[str, ...] | list[str]) -> frozenset[str]:
    """The names a Host header may carry besides IP literals: localhost, server.host when it is a name, and
    server.allowed_hosts. *.localhost is not among them: only some resolvers keep it on loopback."""
    names = {"localhost", *(a.lower() for a in allowed)}
    if server_host and not is_ip_literal(server_host.strip("[]")) and server_host.strip():
        names.add(server_host.lower())
    return frozenset(names)


def _headers(scope: dict[str, Any], name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope["headers"] if k == name]


def _snippet(text: str) -> str:
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def request_authority(scope: dict[str, Any]) -> tuple[str, str | None]:
    """(scheme, authority) the request is addressed to: the target's in absolute-form (RFC 9112 section
    3.2.2: Host is then ignored), else the Host header's; authority None when there is no Host (HTTP/1.0).
    ApiError 400 for several Host headers (h11 refuses them first; kept in case that changes)."""
    target = (scope.get("raw_path") or b"").decode("latin-1")
    m = _ORIGIN_RE.match(target)
    if m is not None and m.group("scheme").lower() in DEFAULT_PORTS:
        return m.group("scheme").lower(), m.group("authority")
    hosts = _headers(scope, b"host")
    if len(hosts) > 1:
        raise ApiError(400, "more than one Host header")
    return scope.get("scheme", "http"), (hosts[0].strip() if hosts else None)


def cross_site_reason(scope: dict[str, Any], scheme: str, authority: str | None) -> str | None:
    """Why a request that may change state is not from this origin, or None when it is (or is from no
    browser at all)."""
    sites = _headers(scope, b"sec-fetch-site")
    origins = _headers(scope, b"origin")
    if len(sites) > 1 or len(origins) > 1:
        return "more than one Origin or Sec-Fetch-Site header"
    if sites:
        # The browser computes it from the initiator, redirects included, and pages cannot set it: it
        # decides (an Origin behind a TLS proxy may legitimately differ from the Host the proxy passes on).
        site = sites[0].strip().lower()
        return None if site in SAME_ORIGIN_SITES else f"Sec-Fetch-Site: {_snippet(site)}"
    if not origins:
        return None                                           # not a browser: curl, scripts, probes
    origin = origins[0].strip()
    m = _ORIGIN_RE.fullmatch(origin)
    theirs = parse_authority(m.group("authority"), m.group("scheme").lower()) if m is not None else None
    ours = parse_authority(authority, scheme) if authority is not None else None
    if theirs is None or ours is None or m.group("scheme").lower() != scheme or theirs != ours:
        return f"Origin {_snippet(origin)} is not this server's origin"
    return None


class Guard:
    """ASGI middleware: refusals before the application, counting and logging of every answer.

    `app` is the FastAPI application and `routes` its route table; `host_names` the names answered besides IP
    literals (allowed_host_names()); `count(status)` is called once for every answer."""

    def __init__(self, app: Callable[..., Any], routes: tuple[Route, ...], auth: Authenticator,
                 host_names: frozenset[str], count: Callable[[int], None]) -> None:
        self.app = app
        self.routes = routes
        self.auth = auth
        self.host_names = host_names
        self.count = count

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
                self.count(message["status"])
            await send(message)

        try:
            inner = self._check(scope)
        except ApiError as r:
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
            raise ApiError(505, f"HTTP version {version!r} is not supported (use HTTP/1.x)")
        if len(scope["headers"]) > MAX_HEADERS:
            raise ApiError(431, f"more than {MAX_HEADERS} header lines")
        size = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) + sum(
            len(k) + len(v) + 4 for k, v in scope["headers"])
        if size > HEAD_MAX_BYTES:
            raise ApiError(431, f"request head larger than {HEAD_MAX_BYTES} bytes")
        # Before anything that depends on the method, the path or the credentials: a rebinding page or another
        # site learns nothing, whatever it asks.
        scheme, authority = request_authority(scope)
        self._check_host(authority)
        if method not in SAFE_METHODS:
            reason = cross_site_reason(scope, scheme, authority)
            if reason is not None:
                raise ApiError(403, f"cross-site request refused: {reason} (state-changing requests must come "
                                   f"from the daemon's own page, or from a client that sends no Origin)")
        if method not in STANDARD_METHODS:
            raise ApiError(501, f"method {method[:40]!r} is not supported")
        path = clean_path(scope.get("raw_path") or scope["path"].encode())
        auth = self.auth
        if auth.protects(path):
            client = (scope.get("client") or (None,))[0]
            if wait := auth.blocked(client):      # too many failed logins from this client (auth.py)
                raise ApiError(429, "too many failed logins from your address",
                              {"Retry-After": auth.retry_after(wait)})
            header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if not auth.check(header.decode("latin-1") if header is not None else None, client):
                raise ApiError(401, "authentication required", {"WWW-Authenticate": auth.challenge()})
        route = next((r for r in self.routes if r.pattern.match(path)), None)
        if route is None:
            raise ApiError(404, "not found")
        if method not in route.methods:
            raise ApiError(405, f"method {method} not allowed on {path}", {"Allow": ", ".join(route.methods)})
        try:
            urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True,
                                  max_num_fields=MAX_QUERY_FIELDS, errors="strict")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "malformed query string") from None
        inner = dict(scope, path=path, raw_path=path.encode("utf-8"))
        if method == "HEAD":
            # FastAPI routes are declared for GET; uvicorn still drops the body (its own scope says HEAD).
            inner["method"] = "GET"
            inner[HEAD_KEY] = True
        return inner

    def _check_host(self, authority: str | None) -> None:
        """ApiError 421 unless the request is for an IP literal or an allowed name (or names no host)."""
        if authority is None:
            return
        parsed = parse_authority(authority)
        if parsed is None:
            raise ApiError(421, f"malformed host {_snippet(authority)} (expected a name or IP address, "
                               f"optionally with :port)")
        host = parsed[0]
        if is_ip_literal(host) or host in self.host_names:
            return
        raise ApiError(421, f"host {_snippet(host)} is not served here (IP addresses, localhost, server.host "
                           f"and server.allowed_hosts are; add the name to server.allowed_hosts)")


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
