"""Read a YAML config into the models of monitor.config.types, reporting every problem at once.

Each problem is one line `"<key path>: <what is wrong> (got <value>) (line N)"`, e.g.
`cameras[1].fps: must be >= 0 (got -3) (line 9)`, in document order, with credentials redacted.
Pydantic does the validating; this module reads the YAML (keeping each key's line, refusing duplicate keys),
words pydantic's errors for a user, and adds the checks across entries (unique names, rules' cameras).
"""
from __future__ import annotations

import difflib
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, ValidationError

from monitor.config.fields import parse_duration, parse_size, source_kind
from monitor.config.types import MQTT_RESERVED_RULE_NAMES, UNION_TAGS, Config
from monitor.core.redact import redact_url

__all__ = ["ConfigError", "load_config", "parse_config", "format_errors", "check_config_main", "json_schema",
           "schema_text", "parse_duration", "parse_size", "source_kind"]

Loc = tuple[Any, ...]
_MAX_NODES = 100_000    # line bookkeeping stops here (a YAML alias bomb expands exponentially)
# Greedy up to the LAST '@' of the URL, so a password holding a raw '@' or '/' is hidden as a whole; also
# catches malformed camera URLs ("rtsp:/user:pass@host", "rtsp:user:pass@host") that redact_url leaves alone.
_GREEDY_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*:/+|\b(?:rtsps?|https?):)[^\s'\"]*@")


class ConfigError(Exception):
    """Every problem found in a config; `.errors` holds one message per problem (credentials redacted)."""

    def __init__(self, errors: list[str], path: Path | str | None = None) -> None:
        self.errors = [_redact(e) for e in errors]
        self.path = path
        super().__init__("\n".join(self.errors))


def load_config(path: str | Path) -> Config:
    """Read, parse and validate the YAML file at `path`; ConfigError lists every problem."""
    path = Path(path)
    try:
        data, lines, yaml_errors = _read_yaml(path)
        try:
            config = parse_config(data, path.absolute().parent, path=path, lines=lines)
        except ConfigError as err:
            raise ConfigError(yaml_errors + err.errors, path) from None
    except ConfigError:
        raise
    except Exception as exc:  # a bug in the checker must still not show the user a traceback
        raise ConfigError([f"{path}: internal error while checking the config: {type(exc).__name__}: {exc}"],
                          path) from None
    if yaml_errors:
        raise ConfigError(yaml_errors, path)
    return config


def parse_config(data: Any, base_dir: Path | None = None, *, path: Path | str | None = None,
                 lines: dict[Loc, int] | None = None) -> Config:
    """Validate an already-parsed document. Relative paths resolve against `base_dir` (None: leave them)."""
    where = str(path) if path is not None else "config"
    if data is None:
        raise ConfigError([f"{where}: the file is empty (a config needs at least a 'cameras' list)"], path)
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string"}.get(type(data), type(data).__name__)
        raise ConfigError([f"{where}: top level must be a mapping of sections "
                           f"({', '.join(Config.model_fields)}) (got {kind})"], path)
    problems = list(_cross_checks(data))
    config = None
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        problems += [_word(e) for e in err.errors(include_url=False)]
    if problems:
        order = _document_order(data)
        problems.sort(key=lambda p: [order.get(p[0][:n], _MAX_NODES) for n in range(1, len(p[0]) + 1)])
        raise ConfigError([_line(loc, message, lines) for loc, message in problems], path)
    assert config is not None
    config._path = Path(path).absolute() if path is not None else None
    return config


def format_errors(err: ConfigError, path: str | Path) -> str:
    """The text the CLI prints for an invalid config: a header line, then one indented line per problem."""
    count = len(err.errors)
    lines = [f"error: {path} is not a valid config ({count} error{'s' if count != 1 else ''}):"]
    return "\n".join(lines + [f"  {e}" for e in err.errors])


def check_config_main(path: str) -> int:
    """`monitor check-config`: 0 and a summary on stdout when valid, else 2 and every error on stderr."""
    try:
        config = load_config(path)
    except ConfigError as err:
        print(format_errors(err, path), file=sys.stderr)
        return 2
    print(f"config OK: {len(config.cameras)} cameras, {len(config.watchlist)} rules")
    return 0


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file (what `monitor config schema` prints and config.schema.json holds)."""
    schema = Config.model_json_schema(mode="validation")
    schema.update({"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "monitor config"})
    for section in [schema, *schema["$defs"].values()]:
        for key, prop in section.get("properties", {}).items():
            if "$ref" in prop:      # `server:` with nothing after it means the defaults
                section["properties"][key] = {"anyOf": [{"$ref": prop.pop("$ref")}, {"type": "null"}], **prop}
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Pydantic's errors in our words

def _word(error: dict) -> tuple[Loc, str]:
    loc = tuple(part for part in error["loc"] if part not in UNION_TAGS)
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    show = True
    if kind == "config":
        message, show = ctx["message"].replace("{path}", _path_text(loc)), ctx["show"]
        loc = (loc[:-1] + (ctx["sibling"],) if ctx["sibling"] else loc) + tuple(ctx["at"])
    elif kind == "missing":
        message, show = "required key is missing", False
    elif kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        message = f"unknown key (allowed: {', '.join(allowed)})" + (f"; did you mean {close[0]!r}?" if close else "")
        show = False
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = "must be a mapping"
    elif kind in ("tuple_type", "list_type"):
        message = "must be a list"
    else:
        message = error["msg"][0].lower() + error["msg"][1:]
    return loc, f"{message} (got {_show(value)})" if show else message


def _fields_at(loc: Loc) -> list[str]:
    """The keys allowed in the section at `loc` (walking the models' annotations down the key path)."""
    kind: Any = Config
    for part in loc + (None,):
        while True:     # unwrap Annotated[X, ...], Optional[X] and tuple[X, ...] down to a model
            args = [a for a in typing.get_args(kind) if a is not type(None) and a is not Ellipsis]
            if isinstance(kind, type) and issubclass(kind, BaseModel) or not args:
                break
            kind = args[0]
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return []
        if part is None:
            return [name for name, f in kind.model_fields.items() if not f.exclude]
        if isinstance(part, str):
            kind = kind.model_fields[part].annotation if part in kind.model_fields else None
    return []


def _show(value: Any, limit: int = 80) -> str:
    text = _redact(repr(value))     # before cutting: a cut could drop the '@' that marks the credentials
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redact(text: str) -> str:
    return redact_url(_GREEDY_USERINFO.sub(lambda m: f"{m.group(1)}***@", text))


def _path_text(loc: Loc) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _known_prefix(loc: Loc, known: dict[Loc, int]) -> Loc:
    while loc and loc not in known:
        loc = loc[:-1]
    return loc


def _line(loc: Loc, message: str, lines: dict[Loc, int] | None) -> str:
    line = lines.get(_known_prefix(loc, lines)) if lines else None
    return f"{_path_text(loc) or 'config'}: {message}" + (f" (line {line})" if line else "")


def _document_order(data: Any) -> dict[Loc, int]:
    """Each key path's position in the document, so that errors are listed top to bottom."""
    order: dict[Loc, int] = {(): 0}
    stack: list[tuple[Loc, Any]] = [((), data)]
    while stack and len(order) < _MAX_NODES:
        loc, node = stack.pop()
        if isinstance(node, dict):
            children = [(loc + (k if isinstance(k, str) else str(k),), v) for k, v in node.items()]
        else:
            children = [(loc + (i,), v) for i, v in enumerate(node)] if isinstance(node, list) else []
        for child, _ in children:
            order.setdefault(child, len(order))
        stack.extend(reversed(children))
    return order


# ---------------------------------------------------------------------------------------------------------
# Checks across entries. They read the raw document, so that one bad camera does not also make every rule
# naming it an error, and they run even when other parts of the document are invalid.

def _entries(section: Any) -> list[tuple[int, dict]]:
    return [(i, e) for i, e in enumerate(section) if isinstance(e, dict)] if isinstance(section, list) else []


def _cross_checks(data: dict) -> Iterator[tuple[Loc, str]]:
    for key, what in (("cameras", "camera"), ("watchlist", "rule"), ("custom_classes", "custom class")):
        first: dict[str, int] = {}
        for i, entry in _entries(data.get(key)):
            name = entry.get("name")
            if isinstance(name, str) and name in first:
                yield (key, i, "name"), f"duplicate {what} name {name!r} (also {key}[{first[name]}])"
            elif isinstance(name, str):
                first[name] = i
    if data.get("mqtt") is not None:    # a rule's state is <prefix>/<camera>/<rule>: not a camera topic's level
        for i, rule in _entries(data.get("watchlist")):
            if rule.get("name") in MQTT_RESERVED_RULE_NAMES:
                yield (("watchlist", i, "name"), f"{rule['name']!r} is taken by an MQTT topic of every camera "
                       f"(reserved with mqtt: {', '.join(MQTT_RESERVED_RULE_NAMES)})")
    cameras = [e["name"] for _, e in _entries(data.get("cameras")) if isinstance(e.get("name"), str)]
    for i, rule in _entries(data.get("watchlist")):
        for j, name in enumerate(rule.get("cameras") if isinstance(rule.get("cameras"), list) else ()):
            if isinstance(name, str) and name.strip() and name not in cameras:
                close = difflib.get_close_matches(name, cameras, n=1, cutoff=0.6)
                yield (("watchlist", i, "cameras", j), f"unknown camera {name!r} (cameras: "
                       f"{', '.join(cameras) or 'none'})" + (f"; did you mean {close[0]!r}?" if close else ""))
    yield from _custom_class_checks(data, cameras)
    yield from _notify_checks(data)


_OTHER_SINKS = ("log", "snapshot", "webhook", "command", "mqtt")   # sink names notify targets must not take


def _notify_checks(data: dict) -> Iterator[tuple[Loc, str]]:
    """alerts.notify names are unique (they label the sink's metrics) and its rules exist."""
    alerts = data.get("alerts") if isinstance(data.get("alerts"), dict) else {}
    rules = [e["name"] for _, e in _entries(data.get("watchlist")) if isinstance(e.get("name"), str)]
    first: dict[str, int] = {}
    for i, target in _entries(alerts.get("notify")):
        name = target.get("name", "notify")
        if isinstance(name, str) and name in first:
            yield (("alerts", "notify", i, "name"), f"duplicate notify name {name!r} (also alerts.notify"
                   f"[{first[name]}]; give each target a name)")
        elif isinstance(name, str) and name in _OTHER_SINKS:
            yield (("alerts", "notify", i, "name"), f"{name!r} is the name of another alert sink (taken: "
                   f"{', '.join(_OTHER_SINKS)})")
        elif isinstance(name, str):
            first[name] = i
        for j, rule in enumerate(target.get("rules") if isinstance(target.get("rules"), list) else ()):
            if isinstance(rule, str) and rule.strip() and rule not in rules:
                close = difflib.get_close_matches(rule, rules, n=1, cutoff=0.6)
                yield (("alerts", "notify", i, "rules", j), f"unknown rule {rule!r} (watchlist: "
                       f"{', '.join(rules) or 'none'})" + (f"; did you mean {close[0]!r}?" if close else ""))


def _custom_class_checks(data: dict, cameras: list[str]) -> Iterator[tuple[Loc, str]]:
    """custom_classes[].cameras exist; watch-list entries "head:class" name a configured custom class (that the
    head has the class is checked when the daemon loads the head file)."""
    heads = [e["name"] for _, e in _entries(data.get("custom_classes")) if isinstance(e.get("name"), str)]
    for i, entry in _entries(data.get("custom_classes")):
        for j, name in enumerate(entry.get("cameras") if isinstance(entry.get("cameras"), list) else ()):
            if isinstance(name, str) and name.strip() and name not in cameras:
                yield (("custom_classes", i, "cameras", j), f"unknown camera {name!r} (cameras: "
                       f"{', '.join(cameras) or 'none'})")
    for i, rule in _entries(data.get("watchlist")):
        for j, name in enumerate(rule.get("classes") if isinstance(rule.get("classes"), list) else ()):
            head = name.partition(":")[0] if isinstance(name, str) and ":" in name else None
            if head and head.strip() and head not in heads:
                close = difflib.get_close_matches(head, heads, n=1, cutoff=0.6)
                yield (("watchlist", i, "classes", j), f"{name!r}: no custom class {head!r} (custom_classes: "
                       f"{', '.join(heads) or 'none'})" + (f"; did you mean {close[0]!r}?" if close else ""))


# ---------------------------------------------------------------------------------------------------------
# Reading the file

def _walk(root: yaml.Node | None, source: str) -> tuple[dict[Loc, int], list[str]]:
    """The line of every key path (a key's own line, a list item's first line), and the duplicate keys, which
    PyYAML would silently drop. Walks the nodes before construction, so merge keys (<<) are no duplicates."""
    lines: dict[Loc, int] = {}
    duplicates: dict[int, str] = {}
    stack: list[tuple[Loc, Any]] = [((), root)] if root is not None else []
    while stack and len(lines) < _MAX_NODES:
        loc, node = stack.pop()
        lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                line = key.start_mark.line + 1
                if (key.tag, key.value) in seen:    # an alias may bring one mapping here twice: keyed by line
                    duplicates[line] = (f"{source}:{line}: duplicate key {key.value!r} (first at line "
                                        f"{seen[key.tag, key.value]}; YAML would keep only the last)")
                seen.setdefault((key.tag, key.value), line)
                lines.setdefault(loc + (key.value,), line)
                stack.append((loc + (key.value,), value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((loc + (i,), item) for i, item in enumerate(node.value))
    return lines, [duplicates[line] for line in sorted(duplicates)]


def _read_yaml(path: Path) -> tuple[Any, dict[Loc, int], list[str]]:
    """(document, line of each key path, duplicate-key errors); ConfigError when unreadable or not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (bad byte at offset {exc.start})"], path) from None
    except OSError as exc:
        why = {FileNotFoundError: "no such file", IsADirectoryError: "is a directory, not a config file",
               PermissionError: "permission denied"}.get(type(exc), f"cannot read: {exc.strerror or exc}")
        raise ConfigError([f"{path}: {why}"], path) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines, duplicates = _walk(node, str(path))
        return (loader.construct_document(node) if node is not None else None), lines, duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        start = exc.context_mark
        at = f" at line {start.line + 1}" if start and mark and start.line != mark.line else ""
        context = f" ({exc.context}{at})" if exc.context else ""
        raise ConfigError([f"{where}: YAML syntax error: {exc.problem or 'invalid YAML'}{context}"], path) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: YAML error: {exc}"], path) from None
    finally:
        loader.dispose()
