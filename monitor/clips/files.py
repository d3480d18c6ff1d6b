"""The clips folder's names, the clip URL, and salvaging a `.part` left by a killed process.

Layout: `<clips folder>/<camera>/<YYYYmmdd-HHMMSS>-<event id>.mp4`; a clip being written is `<same>.mp4.part`.
Event rows store the name relative to the clips folder, so the folder can move.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger(__name__)

PART = ".part"
CLIP_NAME = re.compile(r"\d{8}-\d{6}-\d+\.mp4")
PART_NAME = re.compile(r"\d{8}-\d{6}-\d+\.mp4\.part")
SALVAGE_TMP = ".salvage"


def clip_url(event_id: int) -> str:
    """The URL path the HTTP API serves an event's clip at."""
    return f"/api/events/{int(event_id)}/clip.mp4"


def clip_name(camera: str, event_id: int, started_at: float) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started_at))
    return f"{camera}/{stamp}-{int(event_id)}.mp4"


def resolve(root: Path, name: str) -> Path | None:
    """The file of a stored clip name, None for a name that would leave the folder (a row is never trusted)."""
    path = (root / name).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        return None
    return path


def salvage(part: Path, final: Path) -> float | None:
    """Remux the complete fragments of a `.part` a killed process left into `final` (stream copy): its duration in
    seconds, or None (nothing playable; `.part` and temporaries deleted either way). Demuxing stops at the first
    damaged fragment, so the result plays to its end."""
    import av

    tmp = final.with_name(final.name + SALVAGE_TMP)
    seconds: float | None = None
    try:
        with av.open(str(part)) as src:
            if not src.streams.video:
                raise ValueError("no video stream")
            streams = [s for s in (src.streams.video[0], *src.streams.audio[:1])]
            with av.open(str(tmp), "w", format="mp4",
                         options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as out:
                mapping = {s.index: out.add_stream_from_template(s) for s in streams}
                first = last = None
                video = streams[0]
                for packet in _packets(src, streams):
                    if packet.dts is None:
                        continue
                    if packet.stream_index == video.index:
                        t = float(packet.dts * packet.time_base)
                        first = t if first is None else first
                        last = t + float((packet.duration or 0) * packet.time_base)
                    packet.stream = mapping[packet.stream_index]
                    out.mux(packet)
        if first is not None and last is not None and last > first:
            seconds = last - first
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        log.warning("clips: %s cannot be salvaged (%s); deleted", part.name, e)
        seconds = None
    finally:
        for leftover in (tmp, part):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
    return seconds


def _packets(src, streams):   # type: ignore[no-untyped-def]
    """Packets until the end or the first damaged one: a fragment cut by the kill ends in a packet whose bytes
    were never written (the demuxer hands it over short, flagged corrupt, or lying past the end of the file)."""
    import av

    size = os.path.getsize(src.name)
    try:
        for packet in src.demux(streams):
            if packet.size == 0 and packet.dts is None:
                continue                            # the end-of-stream flush packet
            if packet.is_corrupt or (packet.pos is not None and packet.pos >= 0 and packet.pos + packet.size > size):
                return
            yield packet
    except av.error.FFmpegError:
        return
