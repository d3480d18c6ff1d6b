"""Strip secrets from URLs and text before they reach logs, errors, the API, MQTT or metrics.

Three kinds of secret are hidden, wherever they stand in the text:
  - the user:password part of a URL (`rtsp://admin:pw@cam/live` -> `rtsp://***@cam/live`), also when the
    password holds a raw '@', ':', '/' or a space;
  - the value of a secret-like key (`?user=admin&pwd=s3cret` -> `?user=admin&pwd=***`): in a query, a fragment,
    `;` parameters, percent-encoded keys and separators, a quoted JSON/Python key (`"token": "..."`), or free text
    (FFmpeg logs request lines without the scheme);
  - the credentials of an Authorization header (`Authorization: Basic ...`).
url_origin() gives the scheme://host:port of a URL, for URLs whose path itself may be a secret (webhooks).
Secrets no pattern can tell (an Apprise URL's bot token, ntfy topic or webhook path) are told: a sink holding
them registers them with SECRETS while it lives, and redact_url hides every literal occurrence.

Every function is linear in the length of its input (a regex that backtracks over long runs would let a 64 KiB
request line, logged at debug level, cost seconds of CPU under the logging lock).
"""
from __future__ import annotations

import re
import threading
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterable, Iterator
from urllib.parse import quote, quote_plus, unquote, urlsplit

MASK = "***"

_WORD = re.compile(r"\S+")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_SCHEME_MAX = 32
_SLASHLESS = re.compile(r"(?i)(?<![A-Za-z0-9+.-])(?:rtsps?|https?|mqtts?|rtmps?|ftp):(?!/)")
_SPAN_AHEAD = 128       # a password holding spaces: how far past the end of the word its '@' may stand

# Secret-like keys, compared after percent-decoding, lower-casing and dropping "-", "_", ".", "[", "]", " ".
# Generous on purpose: hiding a harmless value costs a little debugging, showing a secret costs the camera.
_SECRET_PARTS = ("pass", "pwd", "pswd", "passwd", "token", "secret", "apikey", "auth", "sig", "credential",
                 "session", "sessid", "cookie", "jwt", "bearer", "private", "privkey", "hmac", "otp", "loginpas")
_SECRET_KEYS = frozenset({"p", "pw", "pin", "key", "sid", "code", "ticket", "psk", "response", "hash", "salt",
                          "nonce", "cnonce", "xsrf", "csrf"})
_KEY_DROP = str.maketrans("", "", "-_.[] ")
_KEY_SPLIT = re.compile(r"[?&;#/=]")        # a decoded key may still carry the URL it was nested in
_KEY_CHARS = r"\w.%\-\[\]"
# key=value and key%3Dvalue; a key starts after any character that cannot be part of a key, or after an
# encoded separator (%26 &, %3F ?, %3B ;, %23 #, %2F /) of a URL nested in another one's query.
_KEY_VALUE = re.compile(
    rf"(?:(?<![{_KEY_CHARS}])|(?<=%26)|(?<=%3[FfBb])|(?<=%23)|(?<=%2[Ff]))([{_KEY_CHARS}]{{1,64}}?)(=|%3[Dd])")
# "key": "value" and 'key': 'value' (JSON, Python reprs); it starts at a quote, so a long run costs nothing
_QUOTED = re.compile(r"""(?<![\w.\-])(["'])([\w.\-]{1,64})\1(\s*:\s*)(["'])((?:\\.|(?!\4)[^\\\n]){0,4096})\4""")
_AUTH_HEADER = re.compile(r"(?i)\b((?:proxy-)?authorization\s*:\s*)(?:((?:basic|bearer|digest|token|negotiate|"
                          r"ntlm)\s+))?([^\s,;\"']+)")
_VALUE_STOP = frozenset(" \t\r\n\f\v&;#<>`")
_ENCODED_STOP = ("%26", "%3b", "%23", "%3f")
_CLOSERS = frozenset("\"'")
_AFTER_CLOSER = frozenset(" \t\r\n\f\v,;:)]}>&")
_TRAILING = ".,:;!?)]}>"


class SecretWords:
    """Literal secrets hidden wherever they appear, counted per holder: add() when a component that holds them
    starts, discard() when it is gone, so a reload that builds the new sink before stopping the old one never
    uncovers them. Words shorter than MIN_LENGTH are not taken (hiding "abc" everywhere would mangle every log
    line); words shorter than WHOLE_BELOW are hidden only as whole words (between characters that cannot be part
    of one), longer ones anywhere, percent-encoded inside another URL included. Bounded: a word past MAX_WORDS
    is refused (add() returns False), which no real configuration reaches."""

    MIN_LENGTH = 4
    WHOLE_BELOW = 8
    MAX_WORDS = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._pattern: re.Pattern[str] | None = None

    def add(self, words: Iterable[str]) -> bool:
        forms = self._forms(words)
        with self._lock:
            if len(self._counts) + len(forms - self._counts.keys()) > self.MAX_WORDS:
                return False
            self._counts.update(forms)
            self._compile()
        return True

    def discard(self, words: Iterable[str]) -> None:
        forms = self._forms(words)
        with self._lock:
            self._counts.subtract(forms)
            for word in forms:
                if self._counts[word] <= 0:
                    del self._counts[word]
            self._compile()

    @contextmanager
    def held(self, words: Iterable[str]) -> Iterator[None]:
        """The words hidden for the duration of a block (a library that logs while it parses them)."""
        words = list(words)
        self.add(words)
        try:
            yield
        finally:
            self.discard(words)

    def hide(self, text: str) -> str:
        pattern = self._pattern              # read once: a concurrent add() swaps in a new one
        return text if pattern is None else pattern.sub(MASK, text)

    def _forms(self, words: Iterable[str]) -> set[str]:
        """Each word as written, percent-encoded (both ways) and JSON-escaped: how a log or an error quotes it."""
        out: set[str] = set()
        for word in words:
            word = str(word)
            if len(word) < self.MIN_LENGTH:
                continue
            out.update({word, quote(word, safe=""), quote_plus(word, safe=""),
                        word.replace("\\", "\\\\").replace('"', '\\"')})
        return out

    def _compile(self) -> None:
        if not self._counts:
            self._pattern = None
            return
        # longest first: a whole token is hidden before a piece of it could leave the rest showing
        words = sorted(self._counts, key=len, reverse=True)
        edge = r"[A-Za-z0-9_.~-]"
        alternatives = [re.escape(w) if len(w) >= self.WHOLE_BELOW else rf"(?<!{edge}){re.escape(w)}(?!{edge})"
                        for w in words]
        self._pattern = re.compile("|".join(alternatives))


SECRETS = SecretWords()


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True for a parameter name that usually holds a secret (password, token, api_key, sig, session, ...)."""
    k = key
    for _ in range(3):                          # keys encoded once or twice (p%2561ss -> p%61ss -> pass)
        if "%" not in k:
            break
        k = unquote(k)
    k = _KEY_SPLIT.split(k)[-1].lower().translate(_KEY_DROP)
    if not k:
        return False
    return k in _SECRET_KEYS or k.endswith("key") or any(part in k for part in _SECRET_PARTS)


def _redact_userinfo(m: re.Match) -> str:
    # scheme://user:pass@host, scheme://user@host, and the malformed scheme:/user:pass@host. Everything from the
    # first "scheme:/" to the LAST "@" of the word goes, so a password holding a raw "@" or "/" is hidden whole
    # (at worst a path holding an "@" is hidden too).
    word = m.group(0)
    at = word.rfind("@")
    if at < 0:
        return word
    pos = 0
    while True:
        colon = word.find(":/", pos, at)
        if colon < 0:
            return _redact_slashless(word, at)
        start = colon
        while start > 0 and colon - start < _SCHEME_MAX and word[start - 1] in _SCHEME_CHARS:
            start -= 1
        if any("a" <= c.lower() <= "z" for c in word[start:colon]):       # a scheme starts with a letter
            end = colon + 1                                                 # past ":" and up to 3 "/"
            while end < at and end - colon <= 3 and word[end] == "/":
                end += 1
            return f"{word[:end]}{MASK}{word[at:]}"
        pos = colon + 1


def _redact_slashless(word: str, at: int) -> str:
    # "rtsp:admin:pw@cam/live": the slashes forgotten. Only the schemes a camera, webhook or broker URL has, so
    # "note:user@example.com" stays.
    m = _SLASHLESS.search(word, 0, at)
    if m is None:
        return word
    return f"{word[:m.end()]}{MASK}{word[at:]}"


def _join_spaced_userinfo(text: str) -> str:
    """`rtsp://admin:pass word@cam/live`: a password holding spaces splits the URL into words, and the word rule
    sees no '@'. A URL word without '@' but with a ':' after its "://" is joined to the text up to the next '@'
    (within _SPAN_AHEAD characters, same line, no other URL in between) and that span is hidden. At worst a
    few words between a URL and an unrelated '@' are hidden too."""
    out: list[str] = []
    pos = 0
    scanned = 0                                 # every "://" of one word ends at the same space: scan it once
    n = len(text)
    for m in re.finditer(r"://", text):
        start = m.end()
        if start < max(pos, scanned):
            continue
        end = start
        while end < n and not text[end].isspace():
            end += 1
        scanned = end
        if end >= n or "@" in text[start:end] or ":" not in text[start:end]:
            continue
        at = text.find("@", end, min(n, end + _SPAN_AHEAD))
        if at < 0 or "://" in text[end:at] or "\n" in text[end:at]:
            continue
        out.append(text[pos:start])
        out.append(MASK)
        pos = at
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _value_span(text: str, i: int, encoded: bool) -> tuple[int, int]:
    """The part of the value that starts at text[i] to hide: (start, end), end exclusive."""
    n = len(text)
    if i < n and text[i] in _CLOSERS:                 # key="value with spaces": up to the matching quote
        quote = text[i]
        j = i + 1
        limit = min(n, i + 4096)
        while j < limit and text[j] != quote and text[j] != "\n":
            j += 2 if text[j] == "\\" else 1
        if j < n and text[j] == quote:
            return i + 1, j
    j = i
    while j < n:
        c = text[j]
        if c in _VALUE_STOP:
            break
        if c in _CLOSERS and (j + 1 >= n or text[j + 1] in _AFTER_CLOSER or text[j + 1] in _CLOSERS):
            break                                   # the quote that closes the string the URL stands in
        if encoded and c == "%" and text[j:j + 3].lower() in _ENCODED_STOP:
            break
        j += 1
    while j - i > 1 and text[j - 1] in _TRAILING:    # the ")" or "." after a URL in a sentence stays
        j -= 1
    return i, j


def _redact_key_values(text: str) -> str:
    out: list[str] = []
    pos = 0
    search = _KEY_VALUE.search
    m = search(text)
    while m is not None:
        value_start = m.end()
        if is_secret_key(m.group(1)):
            start, end = _value_span(text, value_start, m.group(2) != "=")
            if end > start:
                out.append(text[pos:start])
                out.append(MASK)
                pos = end
                m = search(text, end)
                continue
        m = search(text, value_start)
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _redact_quoted(m: re.Match) -> str:
    if not is_secret_key(m.group(2)) or not m.group(5):
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}{m.group(4)}{MASK}{m.group(4)}"


def redact_url(text: str) -> str:
    """`text` with every URL's user:password, every secret-like key's value and every Authorization header's
    credentials replaced by `***`, and every word SECRETS holds. Safe on any text (log lines, exception messages,
    JSON)."""
    text = SECRETS.hide(str(text))
    if "@" in text:
        if "://" in text:
            text = _join_spaced_userinfo(text)
        text = _WORD.sub(_redact_userinfo, text)
    if "=" in text or "%3" in text:
        text = _redact_key_values(text)
    if ":" in text:
        if "'" in text or '"' in text:
            text = _QUOTED.sub(_redact_quoted, text)
        if "uthorization" in text or "UTHORIZATION" in text:
            text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}{MASK}", text)
    return text


def url_origin(url: str) -> str:
    """scheme://host:port of `url` (default port filled in), nothing of its user, path, query or fragment: for
    URLs whose path itself may be the secret (webhook tokens). Never raises; an unreadable URL gives
    `scheme://?`."""
    text = str(url).strip()
    scheme = text.split(":", 1)[0].lower() if ":" in text else ""
    if not re.fullmatch(r"[a-z][a-z0-9+.-]{0,31}", scheme):
        return "?"
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return f"{scheme}://?"
    if not host:
        return f"{scheme}://?"
    if port is None:
        port = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "mqtt": 1883, "mqtts": 8883}.get(scheme)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + (f":{port}" if port is not None else "")
