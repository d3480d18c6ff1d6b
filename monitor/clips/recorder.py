"""ClipRecorder: one thread per camera turning its events into clips (pre-roll + live packets until end + post).

Events of one camera that overlap share one clip: a second rule firing while a clip is recording joins it and
extends it to its own end + post, up to max_length. The event rows follow the clip: "recording" when it starts,
then "complete" (file renamed into place) or "failed" (nothing kept), and the listeners hear of it then.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from monitor.alerts.event import Event
from monitor.alerts.events import EventStore
from monitor.capture.packet_ring import END, PacketRing, PacketTap
from monitor.clips.files import PART, clip_name
from monitor.clips.writer import ClipWriter

if TYPE_CHECKING:
    from monitor.config.types import CameraClipsConfig
    from monitor.core.metrics import Metrics

log = logging.getLogger(__name__)

ClipListener = Callable[[Event], None]
TICK = 0.25                 # longest wait without a look at the stop event and the clip's end
COMMANDS = 64               # event starts/ends waiting for the recorder; more are dropped (counted)


@dataclass
class _Clip:
    name: str                               # relative to the clips folder
    part: Path
    final: Path
    tap: PacketTap
    ring: PacketRing
    events: dict[int, float | None] = field(default_factory=dict)    # event id -> ended_at (None: open)
    writer: ClipWriter | None = None
    started: float = field(default_factory=time.time)
    pending: list = field(default_factory=list)     # the ring's snapshot, written once the writer exists


class DiskGuard:
    """Shared by a daemon's recorders: recording stops below min_free (WARNING once, metric) and resumes above."""

    def __init__(self, root: Path, min_free: int, metrics: Metrics) -> None:
        self.root = root
        self.min_free = min_free
        self._gauge = metrics.clips_disk_full
        self._full = False
        self._lock = threading.Lock()

    def has_room(self) -> bool:
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            free = 0
        self.set_full(free < self.min_free, free)
        return not self._full

    def set_full(self, full: bool, free: int | None = None) -> None:
        with self._lock:
            if full and not self._full:
                log.warning("clips: recording stopped, the disk of %s is full (%s bytes free, clips.min_free_bytes "
                            "%d); classification and events go on", self.root, "?" if free is None else free,
                            self.min_free)
            elif not full and self._full:
                log.warning("clips: disk space is back (%s bytes free); recording resumes", free)
            self._full = full
            self._gauge.set(1 if full else 0)


class ClipRecorder:
    def __init__(self, camera: str, ring: Callable[[], PacketRing | None], settings: Callable[[], CameraClipsConfig],
                 root: Path, store: EventStore, metrics: Metrics, listeners: list[ClipListener], disk: DiskGuard,
                 on_clip_done: Callable[[], None] | None = None) -> None:
        self.camera = camera
        self._ring = ring
        self._settings = settings
        self._root = root
        self._store = store
        self._listeners = listeners
        self._disk = disk
        self._on_done = on_clip_done
        self._m_written = metrics.clips_written.labels(camera=camera)
        self._m_failed = metrics.clips_failed.labels(camera=camera)
        self._commands: queue.Queue[tuple[str, Event]] = queue.Queue(COMMANDS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clip: _Clip | None = None
        self.dropped = 0
        self.heartbeat = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"clips-{self.camera}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 3.0) -> None:
        """End the loop; a clip being recorded is finished (complete, as far as it got) first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def offer(self, kind: str, event: Event) -> None:
        """An event started or ended (a SinkSet listener's thread): never blocks; a full queue drops, counted."""
        if event.id is None or kind not in ("start", "end"):
            return                      # no row: nothing could point at the clip
        try:
            self._commands.put_nowait((kind, event))
        except queue.Full:
            self.dropped += 1
            log.warning("clips %s: recorder queue full, event %s %s dropped", self.camera, event.id, kind)

    # -- thread --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                if self._clip is None:
                    try:
                        self._command(*self._commands.get(timeout=TICK))
                    except queue.Empty:
                        pass
                    continue
                while True:
                    try:
                        self._command(*self._commands.get_nowait())
                    except queue.Empty:
                        break
                self._pump(self._clip)
            except Exception:           # never let the thread die: the clip fails, the next event records
                log.exception("clips %s: unexpected error", self.camera)
                if self._clip is not None:
                    self._finish(self._clip, failed=True, why="unexpected error")
        if self._clip is not None:
            self._finish(self._clip, failed=False, why="stopping")

    def _command(self, kind: str, event: Event) -> None:
        assert event.id is not None
        clip = self._clip
        if kind == "start":
            if clip is not None:
                clip.events[event.id] = None
                self._store.set_clip(event.id, file=clip.name, seconds=None, state="recording")
                return
            self._begin(event)
        elif clip is not None and event.id in clip.events:
            clip.events[event.id] = event.ended_at if event.ended_at is not None else time.time()

    def _begin(self, event: Event) -> None:
        assert event.id is not None
        ring = self._ring()
        if ring is None:
            return                      # this camera does not record (clips off, or backend opencv)
        if not self._disk.has_room():
            self._store.set_clip(event.id, file=None, seconds=None, state="failed")
            self._m_failed.inc()
            self._tell([event.id])
            return
        name = clip_name(self.camera, event.id, event.started_at)
        final = self._root / name
        tap = PacketTap()
        clip = _Clip(name, final.with_name(final.name + PART), final, tap, ring, {event.id: None})
        clip.pending = ring.snapshot_and_tap(tap)
        self._clip = clip
        self._store.set_clip(event.id, file=name, seconds=None, state="recording")

    def _pump(self, clip: _Clip) -> None:
        """Write what the ring held, then the live packets as they come; finish at end + post or max_length."""
        settings = self._settings()
        try:
            if clip.pending:
                items, clip.pending = clip.pending, []
                for item in items:
                    self._write(clip, item)
            item = clip.tap.get(TICK)
            while item is not False:
                if item is END:
                    self._finish(clip, failed=False, why="the stream changed")
                    return
                self._write(clip, item)
                if self._too_long(clip, settings):
                    break
                item = clip.tap.get(0)
        except Exception as e:          # a write error: disk full, unwritable folder, FFmpeg refusing a packet
            full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
            if full:
                self._disk.set_full(True)
            self._finish(clip, failed=True, why=str(e))
            return
        now = time.time()
        ends = clip.events.values()
        if self._too_long(clip, settings):
            self._finish(clip, failed=False, why="max_length")
        elif clip.tap.overflowed:
            self._finish(clip, failed=False, why="the recorder fell behind the camera")
        elif all(t is not None for t in ends) and now >= max(t for t in ends if t is not None) + (settings.post or 0):
            self._finish(clip, failed=False, why="")
        elif now - clip.started > (settings.max_length or 120.0) + (settings.pre or 0) + 30 and clip.writer is None:
            self._finish(clip, failed=True, why="no video from the camera")

    def _too_long(self, clip: _Clip, settings: CameraClipsConfig) -> bool:
        return clip.writer is not None and clip.writer.seconds >= (settings.max_length or 120.0)

    def _write(self, clip: _Clip, item: object) -> None:
        from monitor.capture.packet_ring import StoredPacket
        assert isinstance(item, StoredPacket)
        if clip.writer is None:
            if not (item.video and item.keyframe):
                return
            clip.part.parent.mkdir(parents=True, exist_ok=True)
            clip.writer = ClipWriter(clip.part, item.spec)
        elif item.spec is not clip.writer.spec and item.spec.key != clip.writer.spec.key:
            return                      # cannot happen within one tap (END comes first); never mix parameters
        clip.writer.write(item)

    def _finish(self, clip: _Clip, *, failed: bool, why: str) -> None:
        self._clip = None
        clip.ring.untap(clip.tap)
        writer = clip.writer
        seconds: float | None = None
        if not failed and writer is not None and writer.packets > 0:
            try:
                writer.close()
                os.replace(clip.part, clip.final)
                seconds = round(writer.seconds, 3)
            except Exception as e:
                failed, why = True, str(e)
                if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    self._disk.set_full(True)
        else:
            failed = True
            why = why or "no video from the camera"
        if failed:
            if writer is not None:
                writer.abort()
            for p in (clip.part, clip.final):
                try:
                    p.unlink(missing_ok=True)
                except OSError:
                    pass
            self._m_failed.inc()
            log.warning("clips %s: clip %s failed: %s", self.camera, clip.name, why)
        else:
            self._m_written.inc()
            log.info("clips %s: %s complete (%.1f s%s)", self.camera, clip.name, seconds or 0.0,
                     f", {why}" if why else "")
        for event_id in clip.events:
            self._store.set_clip(event_id, file=None if failed else clip.name, seconds=seconds,
                                 state="failed" if failed else "complete")
        self._tell(list(clip.events))
        if self._on_done is not None:
            self._on_done()

    def _tell(self, event_ids: list[int]) -> None:
        for event_id in event_ids:
            event = self._store.get(event_id)
            if event is None:
                continue
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("clips %s: a clip listener failed", self.camera)
