"""Camera: one thread per camera owning its capture (cv2.VideoCapture, or PyAVCapture with `backend: pyav`);
newest-frame slot, fps sampling, reconnects."""
from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import cv2
import numpy as np

from monitor.config.types import CameraConfig
from monitor.core.metrics import Metrics
from monitor.core.priority import lower_this_thread
from monitor.capture.buffers import FramePool
from monitor.capture.frame_encoder import FrameEncoder
from monitor.capture.motion import MotionGate
from monitor.capture.pyav_capture import PyAVCapture
from monitor.capture.packet_ring import PacketRing
from monitor.core.redact import redact_url
from monitor.core.region import Box, Region, RegionError

log = logging.getLogger(__name__)

# Process-wide FFmpeg settings that OpenCV reads (getenv) at every open. They are set here, once, when the
# capture module is imported, before any capture thread exists: setenv while another thread runs getenv is
# undefined behaviour in glibc. A value the operator exported is left alone.
FFMPEG_ENV = {
    # Otherwise OpenCV holds one process-wide lock for the whole of open(): a camera hanging in open (up to
    # its open_timeout) would stop every other camera from opening or reconnecting. FFmpeg itself is
    # thread-safe for separate contexts.
    "OPENCV_FFMPEG_IS_THREAD_SAFE": "1",
    # RTSP over UDP loses packets under load (grey smeared frames); TCP is lossless. Other protocols ignore it.
    "OPENCV_FFMPEG_CAPTURE_OPTIONS": "rtsp_transport;tcp",
    # FFmpeg inside OpenCV writes its own lines ("[tcp @ 0x...] Connection to ... failed") straight to stderr
    # from C, past the redacting log formatter: they may quote a URL (credentials, ?pwd=) and they break JSON
    # logs. AV_LOG_QUIET (-8) silences them; why a camera is down is in its status and our log line. An operator
    # debugging a camera may export OPENCV_FFMPEG_LOGLEVEL=24 (printed unredacted, to stdout).
    "OPENCV_FFMPEG_LOGLEVEL": "-8",
}
for _key, _value in FFMPEG_ENV.items():
    os.environ.setdefault(_key, _value)

CONNECTING, UP, DOWN, ERROR = "connecting", "up", "down", "error"
SOFTWARE, HARDWARE = "software", "hardware"
WATCH_HOLD = 2.0            # seconds a latest()/wait_newer()/watch() call keeps every frame retrieved
POOL_ARRAYS = 2             # frame arrays per camera: the newest (= due) frame and the last classified one
END_OF_FILE = "end of file"

BACKOFF_INITIAL = 0.5       # seconds before the first retry; doubles per consecutive failure up to backoff_max
BACKOFF_JITTER = 0.2        # +-20 %: cameras that failed together (switch reboot) do not retry in lockstep
STABLE_AFTER = 10.0         # a connection that delivered frames this long resets the backoff
FPS_WINDOW = 5.0            # seconds of frame timestamps behind status()["fps_in"]
DEFAULT_FILE_FPS = 25.0     # pace of a file whose container does not state a usable frame rate
TICK = 0.25                 # longest sleep without a heartbeat and a look at the stop event
_FALL_BEHIND = 1.0          # a paced file this far behind its clock restarts the clock instead of bursting

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DEVICE = re.compile(r"^/dev/video(\d+)$")


@dataclass(frozen=True)
class Frame:
    image: np.ndarray        # BGR uint8, as read
    seq: int                 # 1, 2, 3 ... per camera (monotonic, never reused across reconnects)
    captured_at: float       # time.time() when read
    captured_mono: float     # time.monotonic() when read (latency uses this)
    # The region (x, y, w, h) of `image` that is classified: the camera's crop placed in this frame when it was
    # captured, so a reload that changes the crop never changes what an earlier frame (its result, its event,
    # a label of it) refers to. None: the crop does not fit (never classified), or a frame made outside a Camera.
    box: Box | None = None


@dataclass(frozen=True)
class Source:
    """Where a camera reads from, classified once from the config string."""
    kind: str                       # "device" | "url" | "file"
    target: Union[int, str]         # device index, device path, URL or file path as given to OpenCV
    shown: str                      # credentials redacted: the only form that reaches logs and status

    @property
    def is_rtsp(self) -> bool:
        return self.kind == "url" and str(self.target).lower().startswith(("rtsp://", "rtsps://"))


def parse_source(source: str | int) -> Source:
    """"0" / 0 / "/dev/video0" / "/dev/v4l/by-id/..." -> device; "scheme://..." -> URL; anything else -> file."""
    text = str(source).strip()
    if text.isdigit():
        return Source("device", int(text), f"/dev/video{int(text)}")
    if text.startswith("/dev/"):
        m = _DEVICE.match(text)
        return Source("device", int(m.group(1)) if m else text, text)
    if _URL.match(text):
        return Source("url", text, redact_url(text))
    return Source("file", text, text)


class _Failure(Exception):
    """A connection attempt or stream ended; the message is the (redacted) reason shown in status()."""

    def __init__(self, reason: str, stable: bool = False) -> None:
        super().__init__(reason)
        self.stable = stable                # the connection had delivered frames for STABLE_AFTER seconds


@dataclass
class _Run:
    """The reading state of one open capture (capture thread only)."""
    is_file: bool
    file_fps: float                 # files: the pace and the timeline of due sampling
    read_limit: float               # seconds one grab may take before the source counts as stale
    last_frame: float               # time.monotonic() of the last frame grabbed (or of the open)
    clock_start: float              # pacing: when frame number `paced` of this open is due
    up_since: float | None = None   # time.monotonic() of the first frame of this open
    paced: int = 0
    since_rewind: int = 0

    def stable(self, now: float) -> bool:
        """The connection had delivered frames for STABLE_AFTER seconds (a failure then resets the backoff)."""
        return self.up_since is not None and now - self.up_since >= STABLE_AFTER


class Camera:
    """One capture thread per camera. Keeps reading so the stream never queues up latency, keeps only the
    newest frame, marks frames due at `cfg.fps` and offers the newest due frame to the worker via take_due().

    pace=True plays files at their native rate (as a camera would deliver them). pace=False is for benchmarks
    and batch runs over files: no sleeping, and the reader waits until the previous due frame was taken before
    it reads on, so no due frame of a file is ever dropped; due sampling then follows the file's own timeline
    (frame index / file fps) instead of the wall clock. Live sources ignore pace=False: they cannot be slowed
    down, and holding frames back would only build latency.

    Every frame is grabbed (decoded) so the stream never queues up, but only frames that are due, or that a
    live view may show, are retrieved (converted to BGR and copied): latest(), wait_newer() and watch() mark
    the camera watched for WATCH_HOLD seconds, and while it is not watched latest() is the newest *due* frame.
    Retrieved frames go into a small pool of reused arrays (FramePool), so a camera holds at most the newest
    frame, the due frame and the last classified one.

    A crop that does not fit the frame puts the camera in state "error" (frames still flow to the live view,
    none is classified) with the reason in status().

    `heartbeat` is refreshed at least every TICK seconds, also while down and waiting to reconnect, except while
    OpenCV itself blocks: up to open_timeout in open, up to min(read_timeout, stale_after) in read. A watchdog
    must allow for that. stop() does not wait for such a call: the daemon thread finishes it, then releases
    its capture and ends. A Camera is started once; make a new one to start again.
    """

    def __init__(self, cfg: CameraConfig, metrics: Metrics, on_due: Callable[[], None] | None = None,
                 pace: bool = True) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.pace = pace
        self.source = parse_source(cfg.source)
        self._on_due = on_due
        self._gate = MotionGate(cfg.motion) if cfg.motion.enabled else None
        self._no_drop = not pace and self.source.kind == "file"

        self._cond = threading.Condition()      # guards every field below that status()/take_due() read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: Frame | None = None
        self._due: Frame | None = None
        self._seq = 0
        self._state = CONNECTING
        self._reason = ""
        self._frames = 0
        self._reconnects = 0
        self._backoff = 0.0
        self._width = 0
        self._height = 0
        self._stamps: deque[float] = deque(maxlen=512)
        self._retrieved = 0
        self._last_at: float | None = None     # time.time() of the newest frame grabbed
        self._decoder = ""                      # "software" | "hardware" once opened
        self._watched_until = 0.0               # time.monotonic() until which every frame is retrieved
        self._region = Region.of(cfg.crop)
        self._box: Box | None = None            # capture-thread only: the crop placed in the current frame size
        self._pool = FramePool(POOL_ARRAYS)     # capture-thread only
        self._hw_logged = False                 # capture-thread only: the software fallback is logged once
        self._logged_reason = ""                # capture-thread only: the last reason logged at warning level
        self._next_due: float | None = None     # capture-thread only
        self._file_frames = 0                   # capture-thread only: frames read from a file over all loops
        # Keyframe sampling (issue 22, backend pyav): the stream's measured keyframe interval, whether only
        # keyframes are decoded now, and the last reason logged for the choice.
        self._gop: float | None = None
        self._keyframes = False
        self._sample_why = ""                   # capture-thread only

        self.heartbeat = time.monotonic()

        self._m_captured = metrics.frames_captured.labels(camera=self.name)
        self._m_dropped = metrics.frames_dropped.labels(camera=self.name)
        self._m_skipped = metrics.frames_skipped_still.labels(camera=self.name)
        self._m_connected = metrics.camera_connected.labels(camera=self.name)
        self._m_reconnects = metrics.camera_reconnects.labels(camera=self.name)
        self._m_last_frame = metrics.camera_last_frame.labels(camera=self.name)
        self._m_connected.set(0)
        # The clip pre-roll; kept across reconnects, read by the camera's clip recorder (monitor/clips). Backend
        # pyav demuxes packets into it; OpenCV gives none, so with clips.encode the frames are encoded into it.
        clips = cfg.clips
        self.packets: PacketRing | None = None
        self.encoder: FrameEncoder | None = None
        pyav = cfg.backend == "pyav" and self.source.kind != "device"
        if clips.enabled and (pyav or clips.encode):
            gauge = metrics.clip_preroll_bytes.labels(camera=self.name)
            dropped = metrics.clip_preroll_dropped.labels(camera=self.name)
            self.packets = PacketRing(self.name, clips.pre or 0.0, clips.max_preroll_bytes or 16 * 1024 * 1024,
                                      on_bytes=gauge.set, on_dropped=dropped.inc)
            if not pyav:
                self.encoder = FrameEncoder(
                    self.name, self.packets, clips.encode_fps or 10.0, cfg.capture_priority,
                    on_encoded=metrics.clip_frames_encoded.labels(camera=self.name).inc,
                    on_dropped=metrics.clip_encode_dropped.labels(camera=self.name).inc)

    # ---------------------------------------------------------------- public API

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"camera {self.name}: already started")
        if self.encoder is not None:
            self.encoder.start()
        # A daemon thread: a capture blocked inside OpenCV's open/read cannot be interrupted from outside, and
        # must not keep the process alive; it releases its capture itself once OpenCV returns.
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def retune_clips(self, cfg: CameraConfig) -> None:
        """A reload changed only clip keys that apply live (monitor/clips/stage.py): the pre-roll ring takes its
        new bounds at its next packet; post and max_length are read by the recorder itself."""
        self.cfg = cfg
        if self.packets is not None:
            self.packets.retune(cfg.clips.pre or 0.0, cfg.clips.max_preroll_bytes or 16 * 1024 * 1024)

    def request_stop(self) -> None:
        """Signal the thread without waiting (the daemon signals every camera first, then joins each)."""
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end and wait up to `timeout` seconds; returns in time even if OpenCV is blocked."""
        self._stop.set()
        with self._cond:
            self._state, self._reason = DOWN, "stopped"
            self._backoff = 0.0
            self._cond.notify_all()
        self._m_connected.set(0)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("camera %s: capture still blocked in open/read; it exits when OpenCV returns "
                            "(open_timeout %g s, read_timeout %g s)", self.name, self.cfg.open_timeout,
                            self.cfg.read_timeout)
        if self.encoder is not None:
            self.encoder.stop()             # a blocked capture thread offers nothing more: the encoder ends now

    def is_alive(self) -> bool:
        """True while the capture thread runs (it may still be finishing a blocked open/read after stop())."""
        return self._thread is not None and self._thread.is_alive()

    def watch(self, seconds: float = WATCH_HOLD) -> None:
        """A live view wants every frame for the next `seconds`: cheap, callable from any thread. latest() and
        wait_newer() call it, so a viewer that keeps asking keeps the camera watched."""
        until = time.monotonic() + seconds
        if until > self._watched_until:
            self._watched_until = until         # one float store: atomic under the GIL, no lock needed

    @property
    def watched(self) -> bool:
        return time.monotonic() < self._watched_until

    def latest(self) -> Frame | None:
        """The newest retrieved frame; while nobody watches, the newest due frame (up to 1/fps old)."""
        self.watch()
        with self._cond:
            return self._latest

    def wait_newer(self, seq: int, timeout: float) -> Frame | None:
        """Block until a frame with .seq > seq exists (return it) or `timeout` passes / the camera stops (None)."""
        self.watch(max(WATCH_HOLD, timeout + 1.0))
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.seq <= seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(remaining)
            return self._latest

    def take_due(self) -> Frame | None:
        """The newest due frame, handed out once; None if no frame became due since the last call."""
        with self._cond:
            frame, self._due = self._due, None
            if frame is not None and self._no_drop:
                self._cond.notify_all()         # the reader waits for this slot to empty
            return frame

    def status(self) -> dict:
        with self._cond:
            return {
                "name": self.name,
                "source": self.source.shown,
                "state": self._state,
                "reason": self._reason,
                "fps_in": round(self._fps_in_locked(), 2),
                "frames": self._frames,
                "reconnects": self._reconnects,
                "last_frame_at": self._last_at,
                "width": self._width,
                "height": self._height,
                "backoff": round(self._backoff, 3),     # delay before the next reconnect attempt (0 while up)
                "retrieved": self._retrieved,           # frames converted to BGR (due or watched)
                "decoder": self._decoder,               # "software" | "hardware" ("" before the first open)
                "hwaccel": self.cfg.hwaccel,
                "backend": self.cfg.backend,            # "opencv" | "pyav"
                "keyframe_interval": round(self._gop, 3) if self._gop else None,   # seconds, measured (pyav)
                "decoding": "keyframes" if self._keyframes else "all",
            }

    # ---------------------------------------------------------------- capture thread

    def _run(self) -> None:
        lower_this_thread(self.cfg.capture_priority)   # before opening: FFmpeg's decoder threads inherit it
        failures = 0
        attempt = 0
        reason = ""
        while not self._stop.is_set():
            self._beat()
            if attempt:
                self._reconnects_inc()
            attempt += 1
            # While reconnecting, status() keeps the reason of the last failure: the page shows why.
            self._set_state(CONNECTING, reason)
            stable = False
            try:
                cap = self._open()
                try:
                    self._read(cap)
                finally:
                    # Released here, by the thread that owns it: releasing from another thread while read() runs
                    # is undefined behaviour in OpenCV.
                    cap.release()
                continue                        # only reached on stop
            except _Failure as e:
                reason, stable = str(e), e.stable
            except Exception as e:              # never let one camera's thread die; it retries like any failure
                reason = f"unexpected error: {redact_url(repr(e))}"     # logged by _set_state below
            if self._stop.is_set():
                break
            self._m_connected.set(0)
            if reason == END_OF_FILE and not self.cfg.loop:
                self._set_state(DOWN, reason)
                self._idle_until_stop()         # a finished file stays down without reopening or spinning
                break
            failures = 1 if stable else failures + 1
            delay = self._backoff_delay(failures)
            self._set_state(DOWN, reason, backoff=delay)
            log.debug("camera %s: retry in %.1f s", self.name, delay)
            self._sleep(delay)
        # No final gauge reset here: after a reload a late-ending old thread would zero the new camera's
        # gauge (same label); stop() and the failure paths above already set it.

    def _open(self) -> cv2.VideoCapture:
        src = self.source
        open_ms = int(self.cfg.open_timeout * 1000)
        # A read may block at most until the stream counts as stale: a silent camera is then reopened.
        read_ms = int(min(self.cfg.read_timeout, self.cfg.stale_after) * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]
        hw = src.kind != "device" and self.cfg.hwaccel == "auto"
        if src.kind != "device":
            # FFmpeg frame-threads H.264 (OpenCV asks for one thread per core unless told): every frame thread
            # holds pictures of its own, +7 MB per 1080p camera with 2 threads, and adds a frame of latency. One
            # thread per camera (the default) decodes a 1080p25 stream with ~0.06 cores; many cameras on few
            # cores gain nothing from more (README, capacity: decode threads).
            params += [cv2.CAP_PROP_N_THREADS, 1 if self.cfg.decode_threads is None else self.cfg.decode_threads]
            # ANY: OpenCV tries VAAPI, D3D11, MFX ... and decodes in software when none initialises.
            params += [cv2.CAP_PROP_HW_ACCELERATION,
                       cv2.VIDEO_ACCELERATION_ANY if hw else cv2.VIDEO_ACCELERATION_NONE]
        if self.cfg.backend == "pyav" and src.kind != "device":
            return self._open_pyav(read_ms / 1000.0, hw)
        if src.kind == "device":
            path = f"/dev/video{src.target}" if isinstance(src.target, int) else str(src.target)
            if not os.path.exists(path):
                raise _Failure(f"device {path} not found")
            cap = cv2.VideoCapture(src.target, cv2.CAP_V4L2, params)
            what = f"device {src.shown}"
        elif src.kind == "file":
            if not Path(src.target).is_file():
                raise _Failure(f"file not found: {src.shown}")
            cap = cv2.VideoCapture(str(src.target), cv2.CAP_FFMPEG, params)
            what = f"file {src.shown}"
        else:
            # RTSP over TCP: OPENCV_FFMPEG_CAPTURE_OPTIONS, set once at import (FFMPEG_ENV above).
            started = time.monotonic()
            cap = cv2.VideoCapture(str(src.target), cv2.CAP_FFMPEG, params)
            what = src.shown
            if not cap.isOpened() and time.monotonic() - started >= 0.9 * self.cfg.open_timeout:
                cap.release()
                raise _Failure(f"cannot open {what} (no answer within {self.cfg.open_timeout:g} s)")
        if not cap.isOpened():
            cap.release()
            raise _Failure(f"cannot open {what}")
        self._note_decoder(cap, hw)
        return cap

    def _open_pyav(self, read_timeout: float, hw: bool) -> PyAVCapture:
        src = self.source
        if src.kind == "file" and not Path(src.target).is_file():
            raise _Failure(f"file not found: {src.shown}")
        size = tuple(self.cfg.frame_size) if self.cfg.frame_size else None
        cap = PyAVCapture(str(src.target), self.cfg.open_timeout, read_timeout, self.cfg.decode_threads, size,
                          ring=self.packets)
        if not cap.isOpened():
            # FFmpeg's message may quote the URL: show it without credentials
            why = redact_url(cap.error.replace(str(src.target), src.shown))
            why = why.removesuffix(f": '{src.shown}'")    # FFmpeg's message ends with the URL we already name
            raise _Failure(f"cannot open {src.shown if src.kind != 'file' else 'file ' + src.shown}: {why}")
        self._note_decoder(cap, hw)
        return cap

    def _note_decoder(self, cap: cv2.VideoCapture, requested: bool) -> None:
        got = cap.get(cv2.CAP_PROP_HW_ACCELERATION) if requested else 0.0
        # The property reads back the acceleration type in use: NONE (0) or -1/ANY when it did not stick.
        decoder = HARDWARE if got > 0 and int(got) != cv2.VIDEO_ACCELERATION_ANY else SOFTWARE
        with self._cond:
            self._decoder = decoder
        if requested and decoder == SOFTWARE and not self._hw_logged:
            self._hw_logged = True
            log.info("camera %s: hwaccel auto: no hardware decoder available, decoding in software", self.name)
        elif requested and decoder == HARDWARE and not self._hw_logged:
            self._hw_logged = True
            log.info("camera %s: hardware decoding (OpenCV acceleration type %d)", self.name, int(got))

    def _read(self, cap: cv2.VideoCapture) -> None:
        """Read until stop (returns) or failure (raises _Failure)."""
        run = self._new_run(cap)
        while not self._stop.is_set():
            self._beat()
            if self._wait_for_pace(run):
                continue                        # slept: re-check stop and the clock
            if self._no_drop and not self._wait_slot_free():
                return
            ok, now = self._grab(cap, run)
            if self._stop.is_set():
                return
            if ok:
                self._grabbed(cap, run, now)
            else:
                self._rewind_or_fail(cap, run, now)

    def _new_run(self, cap: cv2.VideoCapture) -> _Run:
        is_file = self.source.kind == "file"
        opened = time.monotonic()
        return _Run(is_file=is_file, file_fps=_usable_fps(cap.get(cv2.CAP_PROP_FPS)) if is_file else 0.0,
                    read_limit=min(self.cfg.read_timeout, self.cfg.stale_after), last_frame=opened,
                    clock_start=opened)

    def _wait_for_pace(self, run: _Run) -> bool:
        """A paced file: sleep until its next frame is due (True: slept); a clock fallen far behind restarts."""
        if not (run.is_file and self.pace):
            return False
        behind = time.monotonic() - (run.clock_start + run.paced / run.file_fps)
        if behind > _FALL_BEHIND:
            run.clock_start, run.paced = time.monotonic(), 0
        elif behind < 0:
            self._sleep(-behind)
            return True
        return False

    def _grab(self, cap: cv2.VideoCapture, run: _Run) -> tuple[bool, float]:
        """Grab (decode) the next frame: (ok, when). _Failure when a live source's read timed out."""
        started = time.monotonic()
        ok = cap.grab()
        now = time.monotonic()
        if not run.is_file and now - started >= run.read_limit and not self._stop.is_set():
            # OpenCV's read timeout fired. It then drains the decoder, so this read may still return one of the
            # few frames held there (old ones), but the capture cannot deliver new frames any more.
            raise _Failure(f"no frame for {now - run.last_frame:.0f} s", run.stable(now))
        return ok, now

    def _rewind_or_fail(self, cap: cv2.VideoCapture, run: _Run, now: float) -> None:
        """grab() failed: a looping file starts again (returns); anything else is a _Failure."""
        if not run.is_file:
            raise _Failure("stream ended (read failed)", run.stable(now))
        # Seeking is cheaper than reopening. A file that yields nothing after a rewind ends up in the backoff
        # path (reopen later), never in a busy loop.
        if self.cfg.loop and run.since_rewind > 0 and cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            run.since_rewind = 0
            return
        raise _Failure(END_OF_FILE, run.stable(now))

    def _grabbed(self, cap: cv2.VideoCapture, run: _Run, now: float) -> None:
        """Count a grabbed frame; retrieve it only when it is due, the first of this open, or watched."""
        run.last_frame = now
        # With keyframe sampling one grab reads a whole GOP: a file's pace and timeline count its packets.
        step = max(1, getattr(cap, "consumed", 1))
        run.paced += step
        run.since_rewind += 1
        if run.is_file:
            self._file_frames += step
        if isinstance(cap, PyAVCapture):
            self._choose_decoding(cap, run)
        # Due sampling runs on the wall clock, except for unpaced files, whose own timeline is the clock.
        clock = self._file_frames / run.file_fps if self._no_drop else now
        due = self._is_due(clock)
        first = run.up_since is None
        used = due or first or self.watched
        encode = self.encoder is not None and self.encoder.wants(now)
        if not (used or encode):
            self._count(None, False)            # decoded, never converted: nobody would look at it
            return
        image = self._retrieve(cap)
        if image is None:
            raise _Failure("frame grabbed but cannot be converted (retrieve failed)", run.stable(now))
        if encode:
            self.encoder.offer(image, now)      # copied: the pooled array is free again
            if not used:
                self._count(None, False)        # converted for the clip only: not a newer frame for the page
                return
        if first:
            run.up_since = now
            self._came_up(image)
        elif (image.shape[1], image.shape[0]) != (self._width, self._height):
            self._place_crop(image)             # the stream changed resolution without a reconnect
        self._publish(image, clock, due)

    def _came_up(self, image: np.ndarray) -> None:
        """The first frame of this open: state up (or error when the crop does not fit it)."""
        self._place_crop(image)
        self._m_connected.set(1)
        log.info("camera %s: up (%dx%d, %s, %s decoding)", self.name, image.shape[1], image.shape[0],
                 self.source.shown, self._decoder)

    def _retrieve(self, cap: cv2.VideoCapture) -> np.ndarray | None:
        """Convert the grabbed frame into a pooled array (OpenCV writes in place when the size matches)."""
        buf = self._pool.take()
        ok, image = cap.retrieve(buf) if buf is not None else cap.retrieve()
        if not ok or image is None:
            return None
        if image is not buf:
            self._pool.adopt(image)
        with self._cond:
            self._retrieved += 1
        return image

    def _place_crop(self, image: np.ndarray) -> None:
        """Place the crop in frames of this size, once per size: the box every frame then carries, state "up";
        or state "error" with the reason when it does not fit (the frame size is known only once it arrives)."""
        height, width = image.shape[:2]
        try:
            self._box = self._region.clip_to(width, height)
        except RegionError as e:
            self._box = None
            self._set_state(ERROR, f"{e}: not classified")
        else:
            self._set_state(UP, "")

    def _publish(self, image: np.ndarray, clock: float, due: bool) -> None:
        if due and self._box is None:
            due = False                         # state "error" says why; the live view still gets the frame
        if due and self._gate is not None and not self._gate.should_classify(image, clock):
            due = False
            self._m_skipped.inc()
        self._count(image, due)

    def _count(self, image: np.ndarray | None, due: bool) -> None:
        """Number the grabbed frame; with an image, make it the newest frame (and the due one if due)."""
        wall, mono = time.time(), time.monotonic()
        with self._cond:
            self._seq += 1
            self._frames += 1
            self._last_at = wall
            self._stamps.append(mono)
            dropped = False
            if image is not None:
                frame = Frame(image=image, seq=self._seq, captured_at=wall, captured_mono=mono, box=self._box)
                self._latest = frame
                self._height, self._width = image.shape[:2]
                dropped = due and self._due is not None
                if due:
                    self._due = frame
                self._cond.notify_all()
        self._m_captured.inc()
        self._m_last_frame.set(wall)
        if dropped:
            self._m_dropped.inc()
        if due and self._on_due is not None:
            self._on_due()

    def _choose_decoding(self, cap: PyAVCapture, run: _Run) -> None:
        """Decode only keyframes while that loses no sample and nobody watches (the live view wants every frame).
        The capture switches at the next keyframe."""
        if self.cfg.sample == "all":
            return
        gop = self._gop = cap.keyframe_interval
        if gop is None:
            return
        interval = 1.0 / self.cfg.fps if self.cfg.fps > 0 else 0.0
        if gop > run.read_limit / 2:
            # a grab then blocks for a whole GOP: the stale-stream check would fire
            wanted, why = False, (f"keyframe interval {gop:.2f} s is too long to wait for (read_timeout/stale_after "
                                  f"{run.read_limit:g} s): decoding every frame")
        elif self.cfg.sample == "keyframes":
            wanted, why = True, f"sample: keyframes, keyframe interval {gop:.2f} s: decoding keyframes only"
        elif interval >= gop * 0.95:
            wanted, why = True, (f"keyframe interval {gop:.2f} s <= sampling interval {interval:.2f} s: "
                                 f"decoding keyframes only")
        else:
            wanted, why = False, (f"keyframe interval {gop:.2f} s is longer than the sampling interval "
                                  f"{interval:.2f} s (fps {self.cfg.fps:g}): decoding every frame")
        if why.rsplit(":", 1)[-1] != self._sample_why.rsplit(":", 1)[-1]:
            log.info("camera %s: %s", self.name, why)
            self._sample_why = why
        cap.keyframes_only = wanted and not self.watched
        self._keyframes = cap.skipping

    def _is_due(self, clock: float) -> bool:
        if self.cfg.fps <= 0:
            return True
        # Keyframes arrive a GOP apart with network jitter: one a little early is the sample, not a skip.
        slack = 0.5 * self._gop if self._keyframes and self._gop else 0.0
        if self._next_due is not None and clock < self._next_due - slack:
            return False
        interval = 1.0 / self.cfg.fps
        # Step from the previous due time so the average rate is exact; after a gap (reconnect) restart the
        # schedule instead of declaring a burst of frames due.
        nxt = (self._next_due if self._next_due is not None else clock) + interval
        self._next_due = nxt if nxt > clock else clock + interval
        return True

    def _wait_slot_free(self) -> bool:
        """No-drop mode: wait until the worker took the pending due frame. False when stopping."""
        with self._cond:
            while self._due is not None:
                if self._stop.is_set():
                    return False
                self._cond.wait(TICK)
                self.heartbeat = time.monotonic()
        return not self._stop.is_set()

    # ---------------------------------------------------------------- helpers

    def _backoff_delay(self, failures: int) -> float:
        cap = max(float(self.cfg.backoff_max), 0.0)
        base = min(cap, BACKOFF_INITIAL * 2 ** min(failures - 1, 30))
        return min(cap, base * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER))

    def _set_state(self, state: str, reason: str, backoff: float = 0.0) -> None:
        with self._cond:
            if self._stop.is_set():
                return                          # stop() already reported "stopped"
            self._state, self._reason, self._backoff = state, reason, backoff
        if state == UP:
            self._logged_reason = ""
        elif state == ERROR and reason != self._logged_reason:
            self._logged_reason = reason
            log.error("camera %s: %s", self.name, reason)
        elif state == DOWN and reason != self._logged_reason:
            # Once per distinct reason: a camera that stays unreachable must not flood the log at every retry.
            self._logged_reason = reason
            where = "" if self.source.shown in reason else f" ({self.source.shown})"
            if reason == END_OF_FILE:
                log.info("camera %s: %s%s", self.name, reason, where)
            else:
                log.warning("camera %s: down: %s%s", self.name, reason, where)

    def _reconnects_inc(self) -> None:
        with self._cond:
            self._reconnects += 1
        self._m_reconnects.inc()

    def _fps_in_locked(self) -> float:
        now = time.monotonic()
        stamps = self._stamps
        while stamps and now - stamps[0] > FPS_WINDOW:
            stamps.popleft()
        if len(stamps) < 2:
            return 0.0
        # Measured up to now, not to the last frame, so a stalled stream decays towards 0.
        return (len(stamps) - 1) / max(now - stamps[0], 1e-6)

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early on stop, keeping the heartbeat fresh (the watchdog checks the thread, not the
        camera)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            self._beat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(min(remaining, TICK))

    def _idle_until_stop(self) -> None:
        while not self._stop.wait(TICK):
            self._beat()


def _usable_fps(value: float) -> float:
    # Containers report 0, NaN or absurd values (e.g. 90000 for a timebase) when they do not know.
    return value if 0 < value <= 240 else DEFAULT_FILE_FPS
