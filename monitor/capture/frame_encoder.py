"""FrameEncoder: H.264 packets for the clips of a camera read by OpenCV (webcams, `backend: opencv`), which gives
pictures but no packets (clips.encode).

The packets go into the camera's PacketRing with a StreamSpec of the encoder's own, exactly like the demuxed
packets of a PyAV camera, so the clip recorder and writer (monitor/clips) work unchanged. H.264 in yuv420p, not
the webcam's own MJPEG: browsers do not play MJPEG in MP4. libx264 ultrafast + zerolatency: no B-frames and no
lookahead, so every frame comes out as one packet at once (nothing to flush, no reordering, dts == pts), at the
lowest CPU per frame; a forced keyframe every KEYFRAME_EVERY seconds of wall clock, so a clip starts at most that
much before `now - pre` whatever rate the source really delivers.

Why a thread of its own rather than encoding on the capture thread: the capture thread must keep draining the
source (a V4L2 queue of 4 buffers, an RTSP socket); an encode that stalls behind classification (both run below
it, SCHED_IDLE) would make the driver or the socket drop frames unseen. Here the capture thread only copies the
picture into an AVFrame (~0.1 ms for 640x480) and a bounded queue takes it; when the encoder falls behind, frames
are dropped and counted (monitor_clip_encode_dropped_total), and the capture timing never changes. The thread runs
at the camera's capture_priority (default SCHED_IDLE): classification keeps the CPU first.
"""
from __future__ import annotations

import io
import logging
import queue
import threading
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from monitor.capture.packet_ring import PacketRing, StreamSpec
from monitor.core.priority import lower_this_thread

log = logging.getLogger(__name__)

CODEC = "libx264"
# ultrafast: the cheapest preset (~2-3x less CPU than veryfast; bigger files, which a pre-roll of seconds and
# a clip of a minute afford). zerolatency: no frame delay (see above). crf 25: webcam pictures stay clear.
OPTIONS = {"preset": "ultrafast", "tune": "zerolatency", "crf": "25", "threads": "1", "forced-idr": "1"}
KEYFRAME_EVERY = 1.0        # seconds between forced keyframes: a clip starts up to this much before now - pre
QUEUE = 8                   # frames waiting for the encoder (~0.8 s at 10 fps) before new ones are dropped
TICK = 0.25                 # longest wait without a look at the stop event
TIME_BASE = Fraction(1, 90000)


class _Session:
    """One encoder for one picture size: a change of size (a reconnect at another resolution) opens a new one."""

    def __init__(self, av: Any, width: int, height: int, fps: float) -> None:
        # The stream of an output container that is never written to (its header goes to memory): the MP4
        # muxer's global-header flag makes libx264 put SPS/PPS in extradata, and the stream's codec parameters
        # (with that extradata) are what StreamSpec copies into every clip.
        self.holder = av.open(io.BytesIO(), "w", format="mp4")
        self.stream = self.holder.add_stream(CODEC, rate=max(1, round(fps)))
        ctx = self.stream.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = TIME_BASE
        self.stream.time_base = TIME_BASE
        ctx.gop_size = max(2, round(2 * KEYFRAME_EVERY * fps))     # a backstop: keyframes are forced by time
        ctx.options = dict(OPTIONS)
        self.holder.start_encoding()
        self.size = (width, height)
        # The MP4 muxer may have chosen another time base for the stream: packets are given in the stream's.
        self.stream_tb = Fraction(self.stream.time_base)
        self.scale = TIME_BASE / self.stream_tb
        self.spec = StreamSpec.of(av, self.stream, None)
        self.last_pts = -1
        self.last_key = -1e9

    def close(self) -> None:
        try:
            self.holder.close()
        except Exception:           # an encoder that failed may refuse its trailer; nothing was written anyway
            pass


class FrameEncoder:
    """Frames offered by a camera's capture thread, encoded on a thread of its own into the camera's PacketRing."""

    def __init__(self, camera: str, ring: PacketRing, fps: float, priority: str = "idle",
                 on_encoded: Callable[[], None] | None = None, on_dropped: Callable[[], None] | None = None) -> None:
        import av  # imported here: only cameras that encode load it

        self._av = av
        self.camera = camera
        self.ring = ring
        self.fps = float(fps)
        self.priority = priority
        self._interval = 1.0 / self.fps
        self._on_encoded = on_encoded
        self._on_dropped = on_dropped
        self._queue: queue.Queue[tuple[Any, float]] = queue.Queue(QUEUE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: _Session | None = None       # encoder thread only
        self._next: float | None = None              # capture thread only: when the next frame is wanted
        self._failed = ""                            # encoder thread only: the last error logged
        self.encoded = 0
        self.dropped = 0

    # -- owner ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"clip encoder {self.camera}: already started")
        self._thread = threading.Thread(target=self._run, name=f"encode-{self.camera}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- capture thread ---------------------------------------------------------------------------------------

    def wants(self, now: float) -> bool:
        """A frame grabbed at `now` (time.monotonic()) is to be encoded: at most `fps` a second."""
        # A little slack: a 30 fps source capped at 10 fps keeps every third frame even with timing jitter.
        if self._next is not None and now < self._next - 0.2 * self._interval:
            return False
        nxt = (self._next if self._next is not None else now) + self._interval
        self._next = nxt if nxt > now else now + self._interval     # after a gap: restart, no burst
        return True

    def offer(self, image: np.ndarray, now: float) -> None:
        """Queue a copy of a BGR picture (the caller's array is free again at once); a full queue drops it."""
        height, width = image.shape[:2]
        if width % 2 or height % 2:
            image = image[:height & ~1, :width & ~1]    # 4:2:0 needs even sizes
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        try:
            self._queue.put_nowait((frame, now))
        except queue.Full:
            self.dropped += 1
            if self._on_dropped is not None:
                self._on_dropped()

    # -- encoder thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        lower_this_thread(self.priority)    # before the first encoder opens: nothing of x264 runs above it
        try:
            while not self._stop.is_set():
                try:
                    frame, at = self._queue.get(timeout=TICK)
                except queue.Empty:
                    continue
                self._encode(frame, at)
        finally:
            if self._session is not None:
                self._session.close()
                self._session = None

    def _encode(self, frame: Any, at: float) -> None:
        try:
            session = self._session
            if session is None or session.size != (frame.width, frame.height):
                if session is not None:
                    session.close()
                session = self._session = _Session(self._av, frame.width, frame.height, self.fps)
                self.ring.connect(session.spec)
                log.info("camera %s: clips: encoding %dx%d to H.264 at up to %g fps", self.camera, frame.width,
                         frame.height, self.fps)
            pts = max(int(round(at / TIME_BASE)), session.last_pts + 1)
            session.last_pts = pts
            frame.pts, frame.time_base = pts, TIME_BASE
            if at - session.last_key >= KEYFRAME_EVERY:
                frame.pict_type = self._av.video.frame.PictureType.I
                session.last_key = at
            duration = int(round(self._interval / session.stream_tb))
            for packet in session.stream.encode(frame):
                if session.scale != 1:
                    packet.pts = int(round(packet.pts * session.scale))
                    packet.dts = int(round(packet.dts * session.scale))
                    packet.time_base = session.stream_tb
                if not packet.duration:
                    packet.duration = duration
                self.ring.push(packet, True)
            self.encoded += 1
            if self._on_encoded is not None:
                self._on_encoded()
            self._failed = ""
        except Exception as e:      # FFmpegError, ValueError, MemoryError, ...
            # Never end the thread: the next frame opens a new encoder; one log line per distinct error.
            if str(e) != self._failed:
                self._failed = str(e)
                log.error("camera %s: clips: encoding failed: %s", self.camera, e)
            if self._session is not None:
                self._session.close()
                self._session = None
            self.dropped += 1
            if self._on_dropped is not None:
                self._on_dropped()
