"""Health, readiness, Prometheus metrics and the status document."""
from __future__ import annotations

import logging

import psycopg
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.web import api, models
from monitor.web.deps import ServerDep, ServicesDep
from monitor.web.errors import NO_STORE, ApiError
from monitor.fleet.database import FleetError
from monitor.fleet.status import fleet_status
from monitor.web.params import StatusParams

router = APIRouter()
log = logging.getLogger("monitor.web")


@router.get("/healthz", summary="Liveness: the HTTP server answers", response_class=Response)
async def healthz() -> Response:
    return Response(b"ok\n", 200, NO_STORE, "text/plain; charset=utf-8")


@router.get("/readyz", summary="Readiness: the pipeline runs (503 until it does)", response_class=Response)
async def readyz(services: ServicesDep) -> Response:
    ready = bool(services.ready())
    # A paused camera (MQTT enabled/set OFF) keeps the daemon ready: a 503 would let whoever may pause one take the
    # whole daemon out of its load balancer or restart loop (and a restart keeps the pause). It is said here.
    paused = sorted(services.paused)
    body = (b"ready\n" if ready else b"not ready\n") + (f"paused: {', '.join(paused)}\n".encode() if paused else b"")
    return Response(body, 200 if ready else 503, NO_STORE, "text/plain; charset=utf-8")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), 200, NO_STORE, CONTENT_TYPE_LATEST)


@router.get("/api/fleet", responses=models.error_responses(400, 401, 404, 503),
            summary="The fleet from its PostgreSQL: nodes (heartbeat, cameras held, outbox) and cameras with holder")
def fleet(services: ServicesDep) -> JSONResponse:
    if services.fleet is None:
        raise ApiError(404, "this node is not in a fleet (no fleet section in its config)")
    try:
        doc = fleet_status(services.fleet.database)
    except (psycopg.Error, FleetError) as e:
        log.error("http: /api/fleet: %s", " ".join(str(e).split())[:200])
        raise ApiError(503, "fleet database unavailable", {"Retry-After": "5"}) from None
    return JSONResponse({"node": services.config.node.name, **doc}, 200, NO_STORE)


@router.get("/api/status", response_model=models.Status, responses=models.error_responses(400, 401, 404, 503),
            summary="Cameras, latest predictions, model, uptime, versions")
def status(query: StatusParams, server: ServerDep) -> JSONResponse:
    doc = models.Status.model_validate(api.status_json(server.services, server.versions, query.lang))
    return JSONResponse(doc.model_dump(mode="json"), 200, NO_STORE)
