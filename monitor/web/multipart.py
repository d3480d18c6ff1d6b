"""A small, strict multipart/form-data parser (RFC 7578 / RFC 2046) for the upload endpoint.

The `cgi` module is gone in Python 3.13 and `email.parser` accepts nearly anything, so malformed bodies would
slip through as empty fields. This parser rejects them with a message that says what is wrong and where.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 8192
# RFC 2046 section 5.1.1: 1..70 characters from this set, not ending in a space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TYPE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:/[!#$%&'*+\-.^_`|~0-9A-Za-z]+)?")   # "form-data", "image/png"


class MultipartError(ValueError):
    """The body or its Content-Type is not well-formed multipart/form-data; the message says why."""


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """'form-data; name="file"; filename="a.jpg"' -> ("form-data", {"name": "file", "filename": "a.jpg"}).

    Strict: every parameter must be token=token or token="quoted-string"; a repeated parameter is an error.
    """
    pos = 0
    n = len(value)

    def skip_ws() -> None:
        nonlocal pos
        while pos < n and value[pos] in " \t":
            pos += 1

    skip_ws()
    m = _TYPE.match(value, pos)
    if not m:
        raise MultipartError(f"malformed header value {value[:80]!r}: expected a type")
    kind = m.group(0).lower()
    pos = m.end()
    params: dict[str, str] = {}
    while True:
        skip_ws()
        if pos >= n:
            break
        if value[pos] != ";":
            raise MultipartError(f"malformed header value {value[:80]!r}: expected ';' at offset {pos}")
        pos += 1
        skip_ws()
        if pos >= n:
            break                   # a trailing ';' is common enough to tolerate
        m = _TOKEN.match(value, pos)
        if not m:
            raise MultipartError(f"malformed header value {value[:80]!r}: expected a parameter name at offset {pos}")
        key = m.group(0).lower()
        pos = m.end()
        skip_ws()
        if pos >= n or value[pos] != "=":
            raise MultipartError(f"malformed header value {value[:80]!r}: parameter {key!r} has no value")
        pos += 1
        skip_ws()
        if pos < n and value[pos] == '"':
            pos += 1
            out = []
            while True:
                if pos >= n:
                    raise MultipartError(f"malformed header value {value[:80]!r}: unterminated quoted string")
                c = value[pos]
                if c == "\\" and pos + 1 < n:
                    out.append(value[pos + 1])
                    pos += 2
                elif c == '"':
                    pos += 1
                    break
                else:
                    out.append(c)
                    pos += 1
            val = "".join(out)
        else:
            m = _TOKEN.match(value, pos)
            if not m:
                raise MultipartError(f"malformed header value {value[:80]!r}: parameter {key!r} has no value")
            val = m.group(0)
            pos = m.end()
        if key in params:
            raise MultipartError(f"malformed header value {value[:80]!r}: parameter {key!r} repeated")
        params[key] = val
    return kind, params


def boundary_of(content_type: str) -> bytes:
    """The boundary of a 'multipart/form-data; boundary=...' Content-Type, validated."""
    kind, params = parse_header_params(content_type)
    if kind != "multipart/form-data":
        raise MultipartError(f"Content-Type is {kind!r}, not multipart/form-data")
    boundary = params.get("boundary")
    if boundary is None:
        raise MultipartError("Content-Type multipart/form-data has no boundary parameter")
    if not _BOUNDARY.match(boundary):
        raise MultipartError(f"invalid multipart boundary {boundary[:80]!r} (1-70 characters of the RFC 2046 set)")
    return boundary.encode("ascii")


def _part_headers(raw: bytes, index: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not raw:
        return headers
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError(f"part {index}: headers are not UTF-8") from None
    for line in text.split("\r\n"):
        if not line or line[0] in " \t":
            raise MultipartError(f"part {index}: folded or empty header line")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise MultipartError(f"part {index}: malformed header line {line[:80]!r}")
        key = name.lower()
        if key in headers:
            raise MultipartError(f"part {index}: header {name!r} repeated")
        headers[key] = value.strip(" \t")
    return headers


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a multipart/form-data body into its parts; MultipartError on anything malformed.

    Accepted: an optional preamble, then `--boundary CRLF` parts each with headers, CRLF CRLF, data, and a
    closing `--boundary--` (an epilogue after it is ignored). Every part needs a
    `Content-Disposition: form-data; name="..."` header.
    """
    boundary = boundary_of(content_type)
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:
        first = body.find(b"\r\n" + delimiter)
        if first < 0:
            raise MultipartError("body does not contain the multipart boundary")
        pos = first + 2 + len(delimiter)
    parts: list[Part] = []
    names: set[str] = set()
    while True:
        tail = body[pos:pos + 2]
        if tail == b"--":
            break                                   # closing delimiter
        if tail != b"\r\n":
            raise MultipartError(f"bytes after boundary at offset {pos} are neither CRLF nor '--'")
        pos += 2
        index = len(parts) + 1
        if index > MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} parts")
        if body.startswith(b"\r\n", pos):           # no headers at all
            header_end, raw_headers = pos, b""
        else:
            header_end = body.find(b"\r\n\r\n", pos, pos + MAX_PART_HEADER_BYTES)
            if header_end < 0:
                raise MultipartError(f"part {index}: headers not terminated by an empty line "
                                     f"within {MAX_PART_HEADER_BYTES} bytes")
            raw_headers = body[pos:header_end]
        headers = _part_headers(raw_headers, index)
        data_start = header_end + (2 if not raw_headers else 4)
        data_end = body.find(b"\r\n" + delimiter, data_start)
        if data_end < 0:
            raise MultipartError(f"part {index}: not terminated by a boundary (body truncated?)")
        disposition = headers.get("content-disposition")
        if disposition is None:
            raise MultipartError(f"part {index}: no Content-Disposition header")
        kind, params = parse_header_params(disposition)
        if kind != "form-data" or "name" not in params:
            raise MultipartError(f"part {index}: Content-Disposition must be form-data with a name")
        name = params["name"]
        if name in names:
            raise MultipartError(f"part {index}: field {name!r} repeated")
        names.add(name)
        parts.append(Part(name, params.get("filename"), headers.get("content-type"), body[data_start:data_end]))
        pos = data_end + 2 + len(delimiter)
    if not parts:
        raise MultipartError("no parts before the closing boundary")
    return parts
