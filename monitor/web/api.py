"""JSON documents of the API: status, events, predictions, and the validation of their query parameters."""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from monitor import __version__
from monitor.alerts.event import Event

CAMERA_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
EVENTS_LIMIT_MAX = 1000


class ApiError(Exception):
    """An error answered as JSON {"error": message} with this HTTP status. The application's handler passes the
    message through without_paths() (server paths become the config keys that name them)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def config_paths(config: Any) -> dict[str, str]:
    """Server paths of the config (as given and resolved) -> the key a client may see instead: events.database,
    alerts.snapshots, custom_classes[i].head/.examples (the default examples folder too), and the state folder
    around them (`<events.database folder>`)."""
    named: list[tuple[Any, str]] = []
    events = getattr(getattr(config, "events", None), "database", None)
    if events is not None:
        named.append((events, "events.database"))
        named.append((Path(events).parent / "examples", "<events.database folder>/examples"))
        named.append((Path(events).parent, "<events.database folder>"))
    snapshots = getattr(getattr(config, "alerts", None), "snapshots", None)
    if snapshots is not None:
        named.append((snapshots, "alerts.snapshots"))
    for i, c in enumerate(getattr(config, "custom_classes", ()) or ()):
        named.append((c.head, f"custom_classes[{i}].head"))
        folder = c.examples if c.examples is not None else (Path(events).parent / "examples" / c.name
                                                            if events is not None else None)
        if folder is not None:
            named.append((folder, f"custom_classes[{i}].examples"))
    out: dict[str, str] = {}
    for path, key in named:
        for form in (str(path), os.path.realpath(path)):
            if len(form) > 1:
                out.setdefault(form, key)
    return out


def without_paths(text: str, config: Any) -> str:
    """`text` with every server path of the config replaced by its key, longest path first (a file inside a
    configured folder becomes `key/rest`)."""
    if config is None or not text:
        return text
    paths = config_paths(config)
    for form in sorted(paths, key=len, reverse=True):
        if form in text:
            text = text.replace(form, paths[form])
    return text


def versions() -> dict[str, str]:
    import cv2
    from importlib.metadata import version
    # torch's version from its package metadata: importing it would map libtorch into a daemon that runs
    # the OpenVINO artifact and never needs torch.
    return {"monitor": __version__, "python": platform.python_version(), "torch": version("torch"),
            "opencv": cv2.__version__}


def model_json(classifier: Any) -> dict[str, Any]:
    meta = classifier.meta
    sha = getattr(classifier, "sha256", None) or (meta.source or {}).get("sha256")
    return {"name": meta.name, "engine": meta.engine, "precision": meta.precision,
            "untrained": bool(classifier.untrained), "sha256": sha}


def predictions_json(predictions: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"rank": i + 1, "label": p.label, "index": int(p.index), "probability": round(float(p.probability), 6)}
            for i, p in enumerate(predictions)]


def _num(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def camera_json(app: Any, name: str, camera: Any) -> dict[str, Any]:
    doc = dict(camera.status())        # its "source" is already redacted by the camera
    result = app.results.get(name)
    doc["predictions"] = predictions_json(result.predictions) if result is not None else []
    doc["classified_at"] = result.classified_at if result is not None else None
    doc["fps_out"] = _num(app.results.fps_out(name), 2)
    doc["latency"] = _num(app.results.latency(name))
    doc["active"] = list(app.alerts.active(name))
    doc["custom"] = ([{"head": c.head, "label": c.label, "probability": round(c.probability, 6),
                       "classes": {k: round(float(v), 6) for k, v in zip(c.classes, c.probabilities)}}
                      for c in result.custom.values()] if result is not None else [])
    doc["heatmap"] = name in getattr(app, "heatmaps", ())
    doc["paused"] = name in getattr(app, "paused", ())    # classification paused over MQTT
    doc["stream"] = f"/stream/{name}.mjpg"
    doc["snapshot"] = f"/snapshot/{name}.jpg"
    return doc


def status_json(app: Any, versions_doc: dict[str, str]) -> dict[str, Any]:
    now = time.time()
    return {
        # items() copied first: a config reload may replace the dict while we read it
        "cameras": [camera_json(app, name, camera) for name, camera in list(app.cameras.items())],
        "custom_classes": app.custom.status_json(list(app.cameras)) if getattr(app, "custom", None) else [],
        "model": model_json(app.classifier),
        "top_k": app.config.model.top_k,
        "ready": bool(app.ready()),
        "started_at": app.started_at,
        "uptime": round(max(0.0, now - app.started_at), 3),
        "time": now,
        "versions": versions_doc,
    }


def event_json(ev: Event) -> dict[str, Any]:
    """An event of the history for the API (models.Event): the snapshot's file path stays on the server, the
    client gets a URL."""
    doc = {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev) if f.name != "snapshot"}
    doc["snapshot_url"] = f"/api/events/{ev.id}/snapshot.jpg" if ev.snapshot else None
    return doc


def events_params(query: Mapping[str, list[str]], cameras: Any) -> dict[str, Any]:
    """Validate ?camera=&since=&limit= into EventStore.query keyword arguments (ApiError 400/404)."""
    unknown = sorted(set(query) - {"camera", "since", "limit"})
    if unknown:
        raise ApiError(400, f"unknown query parameter {unknown[0]!r} (allowed: camera, since, limit)")
    for key, values in query.items():
        if len(values) != 1:
            raise ApiError(400, f"query parameter {key!r} given {len(values)} times")
    out: dict[str, Any] = {"camera": None, "since": None, "limit": 100}
    if "camera" in query:
        camera = query["camera"][0]
        if camera:
            if not CAMERA_NAME.match(camera):
                raise ApiError(400, f"camera: not a camera name ({camera[:64]!r})")
            if camera not in cameras:
                raise ApiError(404, f"camera: no camera named {camera!r}")
            out["camera"] = camera
    if "since" in query and query["since"][0] != "":
        raw = query["since"][0]
        try:
            since = float(raw)
        except ValueError:
            raise ApiError(400, f"since: expected Unix time in seconds (got {raw[:64]!r})") from None
        if not math.isfinite(since) or since < 0:
            raise ApiError(400, f"since: expected a finite Unix time >= 0 (got {raw[:64]!r})")
        out["since"] = since
    if "limit" in query and query["limit"][0] != "":
        raw = query["limit"][0]
        if not re.fullmatch(r"[0-9]{1,7}", raw):
            raise ApiError(400, f"limit: expected an integer 1..{EVENTS_LIMIT_MAX} (got {raw[:64]!r})")
        limit = int(raw)
        if not 1 <= limit <= EVENTS_LIMIT_MAX:
            raise ApiError(400, f"limit: expected an integer 1..{EVENTS_LIMIT_MAX} (got {raw[:64]!r})")
        out["limit"] = limit
    return out
