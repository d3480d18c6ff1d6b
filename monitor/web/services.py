"""WebServices: what the HTTP port reads and drives of the running daemon, typed.

The daemon builds it (monitor.daemon.Daemon.web_services()) and hands it to WebServer; routes receive it through
FastAPI dependencies (monitor.web.deps). The web layer comes before the daemon in the pipeline, so it names the
components by their own types, never the daemon. The components live as long as the daemon; what a reload (or
start()) replaces, the config and the cameras, is read through a function at every access, so a request always
sees the current one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from monitor.alerts.engine import AlertEngine
from monitor.alerts.events import EventStore
from monitor.capture.camera import Camera
from monitor.config.types import Config
from monitor.core.metrics import Metrics
from monitor.fleet.service import Fleet
from monitor.inference.classifier import Classifier
from monitor.inference.heads.service import CustomClasses
from monitor.inference.results import ResultBoard


@dataclass(frozen=True, kw_only=True, slots=True)
class WebServices:
    results: ResultBoard
    alerts: AlertEngine
    events: EventStore
    classifier: Classifier
    custom: CustomClasses
    metrics: Metrics
    heatmaps: set[str]                          # cameras whose live view shows the class activation map (toggled
                                                # over HTTP, read by the stream encoders)
    ready: Callable[[], bool]                   # the pipeline runs (/readyz)
    current_config: Callable[[], Config]
    current_cameras: Callable[[], Mapping[str, Camera]]
    current_paused: Callable[[], frozenset[str]]    # cameras paused over MQTT (enabled/set OFF)
    current_started_at: Callable[[], float]     # time.time() when the daemon started
    fleet: Fleet | None = None                  # this node's fleet stage (config.fleet), else None

    @property
    def config(self) -> Config:
        return self.current_config()

    @property
    def cameras(self) -> Mapping[str, Camera]:
        """The cameras by name, in the config's order; a reload replaces the mapping whole."""
        return self.current_cameras()

    @property
    def paused(self) -> frozenset[str]:
        return self.current_paused()

    @property
    def started_at(self) -> float:
        return self.current_started_at()
