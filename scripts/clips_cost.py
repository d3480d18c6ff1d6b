#!/usr/bin/env python3
"""What clips add to a camera's capture, in CPU time of the thread itself (so other load on the machine does not
enter the figure): the PyAV capture of a video (demux + decode every frame, as a camera does) without a packet
ring, with the ring (pre-roll only, the always-on cost), and with the ring plus a clip recording everything
(ring + stream copy into fragmented MP4). Rounds alternate; medians and ratios against the no-ring runs of the
same rounds. Also the ring's bytes at the given pre-roll against bitrate x (pre + GOP).

    .venv/bin/python scripts/clips_cost.py [--video FILE] [--size 1920x1080] [--rounds 3] [--pre 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import _setup


def transcode(video: Path, size: str, folder: Path) -> Path:
    out = folder / f"{video.stem}-{size}.mp4"
    w, h = size.split("x")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(video), "-an", "-vf",
                    f"scale={w}:{h},fps=25", "-c:v", "libx264", "-preset", "veryfast", "-g", "50", "-b:v", "4M",
                    "-maxrate", "4M", "-bufsize", "8M", str(out)], check=True, timeout=900)
    return out


def run(video: Path, mode: str, pre: float, folder: Path) -> tuple[float, int, int]:
    """(thread CPU seconds, frames, ring bytes at the end) of one pass over the video."""
    from monitor.capture.packet_ring import PacketRing, PacketTap
    from monitor.capture.pyav_capture import PyAVCapture
    from monitor.clips.writer import ClipWriter

    ring = PacketRing("bench", pre=pre, max_bytes=64 << 20) if mode != "off" else None
    cap = PyAVCapture(str(video), 10, 10, ring=ring)
    tap = PacketTap(size=1_000_000) if mode == "record" else None
    writer = None
    frames = 0
    t0 = time.thread_time()
    if ring is not None and tap is not None:
        ring.snapshot_and_tap(tap)
    while cap.grab():
        frames += 1
        if tap is not None:
            while (item := tap.get(0)) is not False and item is not None:
                if writer is None and item.video and item.keyframe:
                    writer = ClipWriter(folder / "clip.mp4.part", item.spec)
                if writer is not None:
                    writer.write(item)
    if writer is not None:
        writer.close()
    cpu = time.thread_time() - t0
    held = ring.held_bytes() if ring is not None else 0
    cap.release()
    return cpu, frames, held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=_setup.VIDEOS / "car-detection.mp4")
    parser.add_argument("--size", default="1920x1080", help="transcode to this size at 25 fps, 4 Mb/s, GOP 2 s "
                        "(none: the video as it is)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pre", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clips-cost.") as tmp:
        folder = Path(tmp)
        video = args.video if args.size == "none" else transcode(args.video, args.size, folder)
        seconds = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                                        "csv=p=0", str(video)], capture_output=True, text=True).stdout)
        bitrate = video.stat().st_size * 8 / seconds
        cpu: dict[str, list[float]] = {"off": [], "ring": [], "record": []}
        frames = held = 0
        for _ in range(args.rounds):
            for mode in cpu:
                c, frames, h = run(video, mode, args.pre, folder)
                cpu[mode].append(c)
                held = max(held, h)
        med = {m: statistics.median(v) for m, v in cpu.items()}
        print(f"{video.name}: {frames} frames, {seconds:.1f} s, {bitrate / 1e6:.2f} Mb/s; {args.rounds} rounds "
              f"(thread CPU time, median)")
        for mode, label in (("off", "capture, no ring"), ("ring", "capture + ring (pre-roll)"),
                            ("record", "capture + ring + clip written")):
            print(f"  {label:32s} {med[mode]:7.2f} s  {med[mode] / frames * 1000:6.2f} ms/frame  "
                  f"x{med[mode] / med['off']:.3f}")
        print(f"  ring at pre {args.pre:g} s: {held / 1e6:.2f} MB held (bitrate x pre = {bitrate * args.pre / 8e6:.2f} "
              f"MB; the ring keeps back to the keyframe before, up to one GOP more)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
