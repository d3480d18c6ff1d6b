"""FastAPI dependencies: what a route receives besides its own parameters, typed.

A route names what it needs as a parameter annotated with one of the aliases below (`Annotated[...,
Depends(...)]`); no route reads request.app.state itself. The application carries the server as
`app.state.server` (monitor.web.app.create_app). The server is declared here as the protocol `Server`, the part
of monitor.web.server.WebServer that routes use, rather than imported: the server imports the application and
its routes, which must not import it back.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Annotated, Mapping, Protocol

from fastapi import Depends, Request

from monitor.capture.camera import Camera
from monitor.web.decoders import DecoderPool
from monitor.web.errors import ApiError
from monitor.web.mjpeg import StreamHub
from monitor.web.paths import CameraName
from monitor.web.services import WebServices
from monitor.web.upload import BodyBudget, PixelBudget

HEAD_KEY = "monitor.head"       # request scope key set by the guard: a HEAD, which FastAPI routes see as a GET


class Server(Protocol):
    """What routes use of the HTTP server besides the daemon's services (read only)."""

    @property
    def services(self) -> WebServices: ...

    @property
    def static(self) -> Mapping[str, tuple[bytes, str]]: ...      # the status page's files: (content, type)

    @property
    def versions(self) -> Mapping[str, str]: ...                  # /api/status "versions"

    @property
    def streams(self) -> StreamHub: ...                           # live views

    @property
    def stopping(self) -> threading.Event: ...                    # set when the server stops (live streams end)

    @property
    def upload_max_bytes(self) -> int: ...

    @property
    def upload_timeout(self) -> float: ...

    @property
    def body_budget(self) -> BodyBudget: ...                      # upload bodies held in memory at once

    @property
    def uploads(self) -> asyncio.Semaphore | None: ...            # uploads at once (made on the server's loop)

    @property
    def pixels(self) -> PixelBudget: ...

    @property
    def decoders(self) -> DecoderPool: ...


def server_of(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


async def get_server(request: Request) -> Server:
    return server_of(request)


ServerDep = Annotated[Server, Depends(get_server)]


async def get_services(server: ServerDep) -> WebServices:
    return server.services


ServicesDep = Annotated[WebServices, Depends(get_services)]


async def get_camera(camera: CameraName, services: ServicesDep) -> Camera:
    """The camera named by the path parameter `camera`; 404 when there is none (a reload may have removed it)."""
    found = services.cameras.get(camera)
    if found is None:
        raise ApiError(404, f"no camera named {camera!r}")
    return found


CameraDep = Annotated[Camera, Depends(get_camera)]


async def is_head(request: Request) -> bool:
    return bool(request.scope.get(HEAD_KEY))
