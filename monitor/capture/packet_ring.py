"""PacketRing: a camera's recent compressed packets (the pre-roll of its clips), fed by the PyAV capture.

Packets, not pixels: a 5 s pre-roll of a 4 Mb/s camera is ~3 MB of packets where decoded pictures would be
~1 GB, and a clip written from packets is a stream copy that costs no decode or encode. The ring keeps the
packets back to the video keyframe at or before `now - pre` (a clip must start on a keyframe to play), bounded
by `max_bytes` too (whole GOPs are dropped first, counted), so it holds about bitrate x (pre + one GOP).

Timestamps are rebased onto one timeline per camera that never goes back: a reconnect (a new RTSP session starts
its clock anywhere), a file looping to its start, or a stream whose dts jumps back starts a new "generation"
whose first video packet lands after the previous one by the wall-clock gap (Home Assistant's stream worker and
Motion's packet array do the same), and audio of that generation is shifted by the same seconds so it stays in
sync. A generation whose codec parameters differ (new resolution, codec) cannot share a file with the old one:
the ring is emptied and recorders are told to end their clip.

The capture thread pushes; recorders read a snapshot of the ring and then follow new packets through a bounded
PacketTap (dropping past its bound is counted and ends that clip early, never blocks the capture).
"""
from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

log = logging.getLogger(__name__)

TAP_PACKETS = 4000          # packets a recorder may lag behind the capture (~2 min of 25 fps video + audio)


@dataclass(frozen=True, eq=False)
class StreamSpec:
    """The codec parameters of one connection, held as streams of an output container that is never written:
    recorders copy them with add_stream_from_template after the input container is long closed."""
    holder: Any                 # av OutputContainer (never started) owning the template streams
    video: Any                  # template stream of the video
    audio: Any | None           # template stream of the audio, None when absent or not storable in MP4
    key: tuple                  # what must be equal for two connections to share a file
    video_tb: Fraction
    audio_tb: Fraction | None

    @staticmethod
    def of(av: Any, video: Any, audio: Any | None) -> StreamSpec | None:
        """The spec of an input's streams; None when MP4 cannot hold the video codec (no clips then)."""
        holder = av.open(io.BytesIO(), "w", format="mp4")
        try:
            v = holder.add_stream_from_template(video)
        except (ValueError, av.error.FFmpegError) as e:
            log.warning("clips: the video codec %s cannot be stored in MP4 (%s); no clips from this source",
                        video.codec_context.name, e)
            return None
        a = None
        if audio is not None:
            try:
                a = holder.add_stream_from_template(audio)
            except (ValueError, av.error.FFmpegError):
                log.info("clips: audio codec %s cannot be stored in MP4; clips are video only",
                         audio.codec_context.name)
        key = (_stream_key(video), _stream_key(audio) if a is not None else None)
        return StreamSpec(holder, v, a, key, Fraction(video.time_base),
                          Fraction(audio.time_base) if a is not None else None)


def _stream_key(stream: Any) -> tuple:
    ctx = stream.codec_context
    extradata = bytes(ctx.extradata or b"")
    if stream.type == "video":
        return ("video", ctx.name, ctx.width, ctx.height, extradata, Fraction(stream.time_base))
    return ("audio", ctx.name, getattr(ctx, "sample_rate", 0), extradata, Fraction(stream.time_base))


@dataclass(frozen=True, eq=False, slots=True)
class StoredPacket:
    packet: Any                 # the demuxed av.Packet, never modified (its buffer is reference-counted, no copy)
    video: bool
    pts: int | None             # rebased, in the stream's time base
    dts: int                    # rebased, strictly increasing per stream
    duration: int
    keyframe: bool
    size: int
    seconds: float              # dts on the camera's timeline in seconds (trimming, clip length)
    spec: StreamSpec


END = None                      # put in a tap when the stream's parameters changed: the clip ends there


class PacketTap:
    """Packets pushed after a recorder's snapshot, in order. Bounded: past TAP_PACKETS the tap stops taking
    packets and says so (`overflowed`), so a clip never has a hole in the middle."""

    def __init__(self, size: int = TAP_PACKETS) -> None:
        self.queue: queue.Queue[StoredPacket | None] = queue.Queue(size)
        self.overflowed = False
        self.ended = False

    def offer(self, item: StoredPacket | None) -> None:
        if self.overflowed or self.ended:
            return
        if item is END:
            self.ended = True
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.overflowed = True

    def get(self, timeout: float) -> StoredPacket | None | bool:
        """The next packet, END, or False when none came within `timeout`."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return False


class PacketRing:
    """One camera's pre-roll. push() runs on the capture thread; snapshot_and_tap()/untap() on recorders'."""

    def __init__(self, camera: str, pre: float, max_bytes: int,
                 on_bytes: Callable[[int], None] | None = None,
                 on_dropped: Callable[[int], None] | None = None) -> None:
        self.camera = camera
        self.pre = float(pre)
        self.max_bytes = int(max_bytes)
        self._on_bytes = on_bytes
        self._on_dropped = on_dropped
        self._lock = threading.Lock()
        self._items: deque[StoredPacket] = deque()
        self._keys: deque[int] = deque()       # absolute indices of the video keyframes in _items
        self._base = 0                          # absolute index of _items[0]
        self._bytes = 0
        self._taps: list[PacketTap] = []
        self.spec: StreamSpec | None = None
        # rebasing state (capture thread, under the lock with everything else)
        self._gen_seconds: Fraction | None = None   # seconds added to this generation's timestamps
        self._off_v = 0
        self._off_a = 0
        self._last_v: int | None = None
        self._last_a: int | None = None
        self._end_seconds = Fraction(0)         # where the timeline's newest video packet ends
        self._last_mono = 0.0
        self._undated: Any = None               # a video packet without timestamps, dated by the next one
        self.dropped_bytes = 0

    # -- capture thread ----------------------------------------------------------------------------------------

    def connect(self, spec: StreamSpec | None) -> None:
        """A new connection (or the source reopened): a new generation; a changed spec empties the ring."""
        with self._lock:
            if spec is None or self.spec is None or spec.key != self.spec.key:
                self._clear_locked()
                for tap in self._taps:
                    tap.offer(END)
                self.spec = spec
            else:
                self.spec = spec            # same parameters: keep the ring, the newer holder serves new clips
            self._new_generation_locked()

    def discontinuity(self) -> None:
        """The source's timestamps start again (a file looped to its start): rebase from the next packet."""
        with self._lock:
            self._new_generation_locked()

    def push(self, packet: Any, video: bool) -> None:
        spec = self.spec
        if spec is None or packet.size == 0:
            return                          # flush packets; or a source whose packets cannot go into MP4
        dts = packet.dts if packet.dts is not None else packet.pts
        if dts is None:
            # An RTSP session's first packet (its keyframe) often has no timestamp yet: keep it until the next
            # video packet, and date it one frame before that one, rather than lose the first GOP.
            if video:
                self._undated = packet
            return
        with self._lock:
            if video and self._undated is not None:
                undated, self._undated = self._undated, None
                step = int(undated.duration or packet.duration or 0)
                if step > 0:
                    self._push_locked(undated, True, dts - step, None, spec)
            total = self._push_locked(packet, video, dts, packet.pts, spec)
        if self._on_bytes is not None and total is not None:
            self._on_bytes(total)

    def _push_locked(self, packet: Any, video: bool, dts: int, pts: int | None, spec: StreamSpec) -> int | None:
        if video:
            if self._gen_seconds is None:
                self._start_generation_locked(dts, spec)
            rebased = dts + self._off_v
            if self._last_v is not None and rebased <= self._last_v:
                self._new_generation_locked()       # the clock went back inside one connection
                self._start_generation_locked(dts, spec)
                rebased = dts + self._off_v
            keyframe = bool(packet.is_keyframe)
            if not self._items and not keyframe:
                return None                 # a ring starts on a keyframe, or nothing decodes
            tb = spec.video_tb
            self._last_v = rebased
            duration = int(packet.duration or 0)
            self._end_seconds = (rebased + duration) * tb
            self._last_mono = time.monotonic()
            off = self._off_v
        else:
            if self._gen_seconds is None or spec.audio_tb is None or not self._items:
                return None                 # audio before this generation's first video packet: no anchor yet
            rebased = dts + self._off_a
            if self._last_a is not None and rebased <= self._last_a:
                return None
            self._last_a = rebased
            tb = spec.audio_tb
            keyframe = False
            duration = int(packet.duration or 0)
            off = self._off_a
        item = StoredPacket(packet, video, (pts + off) if pts is not None else rebased, rebased, duration, keyframe,
                            packet.size, float(rebased * tb), spec)
        if keyframe:
            self._keys.append(self._base + len(self._items))
        self._items.append(item)
        self._bytes += item.size
        for tap in self._taps:
            tap.offer(item)
        if video:
            self._trim_locked(item.seconds)
        return self._bytes

    # -- recorders ---------------------------------------------------------------------------------------------

    def snapshot_and_tap(self, tap: PacketTap) -> list[StoredPacket]:
        """The ring as it is (from a keyframe) and, atomically, every later packet into `tap`."""
        with self._lock:
            self._taps.append(tap)
            return list(self._items)

    def untap(self, tap: PacketTap) -> None:
        with self._lock:
            if tap in self._taps:
                self._taps.remove(tap)

    def retune(self, pre: float, max_bytes: int) -> None:
        """New bounds from a reload (clips.pre, clips.max_preroll_bytes): applied from the next packet pushed."""
        with self._lock:
            self.pre = float(pre)
            self.max_bytes = int(max_bytes)

    def held_bytes(self) -> int:
        return self._bytes

    def held_seconds(self) -> float:
        with self._lock:
            if not self._items:
                return 0.0
            return float(self._end_seconds) - self._items[0].seconds

    def clear(self) -> None:
        with self._lock:
            self._clear_locked()
        if self._on_bytes is not None:
            self._on_bytes(0)

    # -- internals ---------------------------------------------------------------------------------------------

    def _new_generation_locked(self) -> None:
        self._undated = None
        self._gen_seconds = None
        self._last_v = None
        self._last_a = None

    def _start_generation_locked(self, dts: int, spec: StreamSpec) -> None:
        # The new generation's first packet starts where the last ended plus the wall-clock gap, at least one
        # tick later: players see a pause (the last picture held), never time running backwards.
        gap = Fraction(max(0.0, time.monotonic() - self._last_mono)) if self._last_mono else Fraction(0)
        target = self._end_seconds + gap
        tb = spec.video_tb
        off_v = int(round(target / tb)) - dts
        if self._last_v is not None or self._items:
            newest = self._items[-1].dts if self._items and self._items[-1].video else None
            if newest is not None and dts + off_v <= newest:
                off_v = newest + 1 - dts
        self._off_v = off_v
        self._gen_seconds = (dts + off_v) * tb - dts * tb
        self._off_a = int(round(self._gen_seconds / spec.audio_tb)) if spec.audio_tb else 0

    def _trim_locked(self, newest: float) -> None:
        # Keep from the newest keyframe at or before newest - pre: drop whole GOPs before it.
        cut_at = newest - self.pre
        drop_to = None
        while len(self._keys) >= 2 and self._items[self._keys[1] - self._base].seconds <= cut_at:
            self._keys.popleft()
            drop_to = self._keys[0]
        if drop_to is not None:
            self._drop_before_locked(drop_to, counted=False)
        # Bytes: the oldest GOPs go first, counted (a long GOP or a huge bitrate: the pre-roll gets shorter).
        while self._bytes > self.max_bytes and self._items:
            if len(self._keys) >= 2:
                self._keys.popleft()
                self._drop_before_locked(self._keys[0], counted=True)
            else:
                self._drop_before_locked(self._base + len(self._items), counted=True)
                self._keys.clear()

    def _drop_before_locked(self, index: int, counted: bool) -> None:
        freed = 0
        while self._items and self._base < index:
            freed += self._items.popleft().size
            self._base += 1
        self._bytes -= freed
        if counted and freed:
            self.dropped_bytes += freed
            if self._on_dropped is not None:
                self._on_dropped(freed)

    def _clear_locked(self) -> None:
        self._base += len(self._items)
        self._items.clear()
        self._keys.clear()
        self._bytes = 0
