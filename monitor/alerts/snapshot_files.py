"""The snapshot folder's file names: where the snapshot sink writes an event's pictures, and how the folder sweep
(events.sweep_snapshots) and the web layer find them again. One place, so writer and readers cannot disagree.

    <root>/<camera>/<YYYYmmdd-HHMMSS>-<id|noid>-<rule>.jpg    the picture with the overlay
    <root>/<camera>/<...>.clean.jpg                          custom-class events: the frame as captured
    <root>/<camera>/.<name>.<pid>.tmp                        while writing (renamed into place when whole)
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from monitor.alerts.event import Event

# Only files named so are ever deleted by the sweep: the folder may be shared with other files.
SNAPSHOT_NAME = re.compile(r"\d{8}-\d{6}-(?:\d+|noid)-[A-Za-z0-9._-]*?(?:\.clean)?\.jpg")
TMP_NAME = re.compile(r"\.\d{8}-\d{6}-.*\.jpg\.\d+\.tmp")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def snapshot_path(root: Path | str, event: Event) -> Path:
    """Where the snapshot of `event` goes under `root` (camera and rule names made safe path components)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(event.started_at))
    event_id = event.id if event.id is not None else "noid"
    return Path(root) / _safe(event.camera) / f"{stamp}-{event_id}-{_safe(event.rule)}.jpg"


def clean_snapshot_path(snapshot: str | Path) -> Path:
    """The overlay-free twin of a snapshot (custom-class events: labelling an event files this frame)."""
    p = Path(snapshot)
    return p.with_name(p.stem + ".clean.jpg")


def temporary_path(path: Path) -> Path:
    """The name a snapshot is written under before its rename (readers see the whole JPEG or nothing)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _safe(name: str) -> str:
    """A path component from a camera or rule name (no separators, no dot-dot)."""
    cleaned = _UNSAFE.sub("_", name).strip(".") or "_"
    return cleaned[:64]
