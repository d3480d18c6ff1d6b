"""HTTP authentication from AuthConfig: none, basic (username + password) or bearer (token), and a back-off per
client for failed logins.

Failed logins (a request carrying credentials that are wrong; a request without any is only a challenge) are
logged at WARNING, at most one line per client a minute with a count of the rest (monitor.web.clients), and
never with what was submitted. After server.auth.max_failures of them within FAILURE_WINDOW a client (its
address, an IPv6 one as its /64) gets 429 with Retry-After on every protected path, the right credentials
included (else the block would not slow a guesser down); each further block lasts twice the one before, up to
MAX_BLOCK. Other clients are unaffected, so a guesser cannot lock the owner out from another address; a
successful login clears the client's record. The credentials can be replaced while serving (update(), on
SIGHUP), the failure records stay.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

from monitor.config.types import AuthConfig
from monitor.web.clients import ClientTable, ClientWarnings, client_key

REALM = "monitor"
FAILURE_WINDOW = 60.0     # seconds in which max_failures failed logins block a client
MAX_BLOCK = 3600.0        # the longest block (the first lasts FAILURE_WINDOW, each next one twice the last)
CLIENTS = 4096            # clients with failures remembered; the least recently seen is dropped (bounded memory)

log = logging.getLogger("monitor.web")


def _same(a: str | bytes, b: str | bytes) -> bool:
    # Hash first: compare_digest is constant-time only for equal lengths, and the digests always are, so the
    # comparison leaks neither the secret's content nor its length.
    da = hashlib.sha256(a.encode("utf-8") if isinstance(a, str) else a).digest()
    db = hashlib.sha256(b.encode("utf-8") if isinstance(b, str) else b).digest()
    return hmac.compare_digest(da, db)


class _Credentials(NamedTuple):
    mode: str
    username: str
    secret: str
    protect_metrics: bool
    max_failures: int


def _credentials(cfg: AuthConfig) -> _Credentials:
    if cfg.mode not in ("none", "basic", "bearer"):
        raise ValueError(f"server.auth.mode: must be none, basic or bearer (got {cfg.mode!r})")
    if cfg.mode != "none" and not cfg.secret:
        raise ValueError(f"server.auth: mode {cfg.mode} needs a non-empty secret "
                         f"({'password_file' if cfg.mode == 'basic' else 'token_file'})")
    return _Credentials(cfg.mode, cfg.username or "", cfg.secret, cfg.protect_metrics, int(cfg.max_failures))


@dataclass
class _Failures:
    count: int = 0                   # failed logins in the window that started at `since`
    since: float = -math.inf
    last: float = -math.inf
    blocked_until: float = -math.inf
    blocks: int = 0                  # blocks so far (each doubles the next); forgotten after MAX_BLOCK of quiet


class Authenticator:
    """Checks the Authorization header of a request against the configured credentials. check() and blocked()
    run on the HTTP server's event loop only; update() may come from any thread (it swaps one tuple)."""

    def __init__(self, cfg: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._creds = _credentials(cfg)
        self._clock = clock
        self._failures: ClientTable[_Failures] = ClientTable(CLIENTS)
        self._warnings = ClientWarnings(log, FAILURE_WINDOW, clock=clock)

    def update(self, cfg: AuthConfig) -> None:
        """Serve with new credentials from now on (SIGHUP re-reads password_file/token_file): the old ones stop
        working at once. Raises ValueError (nothing changed) for a config it cannot serve."""
        self._creds = _credentials(cfg)

    @property
    def mode(self) -> str:
        return self._creds.mode

    @property
    def protect_metrics(self) -> bool:
        return self._creds.protect_metrics

    @property
    def enabled(self) -> bool:
        return self._creds.mode != "none"

    def protects(self, path: str) -> bool:
        """Whether `path` (decoded, without query) needs credentials."""
        creds = self._creds
        if creds.mode == "none" or path == "/healthz":
            return False
        if path == "/metrics":
            return creds.protect_metrics
        return True

    def blocked(self, client: str | None) -> float:
        """Seconds the client at address `client` is still refused for failed logins (0: not blocked)."""
        if not self.enabled or not client:
            return 0.0
        f = self._failures.get(client_key(client))
        return max(0.0, f.blocked_until - self._clock()) if f is not None else 0.0

    def check(self, authorization: str | None, client: str | None = None) -> bool:
        """True when the Authorization header value carries the right credentials (or auth is off). With the
        client's address, a wrong one is a failed login (logged, counted towards a block), a right one clears
        the client's failures."""
        creds = self._creds
        if creds.mode == "none":
            return True
        ok = bool(authorization) and _matches(creds, authorization or "")
        if client and ok:
            self._failures.pop(client_key(client))
        elif client and authorization and authorization.strip():
            self._failed(creds, client_key(client))
        return ok

    def _failed(self, creds: _Credentials, key: str) -> None:
        now = self._clock()
        f = self._failures.setdefault(key, _Failures)
        if now - f.last > MAX_BLOCK:
            f.blocks = 0
        if now - f.since > FAILURE_WINDOW:
            f.count, f.since = 0, now
        f.count += 1
        f.last = now
        self._warnings.warn(key, "auth: failed login from %s (%d within %g s)", key, f.count, FAILURE_WINDOW)
        if creds.max_failures and f.count >= creds.max_failures:
            seconds = min(MAX_BLOCK, FAILURE_WINDOW * 2 ** min(f.blocks, 16))
            f.blocks += 1
            f.blocked_until = f.since = now + seconds
            f.count = 0
            self._warnings.warn(key + " blocked", "auth: %s refused for %g s (429) after %d failed logins "
                                "(server.auth.max_failures)", key, seconds, creds.max_failures)

    @staticmethod
    def retry_after(seconds: float) -> str:
        """The Retry-After value of a 429 for a block with `seconds` left (whole seconds, at least 1)."""
        return str(max(1, math.ceil(seconds)))

    def challenge(self) -> str:
        """The WWW-Authenticate value sent with 401."""
        if self._creds.mode == "basic":
            return f'Basic realm="{REALM}", charset="UTF-8"'
        return f'Bearer realm="{REALM}"'


def _matches(creds: _Credentials, authorization: str) -> bool:
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if creds.mode == "bearer":
        return scheme.lower() == "bearer" and bool(value) and _same(value, creds.secret)
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    user, sep, password = decoded.partition(b":")
    if not sep:
        return False
    # Both compared every time (no short circuit) so timing does not tell which one was wrong.
    user_ok = _same(user, creds.username)
    password_ok = _same(password, creds.secret)
    return user_ok & password_ok
