"""The live view of a camera: its newest frame with the overlay (JPEG), and the MJPEG stream."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from monitor.render.jpeg import encode_jpeg
from monitor.web import models
from monitor.web.deps import HEAD_KEY, CameraDep, Server, ServerDep
from monitor.web.errors import NO_STORE, ApiError, error_response
from monitor.web.mjpeg import BOUNDARY, ViewerLimit, render
from monitor.web.paths import CAMERA, CameraName
from monitor.web.protocol import STREAMING_KEY, TRANSPORT_KEY

log = logging.getLogger("monitor.web")

router = APIRouter()


@router.get(f"/snapshot/{CAMERA}.jpg", response_class=Response, responses=models.error_responses(400, 401, 404, 503),
            summary="The newest frame of a camera with the overlay, as JPEG")
def snapshot(camera: CameraName, cam: CameraDep, server: ServerDep) -> Response:
    frame = cam.latest()
    if frame is None:
        raise ApiError(503, f"camera {camera!r} has not delivered a frame yet", {"Retry-After": "2"})
    cfg = server.streams.cfg
    jpeg = encode_jpeg(render(server.services, camera, frame.image, cfg.width), cfg.quality)
    return Response(jpeg, 200, NO_STORE, "image/jpeg")


@router.get(f"/stream/{CAMERA}.mjpg", response_class=Response, responses=models.error_responses(400, 401, 404, 503),
            summary="Live view: multipart/x-mixed-replace JPEG stream with the overlay")
async def stream(camera: CameraName, _: CameraDep, server: ServerDep) -> Response:
    return MjpegResponse(server, camera)


class MjpegResponse(Response):
    """multipart/x-mixed-replace: the encoder's parts, fanned out (see monitor.web.mjpeg)."""

    media_type = f"multipart/x-mixed-replace; boundary={BOUNDARY}"

    def __init__(self, server: Server, camera: str) -> None:
        super().__init__(None, 200, {"Cache-Control": "no-store, private", "Pragma": "no-cache",
                                     "X-Content-Type-Options": "nosniff"}, self.media_type)
        del self.headers["content-length"]
        self.server = server
        self.camera = camera

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        hub = self.server.streams
        try:
            encoder = hub.join(self.camera, asyncio.get_running_loop())
        except ViewerLimit as e:
            await error_response(503, str(e), {"Retry-After": "5"})(scope, receive, send)
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            transport = scope.get("extensions", {}).get(TRANSPORT_KEY)
            if scope.get(HEAD_KEY) or transport is None:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            scope["extensions"][STREAMING_KEY] = True
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "-"
            viewer = await encoder.serve(peer, transport, send, receive, self.server.stopping.is_set)
            log.debug("mjpeg %s: viewer %s ended (%s): %d frames sent, %d skipped", self.camera, peer,
                      viewer.reason, viewer.sent, viewer.skipped)
            if viewer.reason != "stalled":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            hub.leave(self.camera)
