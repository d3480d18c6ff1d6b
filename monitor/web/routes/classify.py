"""POST /api/classify: an uploaded image classified (monitor.web.upload bounds and decodes the body)."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from monitor.inference.classifier import Classifier, Prediction, top_k_predictions
from monitor.inference.heads.cam import normalise
from monitor.inference.preprocess import crop_box
from monitor.web import api, models
from monitor.web.deps import Server, ServerDep
from monitor.web.errors import NO_STORE, ApiError, error_response
from monitor.web.params import ClassifyParams
from monitor.web.upload import ClientGone, body_kind, checked_decode, file_field, read_body

router = APIRouter()


@router.post("/api/classify", response_model=models.Classification,
             responses=models.error_responses(400, 401, 404, 408, 411, 413, 415, 422, 503),
             summary="Classify an uploaded image (multipart field 'file', or a raw image/* body)")
async def classify(query: ClassifyParams, server: ServerDep, request: Request) -> JSONResponse:
    return await _classify(server, request, query.explain, query.lang)


async def _classify(web: Server, request: Request, explain: bool, lang: str | None = None) -> JSONResponse:
    headers = request.headers
    lengths = headers.getlist("content-length")
    if not lengths and "transfer-encoding" not in headers:
        raise ApiError(411, "Content-Length (or Transfer-Encoding: chunked) required")
    length = int(lengths[0]) if lengths else None           # h11 has checked it is one non-negative number
    cap = web.upload_max_bytes
    if length is not None and length > cap:
        raise ApiError(413, f"upload of {length} bytes is larger than server.upload_max_bytes ({cap} bytes)")
    kind = body_kind(headers.get("content-type"))
    deadline = time.monotonic() + web.upload_timeout
    try:
        body = await read_body(request.receive, length, cap, deadline, web.body_budget)
    except ClientGone:
        return error_response(400, "client hung up")       # nobody reads it; counted all the same
    try:
        if not await _acquire(web.uploads, max(0.1, deadline - time.monotonic())):
            raise ApiError(503, "too many uploads at once, try again", {"Retry-After": "2"})
        try:
            # The decode stops (its process is killed) when the client hangs up: nobody would read the answer.
            gone: list[bool] = []

            async def hangup() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass

            work = asyncio.ensure_future(run_in_threadpool(_decode_and_classify, web, kind, body, deadline,
                                                           explain, lambda: bool(gone)))
            watch = asyncio.ensure_future(hangup())
            try:
                await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
                if not work.done():
                    gone.append(True)
                size, predictions, explanation = await work
            except ClientGone:
                return error_response(400, "client hung up")       # nobody reads it; counted all the same
            except BaseException:
                gone.append(True)                           # (cancelled: the server stops)
                raise
            finally:
                watch.cancel()
        finally:
            web.uploads.release()
    finally:
        web.body_budget.give(len(body))
        del body
    classifier = web.services.classifier
    language = lang or web.services.config.labels.language
    doc = models.Classification(predictions=api.predictions_json(predictions, language), model=api.model_json(classifier),
                                width=int(size[0]), height=int(size[1]), explanation=explanation)
    return JSONResponse(doc.model_dump(mode="json"), 200, NO_STORE)


async def _acquire(semaphore: asyncio.Semaphore, timeout: float) -> bool:
    try:
        await asyncio.wait_for(semaphore.acquire(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


def _decode_and_classify(web: Server, kind: Any, body: bytes, deadline: float, explain: bool = False,
                         cancelled: Any = None) -> tuple[Any, list[Any], dict[str, Any] | None]:
    if kind.multipart:
        data, name = file_field(body, kind.boundary)
    else:
        data, name = body, f"upload ({kind.media_type})"
    image, size = checked_decode(data, name, web.pixels, web.decoders, deadline, cancelled)
    del data
    services = web.services
    if explain:
        return (size, *classify_explained(services.classifier, image, services.config.model.top_k))
    return size, services.classifier.classify([image], top_k=services.config.model.top_k)[0], None


def classify_explained(classifier: Classifier, image: Any, top_k: int) -> tuple[list[Prediction], dict[str, Any]]:
    """Predictions and, from the same inference, the top class's activation map: `grid` (7x7, 0..1) lies over
    `box`, the region the network saw as fractions (x, y, w, h) of the image (any display size)."""
    inf = classifier.infer([image])
    predictions = top_k_predictions(inf.probabilities, classifier.labels, top_k)[0]
    top = predictions[0].index
    # exact CAM for a classifier linear on the pooled features (ResNets), Grad-CAM through MobileNetV3's hidden layer
    cam = classifier.class_maps(inf.feature_maps[:1], [top])[0]
    h, w = image.shape[:2]
    x, y, bw, bh = crop_box(h, w, "center")
    explanation = {"label": classifier.labels[top], "index": int(top), "method": classifier.explainer.method,
                   "box": [round(x / w, 5), round(y / h, 5), round(bw / w, 5), round(bh / h, 5)],
                   "grid": [[round(float(v), 4) for v in row] for row in normalise(cam)]}
    if classifier.explainer.method == "cam":
        explanation["map_mean_plus_bias"] = round(float(cam.mean() + classifier.fc_bias[top]), 5)
    return predictions, explanation
