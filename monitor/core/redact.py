"""Strip credentials from camera URLs before they reach logs, errors, the API or metrics."""
from __future__ import annotations

import re

_WORD = re.compile(r"\S+")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_SCHEME_MAX = 32


def _redact_word(m: re.Match) -> str:
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
            return word
        start = colon
        while start > 0 and colon - start < _SCHEME_MAX and word[start - 1] in _SCHEME_CHARS:
            start -= 1
        if any("a" <= c.lower() <= "z" for c in word[start:colon]):       # a scheme starts with a letter
            end = colon + 1                                                 # past ":" and up to 3 "/"
            while end < at and end - colon <= 3 and word[end] == "/":
                end += 1
            return f"{word[:end]}***{word[at:]}"
        pos = colon + 1


def redact_url(text: str) -> str:
    """Replace the user:password part of every URL in `text` with `***`.

    Linear in the length of `text` (a regex that backtracks over long runs would let a 64 KiB request line,
    logged at debug level, cost seconds of CPU under the logging lock)."""
    text = str(text)
    if "@" not in text:
        return text
    return _WORD.sub(_redact_word, text)
