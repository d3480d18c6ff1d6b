"""Typed configuration: what the rest of the daemon reads. Validation lives in config.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

# "center" | "full" | (x, y, w, h) region of interest in pixels
Crop = Union[str, tuple[int, int, int, int]]


@dataclass(frozen=True)
class AuthConfig:
    mode: str = "none"                      # none | basic | bearer
    username: str = ""
    password_file: Optional[Path] = None    # basic: file holding the password
    token_file: Optional[Path] = None       # bearer: file holding the token
    protect_metrics: bool = True            # /metrics behind auth too
    secret: str = field(default="", repr=False)  # read from the file at validation time, never logged


@dataclass(frozen=True)
class StreamConfig:
    fps: float = 10.0                       # MJPEG frames per second sent to viewers
    width: int = 0                          # 0 = native width; else resized to this width
    quality: int = 80                       # JPEG quality 1..100
    max_viewers: int = 20


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    upload_max_bytes: int = 10 * 1024 * 1024
    auth: AuthConfig = field(default_factory=AuthConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)


@dataclass(frozen=True)
class ModelConfig:
    weights: Path = Path("weights/resnet18-int8.pt")
    threads: int = 2
    top_k: int = 3
    batch_max: int = 8


@dataclass(frozen=True)
class MotionConfig:
    enabled: bool = False
    threshold: float = 0.02                 # fraction of changed pixels on the small grey image
    keepalive: float = 30.0                 # seconds: classify anyway this often while the scene is still


@dataclass(frozen=True)
class CameraConfig:
    name: str
    source: str                             # "0", /dev/video0, rtsp://..., http(s)://..., a file path
    fps: float = 5.0                        # classifications per second; 0 = every frame
    crop: Crop = "center"
    loop: bool = False                      # files only: start again at the end (demos)
    open_timeout: float = 10.0              # seconds
    read_timeout: float = 10.0              # seconds
    stale_after: float = 10.0               # reopen when no frame arrived for this long
    backoff_max: float = 30.0               # cap of the exponential reconnect backoff
    motion: MotionConfig = field(default_factory=MotionConfig)


@dataclass(frozen=True)
class RuleConfig:
    name: str
    classes: tuple[str, ...]                # as written by the user (class or group names)
    indices: tuple[tuple[str, tuple[int, ...]], ...]  # resolved: (class/group name, ImageNet indices)
    cameras: tuple[str, ...] = ()           # empty = all cameras
    min_score: float = 0.5
    min_frames: int = 3
    end_after: float = 10.0                 # seconds without a hit before the event ends
    cooldown: float = 60.0                  # seconds after an event ends before the rule may alert again


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout: float = 5.0
    retries: int = 3


@dataclass(frozen=True)
class AlertsConfig:
    snapshots: Optional[Path] = None
    webhook: Optional[WebhookConfig] = None
    command: tuple[str, ...] = ()           # argv with {camera} {rule} {label} {score} {event_id} {snapshot}
    command_timeout: float = 10.0
    queue_size: int = 64                    # per sink; full -> drop and count


@dataclass(frozen=True)
class EventsConfig:
    database: Path = Path("events.db")
    retention: float = 30 * 86400.0         # seconds


def _default_client_id() -> str:
    import socket
    return f"monitor-{socket.gethostname()}"


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password_file: Optional[Path] = None    # file holding the password (never inline in the config)
    tls: bool = False                       # TLS with the system's CA certificates
    topic_prefix: str = "monitor"
    discovery_prefix: Optional[str] = "homeassistant"   # None: no Home Assistant discovery
    client_id: str = field(default_factory=_default_client_id)
    label_keepalive: float = 60.0           # seconds: re-publish an unchanged label this often
    queue_size: int = 256                   # outgoing messages held while the broker is away; full -> dropped
    password: str = field(default="", repr=False)  # read from password_file at validation time, never logged


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"                     # debug | info | warning | error
    format: str = "text"                    # text | json


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cameras: tuple[CameraConfig, ...] = ()
    watchlist: tuple[RuleConfig, ...] = ()
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    mqtt: Optional[MqttConfig] = None       # None: no MQTT
    path: Optional[Path] = None             # the file it was read from
