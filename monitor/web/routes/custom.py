"""Routes of custom classes: heads and their retraining, labelling frames and events, the per-camera heatmap.

Parameters travel in the query string (monitor.web.params), so these POSTs carry no body to bound.
"""
from __future__ import annotations

import logging
import math

import cv2
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from monitor.alerts.events import EventStoreError
from monitor.alerts.snapshot_files import clean_snapshot_path
from monitor.inference.heads.labelling import LabelError
from monitor.inference.heads.retrain import RetrainRefused
from monitor.inference.heads.storage import StorageError
from monitor.web import models
from monitor.web.deps import CameraDep, ServicesDep
from monitor.web.errors import NO_STORE, ApiError
from monitor.web.params import HeatmapParams, LabelEventParams, LabelFrameParams
from monitor.web.paths import CAMERA, EVENT, HEAD, CameraName, EventId, HeadName

log = logging.getLogger("monitor.web")
router = APIRouter()
_ERRORS = models.error_responses(400, 401, 404, 503)
_WRITE_ERRORS = models.error_responses(400, 401, 404, 500, 503, 507)
# what a refused retrain or restore answers
_REFUSED = {"too_soon": 429, "busy": 409, "rules": 409, "missing": 404, "storage": 500}


def storage_failed(e: StorageError) -> ApiError:
    """The disk refused a write: 507 when more space would fix it (ENOSPC, EDQUOT), else 500 with the reason
    (read-only, permission); logged once, no traceback (the message says all there is)."""
    log.error("http: %s", e)
    return ApiError(507 if e.no_space else 500, str(e))


def refused(e: RetrainRefused) -> ApiError:
    status = 507 if e.no_space else _REFUSED.get(e.reason, 409)
    headers = {"Retry-After": str(max(1, math.ceil(e.retry_after)))} if e.reason == "too_soon" else None
    return ApiError(status, str(e), headers)


@router.get("/api/heads", responses=_ERRORS, summary="Custom classes: heads, example counts, retraining state")
def heads(services: ServicesDep) -> JSONResponse:
    return JSONResponse({"heads": services.custom.status_json(list(services.cameras))}, 200, NO_STORE)


@router.post(f"/api/heads/{HEAD}/retrain", status_code=202,
             responses={**_ERRORS, **models.error_responses(429)},
             summary="Retrain a head on its examples in the background; it is swapped in when done (the replaced "
                     "head is kept as .prev). 429 with Retry-After within custom_classes[].retrain_interval")
def retrain(head: HeadName, services: ServicesDep) -> JSONResponse:
    try:
        state = services.custom.retrain(head)
    except (LabelError, KeyError) as e:
        raise ApiError(404, str(e).strip("'\"")) from None
    except RetrainRefused as e:
        raise refused(e) from None
    return JSONResponse({"head": head, "retrain": state}, 202, NO_STORE)


@router.post(f"/api/heads/{HEAD}/restore", responses={**_WRITE_ERRORS, **models.error_responses(409)},
             summary="Swap the head a retrain (or restore) replaced back in; the current one becomes the .prev")
def restore(head: HeadName, services: ServicesDep) -> JSONResponse:
    try:
        state = services.custom.restore(head)
    except KeyError as e:
        raise ApiError(404, str(e).strip("'\"")) from None
    except RetrainRefused as e:
        if e.reason == "storage":
            log.error("http: %s", e)
        raise refused(e) from None
    return JSONResponse({"head": head, "retrain": state}, 200, NO_STORE)


@router.post(f"/api/cameras/{CAMERA}/label", responses=_WRITE_ERRORS,
             summary="Save the camera's newest frame as an example of a class of a head")
def label_frame(camera: CameraName, cam: CameraDep, query: LabelFrameParams, services: ServicesDep) -> JSONResponse:
    head, cls = query.head, query.class_
    frame = cam.latest()
    if frame is None:
        raise ApiError(503, f"camera {camera!r} has not delivered a frame yet", {"Retry-After": "2"})
    custom = services.custom
    try:
        # the region this frame was classified on (placed at capture; None: the crop does not fit it)
        custom.label_frame(head, cls, camera, frame.image, frame.box if frame.box is not None else cam.cfg.crop)
    except LabelError as e:
        raise ApiError(400, str(e)) from None
    except StorageError as e:
        raise storage_failed(e) from None
    return JSONResponse({"head": head, "class": cls, "examples": custom.counts(head)}, 200, NO_STORE)


@router.post(f"/api/events/{EVENT}/label", responses=_WRITE_ERRORS,
             summary="Mark a custom-class event right or wrong: files its frame as an example")
def label_event(event_id: EventId, query: LabelEventParams, services: ServicesDep) -> JSONResponse:
    right = query.right
    try:
        ev = services.events.get(event_id, strict=True)
    except EventStoreError as e:
        raise ApiError(503, f"event history unavailable: {e}", {"Retry-After": "5"}) from None
    if ev is None:
        raise ApiError(404, f"no event {event_id}")
    if ev.custom is None:
        raise ApiError(400, f"event {ev.id} is about ImageNet class {ev.label!r}, not a custom class")
    clean = clean_snapshot_path(ev.snapshot) if ev.snapshot else None
    image = cv2.imread(str(clean)) if clean is not None and clean.is_file() else None
    if image is None:
        raise ApiError(404, f"event {ev.id} has no saved frame to learn from (alerts.snapshots must be set)")
    cam = services.cameras.get(ev.camera)
    crop = cam.cfg.crop if cam is not None else "center"     # only for an event stored without its box
    try:
        services.custom.label_event(ev.label, ev.camera, right, image, box=ev.box, camera_crop=crop)
    except LabelError as e:
        raise ApiError(400, str(e)) from None
    except StorageError as e:
        raise storage_failed(e) from None
    head, _ = ev.custom
    return JSONResponse({"event": ev.id, "right": right, "examples": services.custom.counts(head)},
                        200, NO_STORE)


@router.post(f"/api/cameras/{CAMERA}/heatmap", responses=_ERRORS,
             summary="Show or hide the class activation map in the camera's live view")
def heatmap(camera: CameraName, _: CameraDep, query: HeatmapParams, services: ServicesDep) -> JSONResponse:
    shown = services.heatmaps
    if query.on:
        shown.add(camera)
    else:
        shown.discard(camera)
    return JSONResponse({"camera": camera, "heatmap": query.on}, 200, NO_STORE)
