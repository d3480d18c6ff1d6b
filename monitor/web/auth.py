"""HTTP authentication from AuthConfig: none, basic (username + password) or bearer (token)."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from monitor.config.types import AuthConfig

REALM = "monitor"


def _same(a: str | bytes, b: str | bytes) -> bool:
    # Hash first: compare_digest is constant-time only for equal lengths, and the digests always are, so the
    # comparison leaks neither the secret's content nor its length.
    da = hashlib.sha256(a.encode("utf-8") if isinstance(a, str) else a).digest()
    db = hashlib.sha256(b.encode("utf-8") if isinstance(b, str) else b).digest()
    return hmac.compare_digest(da, db)


class Authenticator:
    """Checks the Authorization header of a request against the configured credentials."""

    def __init__(self, cfg: AuthConfig) -> None:
        if cfg.mode not in ("none", "basic", "bearer"):
            raise ValueError(f"server.auth.mode: must be none, basic or bearer (got {cfg.mode!r})")
        if cfg.mode != "none" and not cfg.secret:
            raise ValueError(f"server.auth: mode {cfg.mode} needs a non-empty secret "
                             f"({'password_file' if cfg.mode == 'basic' else 'token_file'})")
        self.mode = cfg.mode
        self.protect_metrics = cfg.protect_metrics
        self._username = cfg.username
        self._secret = cfg.secret

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def protects(self, path: str) -> bool:
        """Whether `path` (decoded, without query) needs credentials."""
        if not self.enabled or path == "/healthz":
            return False
        if path == "/metrics":
            return self.protect_metrics
        return True

    def check(self, authorization: str | None) -> bool:
        """True when the Authorization header value carries the right credentials (or auth is off)."""
        if not self.enabled:
            return True
        if not authorization:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if self.mode == "bearer":
            return scheme.lower() == "bearer" and bool(value) and _same(value, self._secret)
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
        user_ok = _same(user, self._username)
        password_ok = _same(password, self._secret)
        return user_ok & password_ok

    def challenge(self) -> str:
        """The WWW-Authenticate value sent with 401."""
        if self.mode == "basic":
            return f'Basic realm="{REALM}", charset="UTF-8"'
        return f'Bearer realm="{REALM}"'
