"""Routes of custom classes: heads and their retraining, labelling frames and events, the per-camera heatmap.

Parameters travel in the query string (validated by the guard: strict decoding, few fields), so these POSTs
carry no body to bound.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from monitor.alerts.events import EventStoreError
from monitor.inference.heads.labelling import LabelError
from monitor.inference.heads.service import clean_snapshot_path
from monitor.web.api import ApiError

router = APIRouter()
_NO_STORE = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"description": "{\"error\": message}"} for code in (400, 404, 503)}


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


@router.post("/api/heads/{head:camera}/retrain", status_code=202, responses=_ERRORS,
             summary="Retrain a head on its examples in the background; it is swapped in when done")
def retrain(head: str, request: Request) -> JSONResponse:
    try:
        state = _daemon(request).custom.retrain(head)
    except (LabelError, KeyError) as e:
        raise ApiError(404, str(e).strip("'\"")) from None
    return JSONResponse({"head": head, "retrain": state}, 202, _NO_STORE)


@router.post("/api/cameras/{camera:camera}/label", responses=_ERRORS,
             summary="Save the camera's newest frame as an example (?head=&class=)")
def label_frame(camera: str, request: Request) -> JSONResponse:
    cam = _camera(request, camera)
    head, cls = _param(request, "head"), _param(request, "class")
    frame = cam.latest()
    if frame is None:
        raise ApiError(503, f"camera {camera!r} has not delivered a frame yet", {"Retry-After": "2"})
    custom = _daemon(request).custom
    try:
        custom.label_frame(head, cls, camera, frame.image, cam.cfg.crop)
    except LabelError as e:
        raise ApiError(400, str(e)) from None
    return JSONResponse({"head": head, "class": cls, "examples": custom.examples[head].counts()}, 200, _NO_STORE)


@router.post("/api/events/{event_id:event_id}/label", responses=_ERRORS,
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
    if ":" not in str(ev.get("label", "")):
        raise ApiError(400, f"event {ev['id']} is about ImageNet class {ev['label']!r}, not a custom class")
    clean = clean_snapshot_path(ev["snapshot"]) if ev.get("snapshot") else None
    image = cv2.imread(str(clean)) if clean is not None and Path(clean).is_file() else None
    if image is None:
        raise ApiError(404, f"event {ev['id']} has no saved frame to learn from (alerts.snapshots must be set)")
    cam = d.cameras.get(ev["camera"])
    crop = cam.cfg.crop if cam is not None else "center"
    try:
        d.custom.label_event(ev, right == "true", image, crop)
    except LabelError as e:
        raise ApiError(400, str(e)) from None
    head = str(ev["label"]).partition(":")[0]
    return JSONResponse({"event": ev["id"], "right": right == "true", "examples": d.custom.examples[head].counts()},
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
