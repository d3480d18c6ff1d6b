"""The event history and the snapshots of its events."""
from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

import psycopg

from monitor.alerts.event import Event
from monitor.alerts.events import EventStoreError
from monitor.clips.files import resolve
from monitor.clips.manager import clips_folder
from monitor.fleet.database import FleetError
from monitor.fleet.status import fleet_events
from monitor.web import api, models
from monitor.web.deps import ServicesDep
from monitor.web.errors import NO_STORE, ApiError
from monitor.web.params import EventsParams, EventsQuery
from monitor.web.services import WebServices
from monitor.web.paths import EVENT, EventId

log = logging.getLogger("monitor.web")

SNAPSHOT_MAX_BYTES = 20 * 1024 * 1024

router = APIRouter()


@router.get("/api/events", response_model=models.Events, responses=models.error_responses(400, 401, 404, 503),
            summary="Alert events, newest first")
def events(query: EventsParams, services: ServicesDep) -> JSONResponse:
    if query.scope == "fleet":
        return _fleet_events(query, services)
    try:
        rows = services.events.query(camera=query.camera, since=query.since, limit=query.limit, strict=True)
    except EventStoreError as e:
        log.error("http: /api/events: %s", e)
        raise ApiError(503, f"event history unavailable: {e}", {"Retry-After": "5"}) from None
    language, node = query.lang or services.config.labels.language, services.config.node.name
    doc = models.Events(events=[models.Event.model_validate(api.event_json(e, language, node)) for e in rows])
    return JSONResponse(doc.model_dump(mode="json"), 200, NO_STORE)


def _fleet_events(query: EventsQuery, services: WebServices) -> JSONResponse:
    """Every node's events, from PostgreSQL: items carry node and an absolute snapshot_url on that node."""
    if services.fleet is None:
        raise ApiError(400, "scope: fleet needs the fleet section in the config (this node is not in a fleet)")
    try:
        rows = fleet_events(services.fleet.database, camera=query.camera, since=query.since, limit=query.limit)
    except (psycopg.Error, FleetError) as e:
        log.error("http: /api/events?scope=fleet: %s", " ".join(str(e).split())[:200])
        raise ApiError(503, "fleet database unavailable", {"Retry-After": "5"}) from None
    return JSONResponse({"events": rows}, 200, NO_STORE)


def _event(event_id: int, services: WebServices, what: str) -> Event:
    """The event a path names: 503 while the history cannot be read, 404 when there is no such event."""
    try:
        ev = services.events.get(event_id, strict=True)
    except EventStoreError as e:
        log.error("http: %s: %s", what, e)
        raise ApiError(503, f"event history unavailable: {e}", {"Retry-After": "5"}) from None
    if ev is None:
        raise ApiError(404, f"no event {event_id}")
    return ev


@router.get(f"/api/events/{EVENT}/clip.mp4", response_class=FileResponse,
            responses={**models.error_responses(400, 401, 404, 416, 503),
                       206: {"description": "the byte range asked for (Range: bytes=...)"}},
            summary="The event's video clip (MP4), with HTTP Range requests (206) so players can seek")
def event_clip(event_id: EventId, services: ServicesDep) -> FileResponse:
    """Starlette's FileResponse answers Range requests itself (206 with Content-Range, 416 past the end,
    multipart for several ranges, Accept-Ranges on every answer), streaming the file in chunks from a thread."""
    ev = _event(event_id, services, "event clip")
    if ev.clip_state != "complete" or not ev.clip:
        raise ApiError(404, f"event {event_id} has no clip" + (f" ({ev.clip_state})" if ev.clip_state != "none" else ""))
    path = resolve(clips_folder(services.config), ev.clip)
    if path is None or not path.is_file():
        raise ApiError(404, f"clip of event {event_id} is missing")
    return FileResponse(path, media_type="video/mp4",
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"})


@router.get(f"/api/events/{EVENT}/snapshot.jpg", response_class=Response,
            responses=models.error_responses(400, 401, 404, 503),
            summary="The snapshot JPEG saved when the event started")
def event_snapshot(event_id: EventId, services: ServicesDep) -> Response:
    ev = _event(event_id, services, "event snapshot")
    if not ev.snapshot:
        raise ApiError(404, f"event {event_id} has no snapshot")
    path = Path(ev.snapshot)
    try:
        if not path.is_file() or path.stat().st_size > SNAPSHOT_MAX_BYTES:
            raise ApiError(404, f"snapshot of event {event_id} is missing")
        data = path.read_bytes()
    except OSError:
        raise ApiError(404, f"snapshot of event {event_id} cannot be read") from None
    return Response(data, 200, {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
                    "image/jpeg")
