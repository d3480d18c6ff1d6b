"""Apprise URLs as the config reads them (checked by Apprise itself at load time), and what of them may be shown.

An Apprise URL is a credential more than an address: its host is a Telegram bot token or a Pushover app token,
its path an ntfy topic or a Discord webhook token. No pattern tells them from harmless parts, so:
  - shown_url() names a URL by its service and scheme only ("Telegram (tgram://…)"), for logs and errors;
  - secret_words() lists the literal secrets of a URL (what Apprise's own privacy mode hides, the password, every
    path segment, the host of the services whose host is a token) for monitor.core.redact.SECRETS, so that a
    line quoting one (Apprise's own log lines, an exception from the HTTP library) is redacted too.
Apprise is imported on first use: it loads its ~190 plugins (0.2 s), which a config without notify never needs.
"""
from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from monitor.config.fields import problem
from monitor.core.redact import SECRETS

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31})://")
_TOKEN_SPLIT = re.compile(r"[/?&=#@,;: ]+")
# Values that no service treats as a secret and that are everywhere in logs: hiding them would mangle lines
_HARMLESS = frozenset({"true", "false", "yes", "no", "on", "off", "post", "get", "json", "text", "html",
                       "markdown", "default", "normal", "high", "low", "insecure", "starttls", "ssl", "upstream",
                       "localhost", "private", "public", "basic", "none"})
_MAX_URLS_FILE = 64 * 1024


def _apprise() -> Any:
    import apprise
    return apprise


@lru_cache(maxsize=1)
def _schemes() -> frozenset[str]:
    _apprise()
    from apprise.manager_plugins import NotificationManager   # a singleton: the plugins Apprise loaded
    return frozenset(str(s).lower() for s in NotificationManager().schemas())


def scheme_of(url: str) -> str:
    m = _SCHEME.match(url.strip())
    return m.group(1).lower() if m else ""


def check_apprise_url(value: Any, where: str = "") -> str:
    """The URL, stripped, when Apprise can load it; else a config problem naming only its scheme."""
    if not isinstance(value, str) or not value.strip():
        raise problem(f"{where}must be an Apprise URL such as ntfys://ntfy.sh/my-topic", show_value=False)
    url = value.strip()
    scheme = scheme_of(url)
    if not scheme:
        raise problem(f"{where}must be an Apprise URL (service://...), e.g. ntfys://ntfy.sh/my-topic",
                      show_value=False)
    if scheme not in _schemes():
        close = difflib.get_close_matches(scheme, sorted(_schemes()), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise problem(f"{where}unknown Apprise service {scheme!r}{hint} "
                      "(https://github.com/caronc/apprise/wiki lists them)", show_value=False)
    if _instantiate(url) is None:
        raise problem(f"{where}Apprise cannot use this {scheme}:// URL (its form for the service: "
                      "https://github.com/caronc/apprise/wiki; the URL is not shown, it may hold a token)",
                      show_value=False)
    return url


def read_urls_file(file: Path) -> list[str]:
    """The Apprise URLs of `file`, one a line (blank lines and # comments skipped). Errors name urls_file and
    the line, never a URL."""
    try:
        with open(file, "rb") as f:
            data = f.read(_MAX_URLS_FILE + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = {FileNotFoundError: "no such file", IsADirectoryError: "is a directory",
               PermissionError: "permission denied", UnicodeDecodeError: "not UTF-8 text"}.get(
            type(exc), getattr(exc, "strerror", None) or str(exc))
        raise problem(f"cannot read '{file}': {why}", show_value=False, sibling="urls_file") from None
    if len(data) > _MAX_URLS_FILE:
        raise problem(f"'{file}' is larger than {_MAX_URLS_FILE // 1024} KiB", show_value=False,
                      sibling="urls_file")
    urls = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            urls.append(check_apprise_url(line, f"'{file}' line {number}: "))
        except Exception as exc:
            context = getattr(exc, "context", None) or {}
            raise problem(context.get("message", "bad URL"), show_value=False, sibling="urls_file") from None
    if not urls:
        raise problem(f"'{file}' holds no URL", show_value=False, sibling="urls_file")
    return urls


def shown_url(url: str) -> str:
    """How a URL appears in logs, errors and the API: its service and scheme, nothing that could be a token."""
    scheme = scheme_of(url) or "?"
    try:
        plugin = _instantiate(url)
    except Exception:
        plugin = None
    service = str(getattr(plugin, "service_name", "") or "")
    return f"{service} ({scheme}://…)" if service else f"{scheme}://…"


def _instantiate(url: str) -> Any:
    """Apprise's plugin for `url`, or None. Apprise logs the URL while it parses it ("Loaded JSON URL: ..." at
    debug, the path included): its secrets as the URL's form shows them are held hidden meanwhile."""
    with SECRETS.held(_written_secrets(url)):
        return _apprise().Apprise.instantiate(url)


def _tokens(url: str) -> set[str]:
    out: set[str] = set()
    for part in _TOKEN_SPLIT.split(url):
        for piece in {part, unquote(part)}:
            out.add(piece)
            out.update(_TOKEN_SPLIT.split(piece))   # a percent-encoded ":" or "/" inside
    return {t for t in out if t}


def secret_words(url: str) -> set[str]:
    """The literal secrets of an Apprise URL, generously: hiding a harmless word costs a little debugging,
    showing a token costs the account."""
    words = _written_secrets(url)
    try:
        plugin = _instantiate(url)
        if plugin is not None:
            # what Apprise itself hides in its privacy form: the tokens it knows to be secret
            words |= _keep(_tokens(plugin.url(privacy=False)) - _tokens(plugin.url(privacy=True)))
    except Exception:
        pass
    return words


def _keep(words: set[str]) -> set[str]:
    return {w for w in words if w and w.lower() not in _HARMLESS and (not w.isdigit() or len(w) >= 6)}


def _written_secrets(url: str) -> set[str]:
    """The secrets the URL's form gives away: password, token hosts, path segments, query values."""
    words: set[str] = set()
    url = url.strip()
    scheme = scheme_of(url)
    rest = url[len(scheme) + 3:] if scheme else url
    parts = re.match(r"([^/?#]*)([^?#]*)(?:\?([^#]*))?", rest)
    authority, path, query = (parts.group(1), parts.group(2), parts.group(3) or "") if parts else (rest, "", "")
    userinfo, at, host = authority.rpartition("@")
    if at:
        user, _, password = userinfo.partition(":")
        words.update({password, unquote(password), userinfo, unquote(userinfo)})
        if not host or "." not in host:
            words.add(user)          # pover://USER_KEY@APP_TOKEN: the "user" is a key
    # A host without a dot that is not an IP or localhost is a token (tgram://BOT_TOKEN, pover, discord ids).
    hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 and not host.endswith("]") else host
    if hostname and "." not in hostname and hostname.lower() != "localhost" and not hostname.startswith("["):
        words.update({host, unquote(host), hostname})
    for segment in path.split("/"):
        words.update({segment, unquote(segment)})
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key.lower() not in ("from", "to", "cc", "bcc", "smtp", "name", "format", "mode", "priority"):
            words.update({value, unquote(value)})
    return _keep(words)
