"""What the daemon itself announced, kept in its state directory: the only list of discovery configs it clears.

The broker is not a trustworthy record of what is ours: anyone allowed to write `<prefix>/discovery_index` (or any
other topic) could list a foreign device's config there. So the config topics we announce are written to a
small JSON file next to the event database (`<events db stem>-discovery.json`, atomically: temp file, fsync,
rename), and a restart clears those of the previous run it no longer announces. Nothing read from the broker
ever adds a topic to the clean-up.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger(__name__)

_MAX_RECORD = 1 << 20        # bytes: a larger file is not one we wrote


def write_json_atomic(path: Path, data: object) -> None:
    """Write `data` as JSON to `path` so that a crash leaves the old file or the new one, never a part.
    Raises OSError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def discovery_record_path(paused_state: Path) -> Path:
    """Next to the paused cameras' file, in the daemon's state directory: events-paused.json ->
    events-discovery.json."""
    p = Path(paused_state)
    return p.with_name(f"{p.name.removesuffix('.json').removesuffix('-paused')}-discovery.json")


class DiscoveryRecord:
    """The discovery config topics announced by the previous run (load) and by this one (save).
    `owned(topic)` filters what is loaded: a topic outside our own namespace is never taken from the file."""

    def __init__(self, path: Path, owned: Callable[[str], bool]) -> None:
        self.path = Path(path)
        self._owned = owned
        self._saved: frozenset[str] | None = None

    def load(self) -> frozenset[str] | None:
        """The recorded topics of our namespace; None when there is no record (the first run of this version)."""
        try:
            if self.path.stat().st_size > _MAX_RECORD:
                raise ValueError(f"larger than {_MAX_RECORD} bytes")
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("mqtt: cannot read the announced discovery configs from %s (%s); clearing none of a "
                        "previous run", self.path, exc)
            return frozenset()
        listed = data.get("topics") if isinstance(data, dict) else None
        topics = [t for t in listed if isinstance(t, str)] if isinstance(listed, list) else []
        mine = frozenset(t for t in topics if self._owned(t))
        if len(mine) < len(topics):
            log.warning("mqtt: %s lists %d topics outside our discovery namespace; they are left alone",
                        self.path, len(topics) - len(mine))
        self._saved = mine
        return mine

    def save(self, topics: Iterable[str]) -> None:
        new = frozenset(topics)
        if new == self._saved:
            return
        try:
            write_json_atomic(self.path, {"topics": sorted(new)})
        except OSError as exc:
            log.error("mqtt: cannot record the announced discovery configs in %s (%s); after a restart, configs "
                      "of entities removed meanwhile stay on the broker", self.path, exc)
            return
        self._saved = new
