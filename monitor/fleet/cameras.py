"""The fleet cameras: one YAML file, `cameras: [...]` with entries exactly like the config's cameras, that every
node loads (fleet.cameras_file).

A file rather than a PostgreSQL table: cameras are configuration, so they get what the config has (review in
git, deployment with the rest of /etc/monitor, `monitor check-config`-style errors with key path and line,
editor completion from the same schema) and a node can validate them before it claims anything; the database
holds only what changes at run time (leases, heartbeats, events). Every node must hold the same file: a node
claims only cameras its file names, and releases a lease on a camera its file no longer lists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from monitor.config.fields import List
from monitor.config.loader import ConfigError, _document_order, _line, _read_yaml, _word
from monitor.config.types import CameraConfig, Section
from pydantic import Field


class FleetCamerasFile(Section):
    cameras: List(CameraConfig, empty="must list at least one camera") = Field(description=(
        "The fleet cameras, entries like the config's cameras; each runs on one node at a time."))


def load_fleet_cameras(path: Path, local: tuple[str, ...] = ()) -> tuple[CameraConfig, ...]:
    """The cameras of the fleet file; ConfigError (its .errors: "cameras[1].fps: ... (line 9)") when invalid or
    when a name is used twice or clashes with a local camera of this node."""
    path = Path(path)
    data, lines, problems_text = _read_yaml(path)
    problems: list[tuple[tuple[Any, ...], str]] = []
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: must be a mapping with a 'cameras' list"], path)
    seen: dict[str, int] = {}
    for i, entry in enumerate(data.get("cameras") or ()):
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str):
            if name in seen:
                problems.append((("cameras", i, "name"), f"duplicate camera name {name!r} (also cameras[{seen[name]}])"))
            elif name in local:
                problems.append((("cameras", i, "name"), f"{name!r} is also a local camera of this node "
                                                         "(config cameras); fleet camera names must be their own"))
            seen.setdefault(name, i)
    model = None
    try:
        model = FleetCamerasFile.model_validate(data, context={"base_dir": path.absolute().parent})
    except ValidationError as err:
        problems += [_word(e) for e in err.errors(include_url=False)]
    if problems or problems_text:
        order = _document_order(data)
        problems.sort(key=lambda p: [order.get(p[0][:n], 100_000) for n in range(1, len(p[0]) + 1)])
        raise ConfigError(problems_text + [_line(loc, message, lines) for loc, message in problems], path)
    assert model is not None
    return model.cameras
