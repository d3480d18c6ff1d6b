"""Typed documents of the JSON API (pydantic v2): what /api/* answers, and the shape of every error.

They are the response models of the FastAPI routes, so /openapi.json describes them. Documents built from
dicts other components fill (camera status, events) allow extra keys: a field added there is passed through
rather than silently dropped.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class Error(BaseModel):
    """Every 4xx/5xx answer: one message naming what was wrong."""
    error: str = Field(description="what was wrong, and where")


class Prediction(BaseModel):
    rank: int
    label: str
    index: int = Field(description="ImageNet-1k class index")
    probability: float


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
    paused: bool = Field(default=False, description="classification paused (MQTT enabled/set OFF)")
    stream: str
    snapshot: str


class Status(BaseModel):
    cameras: list[CameraStatus]
    model: Model
    top_k: int
    ready: bool
    started_at: float
    uptime: float
    time: float
    versions: dict[str, str]


class Event(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    camera: str
    rule: str
    label: str
    score: float
    peak_score: Optional[float] = None
    started_at: float
    ended_at: Optional[float] = None
    snapshot_url: Optional[str] = Field(description="URL of the event's snapshot JPEG, if one was saved")


class Events(BaseModel):
    events: list[Event]


class Classification(BaseModel):
    predictions: list[Prediction]
    model: Model
    width: int
    height: int
