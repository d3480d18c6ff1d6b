"""Read and validate the YAML config into the typed dataclasses of monitor.config.types.

Everything is checked before anything is returned, and every problem is reported at once as
`"<key path>: <what is wrong> (got <value>)"`, e.g. `cameras[1].fps: must be >= 0 (got -3)`.
The schema is a table per section (key -> check); a check converts a raw YAML value or raises `_Invalid`.
Relative paths are resolved against the directory of the config file.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import string
import sys
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import yaml

from monitor.core import groups
from monitor.config.types import (
    AlertsConfig, AuthConfig, CameraConfig, Config, EventsConfig, LoggingConfig, ModelConfig, MotionConfig,
    MqttConfig, RuleConfig, ServerConfig, StreamConfig, WebhookConfig,
)
from monitor.core.redact import redact_url

__all__ = [
    "ConfigError", "load_config", "parse_config", "format_errors", "check_config_main",
    "key_paths", "parse_duration", "parse_size", "source_kind",
]

CAMERA_URL_SCHEMES = ("rtsp", "rtsps", "http", "https")
WEBHOOK_URL_SCHEMES = ("http", "https")
COMMAND_PLACEHOLDERS = ("camera", "rule", "label", "score", "event_id", "snapshot")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
AUTH_MODES = ("none", "basic", "bearer")
# Topic levels under <prefix>/<camera>/ that a watch-list rule may not take when MQTT is on.
MQTT_RESERVED_RULE_NAMES = ("label", "snapshot", "state", "enabled")
# Camera and rule names end up in URL paths and metric labels.
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ConfigError(Exception):
    """Every problem found in a config; `.errors` holds one message per problem (credentials redacted)."""

    def __init__(self, errors: list[str], path: Path | str | None = None) -> None:
        self.errors = [_redact(e) for e in errors]
        self.path = path
        super().__init__("\n".join(self.errors))


# ---------------------------------------------------------------------------------------------------------
# Public entry points


def load_config(path: str | Path) -> Config:
    """Read, parse and validate the YAML file at `path`; ConfigError lists every problem."""
    path = Path(path)
    data, yaml_errors = _read_yaml(path)
    try:
        config = parse_config(data, path.absolute().parent, path=path)
    except ConfigError as err:
        raise ConfigError(yaml_errors + err.errors, path) from None
    if yaml_errors:
        raise ConfigError(yaml_errors, path)
    return config


def parse_config(data: Any, base_dir: Path | None = None, *, path: Path | str | None = None) -> Config:
    """Validate an already-parsed document. Relative paths resolve against `base_dir` (None: leave them)."""
    v = _Validator(base_dir)
    where = str(path) if path is not None else "config"
    if data is None:
        raise ConfigError([f"{where}: the file is empty (a config needs at least a 'cameras' list)"], path)
    if not isinstance(data, dict):
        raise ConfigError([f"{where}: top level must be a mapping of sections "
                           f"({', '.join(_TOP_LEVEL)}) (got {_kind(data)})"], path)
    # absent sections are checked as empty ones, so their defaults go through the same building (paths)
    absent = {key: None for key in _TOP_LEVEL if key not in ("cameras", "mqtt") and key not in data}
    values = v.mapping({**data, **absent}, "", _TOP_LEVEL, required=("cameras",))
    _check_unique_names(v, data.get("cameras"), "cameras", "camera")
    _check_unique_names(v, data.get("watchlist"), "watchlist", "rule")
    _check_rule_cameras(v, data.get("watchlist"), _written_names(data.get("cameras")))
    if data.get("mqtt") is not None:
        _check_rule_topics(v, data.get("watchlist"))
    if v.errors:
        raise ConfigError(v.errors, path)
    return Config(**values, path=Path(path).absolute() if path is not None else None)


def format_errors(err: ConfigError, path: str | Path) -> str:
    """The text the CLI prints for an invalid config: a header line, then one indented line per problem."""
    count = len(err.errors)
    lines = [f"error: {path} is not a valid config ({count} error{'s' if count != 1 else ''}):"]
    lines += [f"  {e}" for e in err.errors]
    return "\n".join(lines)


def check_config_main(path: str) -> int:
    """`monitor check-config`: 0 and a summary on stdout when valid, else 2 and every error on stderr."""
    try:
        config = load_config(path)
    except ConfigError as err:
        print(format_errors(err, path), file=sys.stderr)
        return 2
    except Exception as exc:  # a bug in the checker must still not print a traceback at the user
        print(_redact(f"error: {path}: internal error while checking the config: "
                      f"{type(exc).__name__}: {exc}"), file=sys.stderr)
        return 2
    print(f"config OK: {len(config.cameras)} cameras, {len(config.watchlist)} rules")
    return 0


def key_paths() -> list[str]:
    """Every key the schema accepts, as paths like `server.auth.mode` or `cameras[].motion.enabled`."""
    return _key_paths(_TOP_LEVEL, "")


def _key_paths(fields: Mapping[str, Check], prefix: str) -> list[str]:
    paths = []
    for key, check in fields.items():
        path = _join(prefix, key)
        while hasattr(check, "item"):
            check, path = check.item, path + "[]"
        paths.append(path)
        if hasattr(check, "fields"):
            paths += _key_paths(check.fields, path)
    return paths


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like `500ms`, `30s`, `5m`, `2h`, `30d`, `1h30m`; ValueError if not one."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_RE.fullmatch(value.strip()):
        text = value.strip()
        parts = _DURATION_PART_RE.findall(text)
        seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts) if parts else float(text)
    else:
        raise ValueError("not a duration")
    if not math.isfinite(seconds):
        raise ValueError("not a finite duration")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string like `512KB`, `10MB`, `1GiB` (binary units); ValueError if not one."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError("not a size")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def source_kind(source: str) -> str:
    """'webcam' (an index), 'device' (/dev/...), 'url' (scheme://...) or 'file'."""
    if source.isdigit():
        return "webcam"
    if source.startswith("/dev/"):
        return "device"
    if _SCHEME_RE.match(source):
        return "url"
    return "file"


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_RE = re.compile(r"\d+(?:\.\d+)?|(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
# Binary units whichever way they are spelled (10MB = 10MiB): an upload limit needs no finer distinction.
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
               "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|[kmg]i?b?|)", re.IGNORECASE)
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# Greedy up to the LAST '@' of the URL, so a password holding a raw '@' or '/' is hidden as a whole; also
# catches malformed camera URLs ("rtsp:/user:pass@host", "rtsp:user:pass@host") that redact_url leaves alone.
_GREEDY_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*:/+|\b(?:rtsps?|https?):)[^\s'\"]*@")


# ---------------------------------------------------------------------------------------------------------
# The validator: walks mappings against tables of checks, collecting errors


class _Invalid(Exception):
    """Raised by a check: `message` says what is wrong; the value is appended as '(got ...)' unless quiet."""

    def __init__(self, message: str, show_value: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.show_value = show_value


class _Reported(Exception):
    """Raised by a check whose errors are already recorded: the value is unusable, record nothing more."""


Check = Callable[[Any, str, "_Validator"], Any]
_MISSING = object()


class _Validator:
    def __init__(self, base_dir: Path | None) -> None:
        self.base_dir = base_dir
        self.errors: list[str] = []

    def error(self, path: str, message: str, value: Any = _MISSING) -> None:
        shown = "" if value is _MISSING else f" (got {_show(value)})"
        self.errors.append(f"{path}: {message}{shown}")

    def check(self, check: Check, value: Any, path: str) -> Any:
        """Run one check; on failure record it and raise _Reported."""
        try:
            return check(value, path, self)
        except _Invalid as bad:
            self.error(path, bad.message, value if bad.show_value else _MISSING)
            raise _Reported from None

    def mapping(self, data: Any, path: str, fields: Mapping[str, Check],
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        """Checked values of the keys present in `data` (bad ones left out, so defaults apply)."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error(path, "must be a mapping", data)
            raise _Reported
        values: dict[str, Any] = {}
        for key, value in data.items():
            key_path = _join(path, key)
            if key not in fields:
                self.error(key_path, _unknown_key_message(key, fields))
                continue
            try:
                values[key] = self.check(fields[key], value, key_path)
            except _Reported:
                pass
        for key in required:
            if key not in data:
                self.error(_join(path, key), "required key is missing")
        return values

    def resolve_path(self, text: str) -> Path:
        path = Path(os.path.expanduser(text))
        if path.is_absolute() or self.base_dir is None:
            return path
        return Path(os.path.normpath(self.base_dir / path))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _unknown_key_message(key: Any, fields: Mapping[str, Check]) -> str:
    message = f"unknown key (allowed: {', '.join(fields)})"
    close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
    return message + (f"; did you mean {close[0]!r}?" if close else "")


def _show(value: Any, limit: int = 80) -> str:
    text = _redact(repr(value))     # before cutting: a cut could drop the '@' that marks the credentials
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)


def _redact(text: str) -> str:
    return redact_url(_GREEDY_USERINFO.sub(lambda m: f"{m.group(1)}***@", text))


# ---------------------------------------------------------------------------------------------------------
# Scalar checks (factories return a Check)


def _integer(low: int | None = None, high: int | None = None) -> Check:
    def check(value: Any, path: str, v: _Validator) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid("must be an integer")
        _in_range(value, low, high)
        return value
    return check


def _number(low: float | None = None, high: float | None = None, above: float | None = None) -> Check:
    """A finite int or float; `above` is an exclusive lower bound."""
    def check(value: Any, path: str, v: _Validator) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Invalid("must be a number")
        if above is not None and value <= above:
            raise _Invalid(f"must be > {above:g}")
        _in_range(value, low, high)
        return float(value)
    return check


def _in_range(value: float, low: float | None, high: float | None) -> None:
    if low is not None and high is not None and not low <= value <= high:
        raise _Invalid(f"must be between {low:g} and {high:g}")
    if low is not None and value < low:
        raise _Invalid(f"must be >= {low:g}")
    if high is not None and value > high:
        raise _Invalid(f"must be <= {high:g}")


def _duration(allow_zero: bool = True) -> Check:
    def check(value: Any, path: str, v: _Validator) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise _Invalid("must be a duration like 500ms, 30s, 5m, 2h, 30d or a number of seconds") from None
        if seconds < 0 or (seconds == 0 and not allow_zero):
            raise _Invalid("must be >= 0" if allow_zero else "must be > 0")
        return seconds
    return check


def _size(value: Any, path: str, v: _Validator) -> int:
    try:
        size = parse_size(value)
    except ValueError:
        raise _Invalid("must be a size like 10MB, 512KiB or a number of bytes") from None
    if size < 1:
        raise _Invalid("must be >= 1 byte")
    return size


def _boolean(value: Any, path: str, v: _Validator) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("must be true or false")
    return value


def _text(value: Any, path: str, v: _Validator) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("must be a non-empty string")
    return value


def _name(value: Any, path: str, v: _Validator) -> str:
    _text(value, path, v)
    if not NAME_RE.fullmatch(value) or value in (".", ".."):
        raise _Invalid("must be 1-64 characters from A-Z a-z 0-9 _ . - (it is used in URLs and metric labels)")
    return value


def _host(value: Any, path: str, v: _Validator) -> str:
    _text(value, path, v)
    if any(c.isspace() for c in value):
        raise _Invalid("must be a host name or IP address without spaces")
    return value


def _choice(*choices: str) -> Check:
    def check(value: Any, path: str, v: _Validator) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}")
        return value.lower()
    return check


def _path(value: Any, path: str, v: _Validator) -> Path:
    _text(value, path, v)
    return v.resolve_path(value)


def _optional(check: Check) -> Check:
    def optional(value: Any, path: str, v: _Validator) -> Any:
        return None if value is None else check(value, path, v)
    optional.__dict__.update(check.__dict__)    # keep what key_paths() reads
    return optional


def _url(schemes: tuple[str, ...]) -> Check:
    def check(value: Any, path: str, v: _Validator) -> str:
        _text(value, path, v)
        text = value.strip()
        match = _SCHEME_RE.match(text)
        if not match:
            raise _Invalid(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        _check_scheme(match.group(1), schemes)
        try:
            parts = urlsplit(text)
            host, _ = parts.hostname, parts.port     # .port raises on a bad port
        except ValueError as exc:
            # urlsplit quotes the bad part, which may be a piece of the password: never echo it.
            reason = "bad port" if "port" in str(exc).lower() else "cannot be parsed"
            raise _Invalid(f"malformed URL ({reason}; a password holding '/', '@' or ':' must be "
                           f"percent-encoded)") from None
        if not host:
            raise _Invalid("URL has no host")
        return text
    return check


def _check_scheme(scheme: str, schemes: tuple[str, ...]) -> None:
    if scheme.lower() in schemes:
        return
    close = difflib.get_close_matches(scheme.lower(), schemes, n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise _Invalid(f"unknown URL scheme {scheme!r} (allowed: {', '.join(schemes)}){hint}")


def _list_of(item: Check, empty: str | None = "must not be empty") -> Check:
    """A list whose items are checked one by one (each error at `path[i]`); returns a tuple.

    `empty` is the error for an empty list (or null); None allows it.
    """
    def check(value: Any, path: str, v: _Validator) -> tuple:
        if value is None or value == []:
            if empty is None:
                return ()
            raise _Invalid(empty)
        if not isinstance(value, list):
            raise _Invalid("must be a list")
        items, failed = [], False
        for i, element in enumerate(value):
            try:
                items.append(v.check(item, element, f"{path}[{i}]"))
            except _Reported:
                failed = True
        if failed:
            raise _Reported
        return tuple(items)
    check.item = item   # type: ignore[attr-defined]  # read by key_paths()
    return check


# build(checked values, raw mapping, path, validator) -> the dataclass; it may record cross-key errors.
Build = Callable[[dict[str, Any], dict, str, "_Validator"], Any]


def _section(build: Build, fields: Mapping[str, Check], required: tuple[str, ...] = ()) -> Check:
    """A nested mapping checked against `fields`, then turned into a dataclass by `build`."""
    def check(value: Any, path: str, v: _Validator) -> Any:
        before = len(v.errors)
        values = v.mapping(value, path, fields, required)
        if any(key not in values for key in required):
            raise _Reported
        result = build(values, value or {}, path, v)
        if len(v.errors) > before:
            raise _Reported
        return result
    check.fields = fields   # type: ignore[attr-defined]  # read by key_paths()
    return check


def _plain(cls: type, *path_fields: str) -> Build:
    """Build `cls` from the checked values; default paths among `path_fields` resolve like written ones."""
    def build(values: dict[str, Any], raw: dict, path: str, v: _Validator) -> Any:
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key in path_fields:
            if key not in values and isinstance(defaults[key], Path):
                values[key] = v.resolve_path(str(defaults[key]))
        return cls(**values)
    return build


# ---------------------------------------------------------------------------------------------------------
# Checks with meaning: camera source, crop, classes, command, auth


def _source(value: Any, path: str, v: _Validator) -> str:
    """A webcam index, /dev/videoN, an rtsp/rtsps/http/https URL or a file path (made absolute).

    A file that does not exist is not an error: the camera shows as down and retries.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise _Invalid("webcam index must be >= 0")
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("must be a webcam index, a device (/dev/videoN), an rtsp/http(s) URL or a file path")
    text = value.strip()
    kind = source_kind(text)
    if kind == "url":
        return _url(CAMERA_URL_SCHEMES)(text, path, v)
    if re.match(r"(rtsps?|https?):", text, re.IGNORECASE):
        raise _Invalid("malformed URL: expected scheme://host/...")
    if kind == "file":
        return str(v.resolve_path(text))
    return text


def _crop(value: Any, path: str, v: _Validator) -> Any:
    if isinstance(value, str):
        if value.lower() in ("center", "full"):
            return value.lower()
        raise _Invalid("must be center, full or [x, y, width, height] in pixels")
    if not isinstance(value, list) or len(value) != 4:
        raise _Invalid("must be center, full or [x, y, width, height] in pixels")
    checks = (_integer(0), _integer(0), _integer(1), _integer(1))
    failed = False
    for i, (check, element) in enumerate(zip(checks, value)):
        try:
            v.check(check, element, f"{path}[{i}]")
        except _Reported:
            failed = True
    if failed:
        raise _Reported
    return tuple(value)


def _class_name(value: Any, path: str, v: _Validator) -> tuple[str, tuple[int, ...]]:
    """A class or group name -> (canonical name, indices)."""
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("must be an ImageNet class name or a group name (a string)")
    try:
        return groups.lookup(value)
    except KeyError as exc:
        raise _Invalid(_unknown_class_message(value, exc), show_value=False) from None


def _unknown_class_message(name: str, exc: KeyError) -> str:
    why = groups.explain_missing(name)
    if why:
        return f"no class for {name!r}: {why}"
    if "ambiguous" in str(exc.args[0]):
        return str(exc.args[0])
    message = f"unknown class {name!r}"
    suggestions = groups.suggest(name)
    if suggestions:
        message += f"; did you mean: {', '.join(suggestions)}?"
    else:
        message += f" (not an ImageNet class or a group; groups: {', '.join(groups.group_names())})"
    near = groups.near_missing(name)
    if near:
        message += f" (if you meant {near[0]!r}: {near[1]})"
    return message


def _classes(value: Any, path: str, v: _Validator) -> tuple[tuple[str, tuple[int, ...]], ...]:
    resolved = _list_of(_class_name)(value, path, v)
    first_seen: dict[str, int] = {}
    for i, (canonical, _) in enumerate(resolved):
        if canonical in first_seen:
            v.error(f"{path}[{i}]", f"{value[i]!r} is listed twice (as {path}[{first_seen[canonical]}])")
        first_seen.setdefault(canonical, i)
    return resolved


def _command_arg(value: Any, path: str, v: _Validator) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid("must be a non-empty string")
    allowed = ", ".join("{" + p + "}" for p in COMMAND_PLACEHOLDERS)
    try:
        fields = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise _Invalid(f"malformed placeholder ({exc}); write {{{{ and }}}} for literal braces") from None
    for _, field, spec, conversion in fields:
        if field is None:
            continue
        if field not in COMMAND_PLACEHOLDERS:
            raise _Invalid(f"unknown placeholder {{{field}}} (allowed: {allowed})")
        if spec or conversion:
            raise _Invalid(f"placeholder {{{field}}} takes no format spec or conversion")
    return value


def _command(value: Any, path: str, v: _Validator) -> tuple[str, ...]:
    if isinstance(value, str):
        raise _Invalid("must be a list of strings (the argv, run without a shell), "
                       "e.g. [/usr/local/bin/notify, \"{camera}\"]")
    return _list_of(_command_arg)(value, path, v)


def _build_auth(values: dict[str, Any], raw: dict, path: str, v: _Validator) -> AuthConfig:
    if "mode" in raw and "mode" not in values:
        return AuthConfig()     # the bad mode is reported; checking the other keys against it would mislead
    mode = values.get("mode", "none")
    needs = {"none": (), "basic": ("username", "password_file"), "bearer": ("token_file",)}[mode]
    for key in ("username", "password_file", "token_file"):
        if key in values and key not in needs:
            v.error(_join(path, key), f"not used with mode {mode!r}", str(values[key]))
    for key in needs:
        if key not in raw:      # present but bad is reported already
            v.error(_join(path, key), f"required with mode {mode!r}")
    if mode == "basic" and ":" in values.get("username", ""):
        v.error(_join(path, "username"), "must not contain ':' (HTTP basic auth)", values["username"])
    secret_key = {"basic": "password_file", "bearer": "token_file"}.get(mode)
    secret = ""
    if secret_key and secret_key in values:
        try:
            secret = _read_secret(values[secret_key])
        except _Invalid as bad:
            v.error(_join(path, secret_key), bad.message)
    return AuthConfig(**values, secret=secret)


def _build_mqtt(values: dict[str, Any], raw: dict, path: str, v: _Validator) -> MqttConfig:
    password = ""
    if "password_file" in values:
        if "username" not in values:
            v.error(_join(path, "password_file"), "needs mqtt.username")
        try:
            password = _read_secret(values["password_file"])
        except _Invalid as bad:
            v.error(_join(path, "password_file"), bad.message)
    if values.get("topic_prefix") is not None and values.get("topic_prefix") == values.get("discovery_prefix"):
        v.error(_join(path, "discovery_prefix"), "must differ from mqtt.topic_prefix", values["discovery_prefix"])
    return MqttConfig(**values, password=password)


def _topic_prefix(value: Any, path: str, v: _Validator) -> str:
    """An MQTT topic prefix: levels of printable characters, no wildcards, no empty level."""
    _text(value, path, v)
    if any(c in value for c in "+#\0") or any(not c.isprintable() or c.isspace() for c in value):
        raise _Invalid("must be an MQTT topic without wildcards (+ #), blanks or control characters")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise _Invalid("must not start or end with '/' nor contain an empty level ('//')")
    if len(value.encode("utf-8")) > 200:
        raise _Invalid("must be at most 200 bytes")
    return value


def _client_id(value: Any, path: str, v: _Validator) -> str:
    _text(value, path, v)
    if len(value.encode("utf-8")) > 128 or any(not c.isprintable() for c in value):
        raise _Invalid("must be at most 128 bytes of printable characters")
    return value


def _read_secret(file: Path) -> str:
    try:
        text = file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise _Invalid(f"cannot read '{file}': no such file") from None
    except IsADirectoryError:
        raise _Invalid(f"cannot read '{file}': is a directory") from None
    except PermissionError:
        raise _Invalid(f"cannot read '{file}': permission denied") from None
    except UnicodeDecodeError:
        raise _Invalid(f"cannot read '{file}': not UTF-8 text") from None
    except OSError as exc:
        raise _Invalid(f"cannot read '{file}': {exc.strerror or exc}") from None
    if not text:
        raise _Invalid(f"file '{file}' is empty")
    return text


def _build_rule(values: dict[str, Any], raw: dict, path: str, v: _Validator) -> RuleConfig:
    # `classes` as written by the user; `indices` as resolved, under the canonical class or group names
    return RuleConfig(**{**values, "classes": tuple(raw["classes"]), "indices": values["classes"]})


def _build_camera(values: dict[str, Any], raw: dict, path: str, v: _Validator) -> CameraConfig:
    camera = CameraConfig(**values)
    if camera.loop and source_kind(camera.source) != "file":
        v.error(_join(path, "loop"), f"only applies to file sources (source is a {source_kind(camera.source)})")
    return camera


# ---------------------------------------------------------------------------------------------------------
# The schema


_AUTH = {
    "mode": _choice(*AUTH_MODES),
    "username": _text,
    "password_file": _path,
    "token_file": _path,
    "protect_metrics": _boolean,
}
_STREAM = {
    "fps": _number(above=0),
    "width": _integer(0, 16384),
    "quality": _integer(1, 100),
    "max_viewers": _integer(1, 10000),
}
_SERVER = {
    "host": _host,
    "port": _integer(0, 65535),             # 0 = any free port (tests); the bound port is logged
    "upload_max_bytes": _size,
    "auth": _section(_build_auth, _AUTH),
    "stream": _section(_plain(StreamConfig), _STREAM),
}
_MODEL = {
    "weights": _path,
    "threads": _integer(1, 64),
    "top_k": _integer(1, 1000),
    "batch_max": _integer(1, 256),
}
_MOTION = {
    "enabled": _boolean,
    "threshold": _number(high=1, above=0),
    "keepalive": _duration(allow_zero=False),
}
_CAMERA = {
    "name": _name,
    "source": _source,
    "fps": _number(0),
    "crop": _crop,
    "loop": _boolean,
    "open_timeout": _duration(allow_zero=False),
    "read_timeout": _duration(allow_zero=False),
    "stale_after": _duration(allow_zero=False),
    "backoff_max": _duration(allow_zero=False),
    "motion": _section(_plain(MotionConfig), _MOTION),
}
_RULE = {
    "name": _name,
    "classes": _classes,
    "cameras": _list_of(_text, empty="must not be empty (leave the key out to watch all cameras)"),
    "min_score": _number(0, 1),
    "min_frames": _integer(1),
    "end_after": _duration(allow_zero=False),
    "cooldown": _duration(),
}
_WEBHOOK = {
    "url": _url(WEBHOOK_URL_SCHEMES),
    "timeout": _duration(allow_zero=False),
    "retries": _integer(0, 10),
}
_ALERTS = {
    "snapshots": _optional(_path),
    "webhook": _optional(_section(_plain(WebhookConfig), _WEBHOOK, required=("url",))),
    "command": _command,
    "command_timeout": _duration(allow_zero=False),
    "queue_size": _integer(1, 100000),
}
_MQTT = {
    "host": _host,
    "port": _integer(1, 65535),
    "username": _text,
    "password_file": _path,
    "tls": _boolean,
    "topic_prefix": _topic_prefix,
    "discovery_prefix": _optional(_topic_prefix),
    "client_id": _client_id,
    "label_keepalive": _duration(allow_zero=False),
    "queue_size": _integer(1, 100000),
}
_EVENTS = {
    "database": _path,
    "retention": _duration(allow_zero=False),
}
_LOGGING = {
    "level": _choice(*LOG_LEVELS),
    "format": _choice(*LOG_FORMATS),
}


_TOP_LEVEL: dict[str, Check] = {
    "server": _section(_plain(ServerConfig), _SERVER),
    "model": _section(_plain(ModelConfig, "weights"), _MODEL),
    "cameras": _list_of(_section(_build_camera, _CAMERA, required=("name", "source")),
                        empty="must list at least one camera"),
    "watchlist": _list_of(_section(_build_rule, _RULE, required=("name", "classes")), empty=None),
    "alerts": _section(_plain(AlertsConfig), _ALERTS),
    "events": _section(_plain(EventsConfig, "database"), _EVENTS),
    "logging": _section(_plain(LoggingConfig), _LOGGING),
    "mqtt": _optional(_section(_build_mqtt, _MQTT)),
}


# ---------------------------------------------------------------------------------------------------------
# Checks across entries: unique names, rules naming cameras that exist.
# They read the raw document, so one bad camera does not also make every rule naming it an error.


def _items(section: Any) -> list[tuple[int, dict]]:
    if not isinstance(section, list):
        return []
    return [(i, item) for i, item in enumerate(section) if isinstance(item, dict)]


def _written_names(section: Any) -> list[str]:
    return [item["name"] for _, item in _items(section) if isinstance(item.get("name"), str)]


def _check_unique_names(v: _Validator, section: Any, key: str, what: str) -> None:
    first: dict[str, int] = {}
    for i, item in _items(section):
        name = item.get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            v.error(f"{key}[{i}].name", f"duplicate {what} name {name!r} (also {key}[{first[name]}])")
        else:
            first[name] = i


def _check_rule_cameras(v: _Validator, watchlist: Any, camera_names: list[str]) -> None:
    for i, rule in _items(watchlist):
        cameras = rule.get("cameras")
        if not isinstance(cameras, list):
            continue
        for j, name in enumerate(cameras):
            if isinstance(name, str) and name.strip() and name not in camera_names:
                close = difflib.get_close_matches(name, camera_names, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                v.error(f"watchlist[{i}].cameras[{j}]",
                        f"unknown camera {name!r} (cameras: {', '.join(camera_names) or 'none'}){hint}")


def _check_rule_topics(v: _Validator, watchlist: Any) -> None:
    """With MQTT a rule's state is <prefix>/<camera>/<rule>: it must not take a camera topic's own level."""
    for i, rule in _items(watchlist):
        if rule.get("name") in MQTT_RESERVED_RULE_NAMES:
            v.error(f"watchlist[{i}].name", f"{rule['name']!r} is taken by an MQTT topic of every camera "
                                            f"(reserved with mqtt: {', '.join(MQTT_RESERVED_RULE_NAMES)})")


# ---------------------------------------------------------------------------------------------------------
# Reading the file


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys (PyYAML silently keeps the last one) instead of hiding them."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    self.duplicates.append(f"{self.source}:{line}: duplicate key {key!r} "
                                           f"(first at line {seen[key]}; YAML would keep only the last)")
                else:
                    seen[key] = line
            except TypeError:
                pass  # unhashable key: construct_mapping below reports it
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> tuple[Any, list[str]]:
    """(document, duplicate-key errors); ConfigError when the file cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"], path) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"], path) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"], path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (bad byte at offset {exc.start})"], path) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"], path) from None
    loader = _StrictLoader(text, str(path))
    try:
        return loader.get_single_data(), loader.duplicates
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_error_message(path, exc)], path) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: YAML error: {exc}"], path) from None
    finally:
        loader.dispose()


def _yaml_error_message(path: Path, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    what = exc.problem or "invalid YAML"
    context = ""
    if exc.context:
        start = exc.context_mark
        at = f" at line {start.line + 1}" if start and mark and start.line != mark.line else ""
        context = f" ({exc.context}{at})"
    return f"{where}: YAML syntax error: {what}{context}"
