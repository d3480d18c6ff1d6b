"""ClipWriter: ring packets -> one fragmented MP4, stream copy (no decode, no encode), renamed when complete.

Why fragmented MP4 (movflags frag_keyframe+empty_moov+default_base_moof): a plain MP4 writes its index (moov) at
the end, so a process killed mid-clip leaves a file nothing can play. A fragmented one is playable up to its last
complete fragment (one per keyframe) at every moment. It is still written as `<name>.mp4.part` and renamed to
`<name>.mp4` once finished and fsynced, so a `.mp4` is always whole; a `.part` left by a killed process is salvaged
at the next start (files.salvage: its complete fragments remuxed into a clip, or deleted) and the event row says
which.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from monitor.capture.packet_ring import StoredPacket, StreamSpec

MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
# A fragment is also cut (and flushed to the file) after 1 s, not only at keyframes: with a 5 s GOP a killed
# clip would otherwise lose up to a whole GOP, and a short clip everything.
FRAG_DURATION = "1000000"


class ClipWriter:
    """One clip being written. Not thread-safe: its recorder thread owns it."""

    def __init__(self, path: Path, spec: StreamSpec) -> None:
        import av  # the daemon imports PyAV only when a camera records (backend pyav)

        self.path = path
        self.spec = spec
        self._out: Any = av.open(str(path), "w", format="mp4",
                                 options={"movflags": MOVFLAGS, "frag_duration": FRAG_DURATION, "flush_packets": "1"})
        self._video = self._out.add_stream_from_template(spec.video)
        self._audio = self._out.add_stream_from_template(spec.audio) if spec.audio is not None else None
        self._packet = av.Packet
        self._v0: int | None = None       # the first packet's rebased dts: the clip's time 0
        self._a0 = 0
        self.first_seconds: float | None = None
        self.last_seconds = 0.0           # end of the newest video packet written (timeline seconds)
        self.packets = 0
        self.bytes = 0

    def write(self, item: StoredPacket) -> None:
        """Write one packet (the first must be a video keyframe); raises av.error.FFmpegError / OSError."""
        if self._v0 is None:
            if not (item.video and item.keyframe):
                return
            self._v0 = item.dts
            self.first_seconds = item.seconds
            if self.spec.audio_tb is not None:
                self._a0 = int(round(item.seconds / self.spec.audio_tb))
        if item.video:
            stream, zero, tb = self._video, self._v0, self.spec.video_tb
        elif self._audio is not None:
            stream, zero, tb = self._audio, self._a0, self.spec.audio_tb
            if item.dts < zero:
                return                    # audio from before the clip's first picture
        else:
            return
        # A new packet referencing the ring's buffer (no copy): the muxer rewrites the timestamps it is given,
        # and the ring's own packet must stay as it is for the next clip.
        packet = self._packet(item.packet)
        packet.dts = item.dts - zero
        packet.pts = (item.pts if item.pts is not None else item.dts) - zero
        packet.duration = item.duration
        packet.time_base = tb
        packet.is_keyframe = item.keyframe
        packet.stream = stream
        self._out.mux(packet)
        self.packets += 1
        self.bytes += item.size
        if item.video:
            end = item.seconds + (float(item.duration * tb) if item.duration else 0.0)
            self.last_seconds = max(self.last_seconds, end)

    @property
    def seconds(self) -> float:
        return 0.0 if self.first_seconds is None else max(0.0, self.last_seconds - self.first_seconds)

    def close(self) -> None:
        """Finish the file (last fragment) and fsync it; raises on a write error."""
        out, self._out = self._out, None
        if out is None:
            return
        out.close()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        """Give up: close what can be closed, delete the file."""
        out, self._out = self._out, None
        try:
            if out is not None:
                out.close()
        except Exception:   # a full disk fails the trailer too: the file goes anyway
            pass
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
