"""POST /api/classify/batch: many images in one request (multipart files, or one zip archive of a folder), one
NDJSON line per file in the request's order as soon as its batch is classified, then a summary line.

The body is bounded like a single upload's (its size by server.batch_max_bytes, its arrival by the upload
deadline, its memory by the upload memory budget) and takes one of the upload slots for the whole batch. Each
file goes through the single upload's checks (monitor.web.upload.checked_decode: header sizing, the pixel
budget, a decode in a decoder process bounded in CPU time, which also makes the network's input there) on a
prefetch of DECODERS loads while the network runs on the previous batch of up to BATCH
(monitor.inference.prefetch). A file's refusal is its own line;
request-wide limits (monitor.web.batch) are answered with their status before the stream starts.

The work runs on one thread-pool thread that hands lines to the response through a bounded queue (a client
that reads slowly holds the work, not memory); when the client hangs up the decodes in progress are killed
and nothing more is loaded.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from typing import Any, AsyncIterator

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from python_multipart.multipart import parse_options_header
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from monitor.inference.prefetch import BATCH, STREAMS, classify_ahead
from monitor.web import api, models
from monitor.web.batch import ZIP_TYPES, BatchError, BatchFile, BatchLine, BatchResult, BatchSummary, Limits, \
    batch_files
from monitor.web.deps import Server, ServerDep
from monitor.web.errors import NO_STORE, ApiError
from monitor.web.upload import DECODERS, BodyKind, ClientGone, body_kind, checked_decode, read_body

log = logging.getLogger("monitor.web")

router = APIRouter()

MEDIA_TYPE = "application/x-ndjson"
LINES_AHEAD = 64          # lines made but not yet sent: a slow reader stops the work here


class NdjsonDocumented(JSONResponse):
    """The route's response class for /openapi.json only: FastAPI documents a JSON-like class's response model
    under its media type (a StreamingResponse would be documented as a string). The route returns the stream."""
    media_type = MEDIA_TYPE


def _error_answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    # errors are JSON (the app's ApiError answer), not lines: documented without the route's media type
    return {code: {"description": "error", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for code in codes}


REQUEST_BODY: dict[str, Any] = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"},
        "description": "the images, each a part with a filename (any field name); or one zip archive"}}}},
    "application/zip": {"schema": {"type": "string", "format": "binary",
                                   "description": "a zip archive of a folder of images; results name their paths"}}}}


@router.post("/api/classify/batch", response_class=NdjsonDocumented,
             responses={200: {"model": BatchLine, "description": (
                 "application/x-ndjson: one line per file, in the request's order (a BatchResult, or a BatchError "
                 "for a file that was not classified), then one BatchSummary")},
                 **_error_answers(400, 401, 408, 411, 413, 415, 503)},
             openapi_extra={"requestBody": REQUEST_BODY},
             summary="Classify many images: multipart files or one zip archive; NDJSON lines, one per file")
async def classify_batch(server: ServerDep, request: Request) -> StreamingResponse:
    web = server
    headers = request.headers
    limits = _limits(web)
    lengths = headers.getlist("content-length")
    if not lengths and "transfer-encoding" not in headers:
        raise ApiError(411, "Content-Length (or Transfer-Encoding: chunked) required")
    length = int(lengths[0]) if lengths else None
    if length is not None and length > limits.max_bytes:
        raise ApiError(413, f"batch of {length} bytes is larger than server.batch_max_bytes ({limits.max_bytes} "
                            f"bytes)")
    kind = _kind(headers.get("content-type"))
    deadline = time.monotonic() + web.upload_timeout
    try:
        body = await read_body(request.receive, length, limits.max_bytes, deadline, web.body_budget)
    except ApiError as e:
        if e.status == 413:
            raise ApiError(413, f"batch larger than server.batch_max_bytes ({limits.max_bytes} bytes)") from None
        raise
    except ClientGone:
        raise ApiError(400, "client hung up") from None
    held = _Held(web, len(body))
    try:
        if web.uploads is None or not await _acquire(web.uploads, max(0.1, deadline - time.monotonic())):
            raise ApiError(503, "too many uploads at once, try again", {"Retry-After": "2"})
        held.slot = True
        files = await run_in_threadpool(batch_files, kind.media_type, kind.multipart, kind.boundary, body, limits)
    except BaseException:
        held.release()
        raise
    del body
    batch = _Batch(web, files, held, asyncio.get_running_loop())
    return StreamingResponse(batch.lines(), 200, NO_STORE, media_type=MEDIA_TYPE,
                             background=BackgroundTask(batch.unstarted))


def _limits(web: Server) -> Limits:
    cfg = web.services.config.server
    return Limits(int(cfg.batch_max_files), int(cfg.batch_max_bytes), int(web.upload_max_bytes))


def _kind(content_type: str | None) -> BodyKind:
    if content_type:
        media = parse_options_header(content_type)[0].decode("latin-1").lower()
        if media in ZIP_TYPES:
            return BodyKind(False, media_type=media)
    return body_kind(content_type)


async def _acquire(semaphore: asyncio.Semaphore, timeout: float) -> bool:
    try:
        await asyncio.wait_for(semaphore.acquire(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


class _Held:
    """What a batch holds until its last line: its body's bytes of the upload memory and one upload slot. Given
    back once, on the event loop (neither is thread-safe)."""

    def __init__(self, web: Server, size: int) -> None:
        self.web = web
        self.size = size
        self.slot = False
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.web.body_budget.give(self.size)
        if self.slot and self.web.uploads is not None:
            self.web.uploads.release()


class _Batch:
    def __init__(self, web: Server, files: list[BatchFile], held: _Held, loop: asyncio.AbstractEventLoop) -> None:
        self.web = web
        self.files = files
        self.held = held
        self.loop = loop
        self.gone = threading.Event()             # the client hung up (or the stream ended): stop
        self.started = False
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.room = threading.Semaphore(LINES_AHEAD)

    async def lines(self) -> AsyncIterator[bytes]:
        self.started = True
        work = asyncio.ensure_future(run_in_threadpool(self._produce))
        try:
            while True:
                line = await self.queue.get()
                if line is None:
                    break
                self.room.release()
                yield line
        finally:
            self.gone.set()
            self.room.release()                   # a producer waiting for room sees `gone`
            if not work.done():                   # it ends on its own (gone): keep a reference until then
                _running.add(work)
                work.add_done_callback(_running.discard)

    def unstarted(self) -> None:
        """The response's background task: a stream that never started holds nothing past this."""
        if not self.started:
            self.held.release()

    # -- on a thread-pool thread -------------------------------------------------------------------------------

    def _produce(self) -> None:
        t0 = time.monotonic()
        services = self.web.services
        # the daemon's artifact compiled for throughput (made on the first batch, kept): the next batch starts
        # while one runs, as in `monitor classify DIR`; the cameras keep the one-stream classifier
        classifier = services.classifier.pipelined(STREAMS)
        counts = [0, 0]
        try:
            load = functools.partial(_load, self.web, self.gone)
            outcomes = classify_ahead(classifier, self.files, load, top_k=services.config.model.top_k,
                                      batch=BATCH, workers=DECODERS)
            try:
                for index, outcome in enumerate(outcomes):
                    if self.gone.is_set():
                        return
                    doc: Any
                    if outcome.predictions is not None:
                        w, h = outcome.info
                        doc = BatchResult(index=index, file=outcome.item.name, width=w, height=h,
                                          predictions=api.predictions_json(outcome.predictions))
                        counts[0] += 1
                    else:
                        if isinstance(outcome.error, ClientGone):
                            return
                        status, message = _refusal(outcome.error, outcome.item.name)
                        doc = BatchError(index=index, file=outcome.item.name, status=status, error=message)
                        counts[1] += 1
                    if not self._put(_line(doc)):
                        return
            finally:
                outcomes.close()                  # cancels the loads ahead, waits for those running
            self._put(_line(BatchSummary(files=len(self.files), classified=counts[0], errors=counts[1],
                                         seconds=round(time.monotonic() - t0, 3),
                                         model=models.Model(**api.model_json(services.classifier)))))
        except Exception as e:
            log.error("http: batch classification failed after %d files", sum(counts), exc_info=e)
        finally:
            self.files = []
            self._send(None)
            self._send_release()

    def _put(self, line: bytes) -> bool:
        while not self.room.acquire(timeout=0.5):
            if self.gone.is_set():
                return False
        return not self.gone.is_set() and self._send(line)

    def _send(self, item: bytes | None) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
            return True
        except RuntimeError:                      # the loop is closed: the server stopped
            self.gone.set()
            return False

    def _send_release(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.held.release)
        except RuntimeError:
            pass


_running: set[asyncio.Future[Any]] = set()


def _load(web: Server, gone: threading.Event, file: BatchFile) -> tuple[np.ndarray, tuple[int, int]]:
    """A file's network input, through the single upload's checks and decoder processes; (width, height)."""
    if gone.is_set():
        raise ClientGone()
    data = file.read()
    preprocess = web.services.classifier.meta.preprocess
    # the network's input is made in the decoder process: 150 KB back through the pipe instead of the picture,
    # and the resize runs there (beside the network) instead of in the daemon
    prepared, size = checked_decode(data, repr(file.name), web.pixels, web.decoders,
                                    time.monotonic() + web.upload_timeout, gone.is_set,
                                    prepare=(int(preprocess.get("crop", 224)), int(preprocess.get("resize", 256))))
    del data
    return prepared, size


def _refusal(error: Exception | None, name: str) -> tuple[int, str]:
    if isinstance(error, ApiError):
        return error.status, error.message
    log.error("http: batch file %r failed", name, exc_info=error)
    return 500, "internal error (see the daemon's log)"


def _line(doc: Any) -> bytes:
    return json.dumps(doc.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
