"""Routes of custom classes: heads and their retraining, labelling frames and events, the per-camera heatmap.

Parameters travel in the query string (validated by the guard: strict decoding, few fields), so these POSTs
carry no body to bound.
"""
from __future__ import annotations

from typing import Any

import cv2
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

import logging
import math

from monitor.alerts.events import EventStoreError
from monitor.alerts.snapshot_files import clean_snapshot_path
from monitor.inference.heads.labelling import LabelError
from monitor.inference.heads.retrain import RetrainRefused
from monitor.inference.heads.storage import StorageError
from monitor.web.api import ApiError

log = logging.getLogger("monitor.web")
router = APIRouter()
_NO_STORE = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_ERROR = {"description": "{\"error\": message}"}
_ERRORS: dict[int | str, dict[str, Any]] = {code: _ERROR for code in (400, 404, 503)}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {code: _ERROR for code in (400, 404, 500, 503, 507)}
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


def _daemon(request: Request) -> Any:
    return request.app.state.web.app


def _param(request: Request, name: str) -> str:
    from monitor.web.app import _query
    values = _query(request).get(name)
    if not values or not values[0]:
        raise ApiError(400, f"missing query parameter {name!r}")
    return values[0]


def _camera(request: Request, name: str) -> Any:
    camera = _daemon(request).cameras.get(name)
    if camera is None:
        raise ApiError(404, f"no camera named {name!r}")
    return camera


@router.get("/api/heads", responses=_ERRORS, summary="Custom classes: heads, example counts, retraining state")
def heads(request: Request) -> JSONResponse:
    d = _daemon(request)
    return JSONResponse({"heads": d.custom.status_json(list(d.cameras))}, 200, _NO_STORE)


@router.post("/api/heads/{head:camera}/retrain", status_code=202,
             responses={**_ERRORS, 429: _ERROR},
             summary="Retrain a head on its examples in the background; it is swapped in when done (the replaced "
                     "head is kept as .prev). 429 with Retry-After within custom_classes[].retrain_interval")
def retrain(head: str, request: Request) -> JSONResponse:
    try:
        state = _daemon(request).custom.retrain(head)
    except (LabelError, KeyError) as e:
        raise ApiError(404, str(e).strip("'\"")) from None
    except RetrainRefused as e:
        raise refused(e) from None
    return JSONResponse({"head": head, "retrain": state}, 202, _NO_STORE)


@router.post("/api/heads/{head:camera}/restore", responses={**_WRITE_ERRORS, 409: _ERROR},
             summary="Swap the head a retrain (or restore) replaced back in; the current one becomes the .prev")
def restore(head: str, request: Request) -> JSONResponse:
    try:
        state = _daemon(request).custom.restore(head)
    except KeyError as e:
        raise ApiError(404, str(e).strip("'\"")) from None
    except RetrainRefused as e:
        if e.reason == "storage":
            log.error("http: %s", e)
        raise refused(e) from None
    return JSONResponse({"head": head, "retrain": state}, 200, _NO_STORE)


@router.post("/api/cameras/{camera:camera}/label", responses=_WRITE_ERRORS,
             summary="Save the camera's newest frame as an example (?head=&class=)")
def label_frame(camera: str, request: Request) -> JSONResponse:
    cam = _camera(request, camera)
    head, cls = _param(request, "head"), _param(request, "class")
    frame = cam.latest()
    if frame is None:
        raise ApiError(503, f"camera {camera!r} has not delivered a frame yet", {"Retry-After": "2"})
    custom = _daemon(request).custom
    try:
        # the region this frame was classified on (placed at capture; None: the crop does not fit it)
        custom.label_frame(head, cls, camera, frame.image, frame.box if frame.box is not None else cam.cfg.crop)
    except LabelError as e:
        raise ApiError(400, str(e)) from None
    except StorageError as e:
        raise storage_failed(e) from None
    return JSONResponse({"head": head, "class": cls, "examples": custom.counts(head)}, 200, _NO_STORE)


@router.post("/api/events/{event_id:event_id}/label", responses=_WRITE_ERRORS,
             summary="Mark a custom-class event right or wrong (?right=true|false): files its frame as an example")
def label_event(event_id: str, request: Request) -> JSONResponse:
    d = _daemon(request)
    right = _param(request, "right").lower()
    if right not in ("true", "false"):
        raise ApiError(400, f"right must be true or false (got {right[:20]!r})")
    try:
        ev = d.events.get(int(event_id), strict=True)
    except EventStoreError as e:
        raise ApiError(503, f"event history unavailable: {e}", {"Retry-After": "5"}) from None
    if ev is None:
        raise ApiError(404, f"no event {int(event_id)}")
    if ev.custom is None:
        raise ApiError(400, f"event {ev.id} is about ImageNet class {ev.label!r}, not a custom class")
    clean = clean_snapshot_path(ev.snapshot) if ev.snapshot else None
    image = cv2.imread(str(clean)) if clean is not None and clean.is_file() else None
    if image is None:
        raise ApiError(404, f"event {ev.id} has no saved frame to learn from (alerts.snapshots must be set)")
    cam = d.cameras.get(ev.camera)
    crop = cam.cfg.crop if cam is not None else "center"     # only for an event stored without its box
    try:
        d.custom.label_event(ev.label, ev.camera, right == "true", image, box=ev.box, camera_crop=crop)
    except LabelError as e:
        raise ApiError(400, str(e)) from None
    except StorageError as e:
        raise storage_failed(e) from None
    head, _ = ev.custom
    return JSONResponse({"event": ev.id, "right": right == "true", "examples": d.custom.counts(head)},
                        200, _NO_STORE)


@router.post("/api/cameras/{camera:camera}/heatmap", responses=_ERRORS,
             summary="Show (?on=true) or hide (?on=false) the class activation map in the camera's live view")
def heatmap(camera: str, request: Request) -> JSONResponse:
    _camera(request, camera)
    on = _param(request, "on").lower()
    if on not in ("true", "false"):
        raise ApiError(400, f"on must be true or false (got {on[:20]!r})")
    shown = _daemon(request).heatmaps
    if on == "true":
        shown.add(camera)
    else:
        shown.discard(camera)
    return JSONResponse({"camera": camera, "heatmap": on == "true"}, 200, _NO_STORE)


def classify_explained(classifier: Any, image: Any, top_k: int) -> tuple[list[Any], dict[str, Any]]:
    """Predictions and, from the same inference, the top class's activation map: `grid` (7x7, 0..1) lies over
    `box`, the region the network saw as fractions (x, y, w, h) of the image (any display size)."""
    from monitor.inference.classifier import top_k_predictions
    from monitor.inference.heads.cam import activation_map, normalise
    from monitor.inference.preprocess import crop_box
    inf = classifier.infer([image])
    predictions = top_k_predictions(inf.probabilities, classifier.labels, top_k)[0]
    top = predictions[0].index
    cam = activation_map(inf.feature_maps[0], classifier.fc_weight[top])
    h, w = image.shape[:2]
    x, y, bw, bh = crop_box(h, w, "center")
    return predictions, {"label": classifier.labels[top], "index": int(top),
                         "box": [round(x / w, 5), round(y / h, 5), round(bw / w, 5), round(bh / h, 5)],
                         "grid": [[round(float(v), 4) for v in row] for row in normalise(cam)],
                         "map_mean_plus_bias": round(float(cam.mean() + classifier.fc_bias[top]), 5)}
