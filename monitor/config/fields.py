"""Value types of the config models: each converts a YAML value or raises a `problem` worded for a user.

They are `Annotated` pydantic types: a BeforeValidator does the checking with our messages (pydantic's own,
"Input should be a valid integer", name no bounds and accept "8080" for a port), while the Field/WithJsonSchema
part describes the value in the JSON Schema editors check against.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, ValidationInfo, WithJsonSchema
from pydantic_core import PydanticCustomError

from monitor.core.redact import url_origin

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")   # camera and rule names end up in URL paths and metric labels
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_RE = r"\d+(?:\.\d+)?|(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+"
# Binary units whichever way they are spelled (10MB = 10MiB): an upload limit needs no finer distinction.
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
               "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_SIZE_RE = r"(\d+(?:\.\d+)?)\s*(b|[kmgKMG][iI]?[bB]?|[bB]|)"
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
NOT_GIVEN: Any = type("NotGiven", (), {"__repr__": lambda self: "NOT_GIVEN"})()


def problem(message: str, *, show_value: bool = True, at: tuple = (), sibling: str | None = None) -> Exception:
    """The error a check raises. `at` extends its key path, `sibling` replaces the last key (a check that
    runs on one field but is about another); the loader appends `(got <value>)` when `show_value`."""
    return PydanticCustomError("config", "{message}",
                               {"message": message, "show": show_value, "at": at, "sibling": sibling})


def _checked(check: Callable[..., Any], base: Any, *meta: Any) -> Any:
    return Annotated[(base, *meta, BeforeValidator(check))]


def base_dir(info: ValidationInfo) -> Path | None:
    return (info.context or {}).get("base_dir")


def from_config(info: ValidationInfo) -> bool:
    """True while the loader validates a document (False when code builds a model directly)."""
    return info.context is not None


# --- numbers -------------------------------------------------------------------------------------------------

def _in_range(value: float, low: float | None, high: float | None) -> None:
    if low is not None and high is not None and not low <= value <= high:
        raise problem(f"must be between {low:g} and {high:g}")
    if low is not None and value < low:
        raise problem(f"must be >= {low:g}")
    if high is not None and value > high:
        raise problem(f"must be <= {high:g}")


def Int(low: int | None = None, high: int | None = None) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise problem("must be an integer")
        _in_range(value, low, high)
        return value
    return _checked(check, int, Field(ge=low, le=high))


def Number(low: float | None = None, high: float | None = None, above: float | None = None) -> Any:
    """A finite int or float; `above` is an exclusive lower bound."""
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise problem("must be a number")
        if above is not None and value <= above:
            raise problem(f"must be > {above:g}")
        _in_range(value, low, high)
        return float(value)
    return _checked(check, float, Field(ge=low, le=high, gt=above))


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like `500ms`, `30s`, `5m`, `2h`, `30d`, `1h30m`; ValueError if not one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    text = value.strip() if isinstance(value, str) else ""
    if not re.fullmatch(_DURATION_RE, text):
        raise ValueError(f"not a duration: {value!r}")
    parts = _DURATION_PART_RE.findall(text)
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in parts) if parts else float(text)


def Duration(allow_zero: bool = True) -> Any:
    """Seconds, written as a number or 500ms / 30s / 5m / 2h / 30d / 1h30m."""
    def check(value: Any) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise problem("must be a duration like 500ms, 30s, 5m, 2h, 30d or a number of seconds") from None
        if seconds < 0 or (seconds == 0 and not allow_zero):
            raise problem("must be >= 0" if allow_zero else "must be > 0")
        return seconds
    number = {"type": "number", "exclusiveMinimum" if not allow_zero else "minimum": 0}
    schema = {"anyOf": [number, {"type": "string", "pattern": f"^\\s*({_DURATION_RE})\\s*$"}]}
    return _checked(check, float, WithJsonSchema(schema))


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string like `512KB`, `10MB`, `1GiB` (binary units); ValueError if not one."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        return value
    match = re.fullmatch(_SIZE_RE, value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError("not a size")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _size(value: Any) -> int:
    try:
        size = parse_size(value)
    except ValueError:
        raise problem("must be a size like 10MB, 512KiB or a number of bytes") from None
    if size < 1:
        raise problem("must be >= 1 byte")
    return size


Size = _checked(_size, int, WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1},
                                                      {"type": "string", "pattern": f"^\\s*{_SIZE_RE}\\s*$"}]}))


# --- words -------------------------------------------------------------------------------------------------

def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise problem("must be true or false")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise problem("must be a non-empty string")
    return value


def _name(value: Any) -> str:
    if not NAME_RE.fullmatch(_text(value)) or value in (".", ".."):
        raise problem("must be 1-64 characters from A-Z a-z 0-9 _ . - (it is used in URLs and metric labels)")
    return value


def _host(value: Any) -> str:
    if any(c.isspace() for c in _text(value)):
        raise problem("must be a host name or IP address without spaces")
    return value


Bool = _checked(_bool, bool)
Text = _checked(_text, str, Field(min_length=1))
Name = _checked(_name, str, Field(pattern=f"^{NAME_RE.pattern}$"))
Host = _checked(_host, str, Field(min_length=1))


def any_case(*words: str) -> dict:
    """Schema of a word the loader accepts in any case: the lowercase list for completion, or a pattern."""
    pattern = "|".join("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in w) for w in words)
    return {"anyOf": [{"enum": list(words)}, {"type": "string", "pattern": f"^({pattern})$"}]}


def Choice(*choices: str) -> Any:
    """One of a few words, in any case (YAML's `off` arrives as False and is refused here)."""
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise problem(f"must be one of {', '.join(choices)}")
        return value.lower()
    return _checked(check, Literal[choices], WithJsonSchema(any_case(*choices)))


def List(item: Any, empty: str | None = "must not be empty") -> Any:
    """A list whose items are checked one by one (errors at `key[i]`), as a tuple; `empty` is the error for an
    empty list or null (None: allowed)."""
    def check(value: Any) -> Any:
        if value == () and isinstance(value, tuple):
            return value    # a default or code's (); YAML's empty list is [] and is checked below
        if value is None or value == []:
            if empty is None:
                return ()
            raise problem(empty)
        if not isinstance(value, (list, tuple)):
            raise problem("must be a list")
        return value
    if empty is None:
        return _checked(check, Optional[tuple[item, ...]])
    return _checked(check, tuple[item, ...], Field(json_schema_extra={"minItems": 1}))  # checked above


# --- paths and URLs ----------------------------------------------------------------------------------------

def resolve_path(text: str | Path, info: ValidationInfo) -> Path:
    """`~` expanded; relative paths resolved against the config file's directory (when there is one)."""
    path = Path(os.path.expanduser(str(text)))
    root = base_dir(info)
    return path if path.is_absolute() or root is None else Path(os.path.normpath(root / path))


def _file_path(value: Any, info: ValidationInfo) -> Path:
    return resolve_path(value if isinstance(value, Path) else _text(value), info)


FilePath = _checked(_file_path, Path, WithJsonSchema({"type": "string", "minLength": 1}))


def read_secret(file: Path, key: str) -> str:
    """A password or token kept in a file of its own (never inline in the config), stripped; the error names
    `key`, the field holding the file's path (raise it from a validator of a field after that one)."""
    try:
        text = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = {FileNotFoundError: "no such file", IsADirectoryError: "is a directory",
               PermissionError: "permission denied", UnicodeDecodeError: "not UTF-8 text"}.get(
            type(exc), getattr(exc, "strerror", None) or str(exc))
        raise problem(f"cannot read '{file}': {why}", show_value=False, sibling=key) from None
    if not text:
        raise problem(f"file '{file}' is empty", show_value=False, sibling=key)
    return text


def check_url(value: Any, schemes: tuple[str, ...]) -> str:
    text = _text(value).strip()
    match = _SCHEME_RE.match(text)
    if not match:
        raise problem(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
    if match.group(1).lower() not in schemes:
        close = difflib.get_close_matches(match.group(1).lower(), schemes, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise problem(f"unknown URL scheme {match.group(1)!r} (allowed: {', '.join(schemes)}){hint}")
    try:
        parts = urlsplit(text)
        host, _ = parts.hostname, parts.port     # .port raises on a bad port
    except ValueError as exc:
        # urlsplit quotes the bad part, which may be a piece of the password: never echo it.
        reason = "bad port" if "port" in str(exc).lower() else "cannot be parsed"
        raise problem(f"malformed URL ({reason}; a password holding '/', '@' or ':' must be "
                      f"percent-encoded)") from None
    if not host:
        raise problem("URL has no host")
    return text


def Url(*schemes: str, secret_path: bool = False) -> Any:
    """`secret_path`: the URL's path and query may be the secret (webhooks: Slack, Home Assistant ids, tokens),
    so an error shows only its scheme://host:port."""
    def check(value: Any) -> str:
        if not secret_path:
            return check_url(value, schemes)
        try:
            return check_url(value, schemes)
        except PydanticCustomError as exc:
            if not isinstance(value, str):
                raise
            message = (exc.context or {}).get("message", "invalid URL")
            raise problem(f"{message} (got {url_origin(value)}/..., path and query not shown)",
                          show_value=False) from None
    return _checked(check, str, WithJsonSchema({"type": "string", "pattern": f"^({'|'.join(schemes)})://"}))


def source_kind(source: str) -> str:
    """'webcam' (an index), 'device' (/dev/...), 'url' (scheme://...) or 'file'."""
    if source.isdigit():
        return "webcam"
    if source.startswith("/dev/"):
        return "device"
    if _SCHEME_RE.match(source):
        return "url"
    return "file"

