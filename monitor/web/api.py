"""JSON documents of the API: status, cameras, events, predictions, the model; server paths in messages replaced by
the config keys that name them."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from monitor.alerts.event import Event
from monitor.config.types import Config
from monitor.core import groups
from monitor.core.labels import class_names
from monitor.inference.classifier import Classifier, Prediction
from monitor.web.services import WebServices


def config_paths(config: Config) -> dict[str, str]:
    """Server paths of the config (as given and resolved) -> the key a client may see instead: events.database,
    alerts.snapshots, custom_classes[i].head/.examples (the default examples folder too), and the state folder
    around them (`<events.database folder>`)."""
    events = config.events.database
    named: list[tuple[Path, str]] = [(events, "events.database"),
                                     (Path(events).parent / "examples", "<events.database folder>/examples"),
                                     (Path(events).parent, "<events.database folder>")]
    if config.alerts.snapshots is not None:
        named.append((config.alerts.snapshots, "alerts.snapshots"))
    for i, c in enumerate(config.custom_classes or ()):
        named.append((c.head, f"custom_classes[{i}].head"))
        folder = c.examples if c.examples is not None else Path(events).parent / "examples" / c.name
        named.append((folder, f"custom_classes[{i}].examples"))
    out: dict[str, str] = {}
    for path, key in named:
        for form in (str(path), os.path.realpath(path)):
            if len(form) > 1:
                out.setdefault(form, key)
    return out


def without_paths(text: str, config: Config | None) -> str:
    """`text` with every server path of the config replaced by its key, longest path first (a file inside a
    configured folder becomes `key/rest`)."""
    if config is None or not text:
        return text
    paths = config_paths(config)
    for form in sorted(paths, key=len, reverse=True):
        if form in text:
            text = text.replace(form, paths[form])
    return text


def model_json(classifier: Classifier) -> dict[str, Any]:
    meta = classifier.meta
    return {"name": meta.name, "engine": meta.engine, "precision": meta.precision,
            "untrained": bool(classifier.untrained), "sha256": classifier.sha256}


def predictions_json(predictions: Sequence[Prediction], language: str = "en") -> list[dict[str, Any]]:
    """Top-k as the API answers it: the index and English name always, `display` in `language` beside them."""
    names = class_names(language)
    return [{"rank": i + 1, "label": p.label, "index": int(p.index), "probability": round(float(p.probability), 6),
             "display": names[int(p.index)]} for i, p in enumerate(predictions)]


def _num(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def camera_json(services: WebServices, name: str, status: Mapping[str, Any], language: str = "en") -> dict[str, Any]:
    """A camera's status (Camera.status(), its "source" already redacted) with what the pipeline made of it."""
    doc = dict(status)
    results = services.results
    result = results.get(name)
    doc["predictions"] = predictions_json(result.predictions, language) if result is not None else []
    doc["classified_at"] = result.classified_at if result is not None else None
    doc["fps_out"] = _num(results.fps_out(name), 2)
    doc["latency"] = _num(results.latency(name))
    doc["active"] = list(services.alerts.active(name))
    doc["active_display"] = [groups.display_name(label, language) for label in doc["active"]]
    doc["custom"] = ([{"head": c.head, "label": c.label, "probability": round(c.probability, 6),
                       "classes": {k: round(float(v), 6) for k, v in zip(c.classes, c.probabilities)}}
                      for c in result.custom.values()] if result is not None else [])
    doc["heatmap"] = name in services.heatmaps
    doc["paused"] = name in services.paused           # classification paused over MQTT
    doc["stream"] = f"/stream/{name}.mjpg"
    doc["snapshot"] = f"/snapshot/{name}.jpg"
    return doc


def status_json(services: WebServices, versions: Mapping[str, str], language: str | None = None) -> dict[str, Any]:
    """The status document; display names in `language` (None: the config's labels.language)."""
    now = time.time()
    language = language or services.config.labels.language
    cameras = services.cameras          # one mapping: a config reload may replace it while we read it
    started_at = services.started_at
    return {
        "cameras": [camera_json(services, name, camera.status(), language) for name, camera in cameras.items()],
        "custom_classes": services.custom.status_json(list(cameras)),
        "model": model_json(services.classifier),
        "top_k": services.config.model.top_k,
        "language": language,
        "ready": bool(services.ready()),
        "started_at": started_at,
        "uptime": round(max(0.0, now - started_at), 3),
        "time": now,
        "versions": dict(versions),
        "node": services.config.node.name,
        "fleet": fleet_json(services.fleet),
    }


def fleet_json(fleet: Any) -> dict[str, Any] | None:
    """This node's side of the fleet, from memory (no database round trip): the page asks /api/fleet for the rest."""
    if fleet is None:
        return None
    rep = fleet.replicator
    return {"public_url": fleet.url, "database": fleet.database.where, "cameras_held": sorted(fleet.held()),
            "db_up": bool(rep.db_up) if rep is not None else False,
            "outbox_pending": rep.pending if rep is not None else 0,
            "outbox_lag": round(rep.lag, 3) if rep is not None else 0.0}


def event_json(ev: Event, language: str = "en", node: str | None = None) -> dict[str, Any]:
    """An event of the history for the API (models.Event): the snapshot's file path stays on the server, the
    client gets a URL."""
    doc = dataclasses.asdict(ev)
    del doc["snapshot"]
    doc["snapshot_url"] = f"/api/events/{ev.id}/snapshot.jpg" if ev.snapshot else None
    doc["display"] = groups.display_name(ev.label, language)     # beside the English label, never instead
    doc["has_clip"] = ev.clip_state == "complete" and ev.clip is not None
    doc["clip"] = f"/api/events/{ev.id}/clip.mp4" if doc["has_clip"] else None
    doc["node"] = node
    return doc
