"""HTTP server of the daemon: status page, MJPEG live view, JSON API, upload, /metrics, auth."""
from __future__ import annotations

from monitor.web.server import WebServer

__all__ = ["WebServer"]
