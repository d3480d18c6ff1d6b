"""Typed documents of the JSON API (pydantic v2): what /api/* answers, and the shape of every error.

They are the response models of the FastAPI routes, so /openapi.json describes them. Documents built from
dicts other components fill (camera status) allow extra keys: a field added there is passed through rather than
silently dropped. An event's document is built from the fields of monitor.alerts.event.Event itself (a field
added there appears here, documented).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from monitor.alerts import event as alert_event


class Error(BaseModel):
    """Every 4xx/5xx answer: one message naming what was wrong."""
    error: str = Field(description="what was wrong, and where")


class Prediction(BaseModel):
    rank: int
    label: str = Field(description="the English ImageNet-1k class name (the machine name, whatever the language)")
    index: int = Field(description="ImageNet-1k class index")
    probability: float
    display: str = Field(description="the class name in the display language (?lang=, else labels.language)")


class Model(BaseModel):
    name: str
    engine: str
    precision: str
    untrained: bool
    sha256: Optional[str]


class CameraStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    source: str = Field(description="the camera URL with credentials redacted")
    state: str = Field(description="connecting | up | down")
    reason: Optional[str] = None
    fps_in: Optional[float] = None
    frames: int = 0
    reconnects: int = 0
    last_frame_at: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    predictions: list[Prediction]
    classified_at: Optional[float]
    fps_out: Optional[float]
    latency: Optional[float]
    active: list[str] = Field(description="labels of the alert events open on this camera")
    active_display: list[str] = Field([], description="the same labels in the display language (?lang=)")
    paused: bool = Field(default=False, description="classification paused (MQTT enabled/set OFF)")
    stream: str
    snapshot: str
    custom: list[dict] = Field([], description="custom heads' answers: head, label, probability, classes")
    heatmap: bool = Field(False, description="the live view shows the class activation map")


class Status(BaseModel):
    cameras: list[CameraStatus]
    custom_classes: list[dict] = Field([], description="heads, their example counts and retraining state")
    model: Model
    top_k: int
    language: str = Field(description="the language of the display names: ?lang=, else labels.language (en | zh)")
    ready: bool
    started_at: float
    uptime: float
    time: float
    versions: dict[str, str]
    node: str = Field("", description="this daemon's node name (node.name)")
    fleet: Optional[dict] = Field(None, description=(
        "this node in the fleet: public_url, database (redacted), cameras_held, db_up, outbox_pending, outbox_lag; "
        "null without fleet"))


# Event fields the API shows otherwise: the snapshot's server path stays on the server (the client gets
# snapshot_url), and every event the API lists comes from the history, so it has an id.
_EVENT_HIDDEN = frozenset({"snapshot", "clip"})     # clip: a file name on the server; the client gets its URL
_EVENT_TYPES: dict[str, Any] = {"id": int}


def _event_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(alert_event.Event)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(alert_event.Event):
        if f.name in _EVENT_HIDDEN:
            continue
        required = f.default is dataclasses.MISSING or f.name in _EVENT_TYPES
        out[f.name] = (_EVENT_TYPES.get(f.name, hints[f.name]),
                       Field(... if required else f.default, description=f.metadata.get("doc")))
    return out


Event = create_model(
    "Event",
    __doc__="An alert event (monitor.alerts.event.Event) as the API shows it.",
    __config__=ConfigDict(extra="forbid"),
    **_event_fields(),
    snapshot_url=(Optional[str], Field(description="URL of the event's snapshot JPEG, if one was saved")),
    display=(str, Field("", description="the label in the display language (?lang=, else labels.language)")),
    has_clip=(bool, Field(False, description="a complete, playable video clip of the event exists")),
    clip=(Optional[str], Field(None, description="URL of the event's MP4 clip (/api/events/{id}/clip.mp4) once it "
                               "is complete, else null")),
    node=(Optional[str], Field(None, description="node.name of the daemon that holds the event")),
)


class Events(BaseModel):
    events: list[Event]


class Classification(BaseModel):
    predictions: list[Prediction]
    model: Model
    width: int
    height: int
    explanation: Optional[dict] = Field(None, description="with ?explain=true: the top class's activation map "
                                        "(grid 7x7, 0..1) over box (x, y, w, h as fractions of the image); "
                                        "method: cam (exact, ResNets) or grad-cam (MobileNetV3)")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses` for OpenAPI: each status code answers an Error."""
    return {code: {"model": Error} for code in codes}
