"""Path parameters as strict as the names they hold: anything else never reaches a handler (the guard answers 404
from the route table). Route modules build their paths from the fragments here, which registers the convertors
before any route uses them."""
from __future__ import annotations

import re
from typing import Annotated

from fastapi import Path
from starlette.convertors import Convertor, register_url_convertor

from monitor.config.fields import NAME_RE

STATIC_FILES = ("app.js", "style.css")


class _Name(Convertor[str]):
    regex = NAME_RE.pattern         # a camera or head name: the config's own rule

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _StaticFile(_Name):
    regex = "|".join(re.escape(name) for name in STATIC_FILES)


class _EventId(Convertor[int]):
    regex = "[0-9]{1,18}"           # below 2**63: SQLite's row ids

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(int(value))


register_url_convertor("name", _Name())
register_url_convertor("event_id", _EventId())
register_url_convertor("static_file", _StaticFile())

CAMERA = "{camera:name}"
HEAD = "{head:name}"
EVENT = "{event_id:event_id}"
STATIC_FILE = "{name:static_file}"

# The path parameters as routes declare them (documented in /openapi.json; the convertors have checked them).
CameraName = Annotated[str, Path(pattern=f"^{NAME_RE.pattern}$", description="config: cameras[].name")]
HeadName = Annotated[str, Path(pattern=f"^{NAME_RE.pattern}$", description="config: custom_classes[].name")]
EventId = Annotated[int, Path(ge=0, description="the event's id (/api/events)")]
