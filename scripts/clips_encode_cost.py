#!/usr/bin/env python3
"""What clips.encode costs a camera read by OpenCV (a webcam), in CPU cores of the whole process: a real Camera
(backend opencv, fps 5) reading a video paced at 30 fps as a webcam delivers it, with clips off (the baseline: grab
every frame, convert the due ones) against clips.encode on (the frames converted at encode_fps, copied, encoded by
libx264 into the packet ring) at encode_fps 10 (the default) and 30 (every frame), and with the veryfast preset
instead of ultrafast at 10 fps. The modes alternate within each round, per video and size; medians over rounds and
ratios against the baseline of the same run. Also the encoded stream's bitrate (ring bytes / seconds held) and the
frames the encoder dropped.

The videos are transcoded at run time into a temporary folder (never committed) at each size and 30 fps: a source
slower than 25 fps is retimed (setpts) so that all 30 frames a second differ (duplicated frames would encode almost
for free and flatter the figure); its motion is then faster than real, a conservative figure.

    .venv/bin/python scripts/clips_encode_cost.py [--video FILE ...] [--sizes 640x480,1280x720] [--seconds 10]
                                                  [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import _setup

MODES = {                   # name -> (clips.encode, encode_fps, preset)
    "off": (False, 0.0, ""),
    "encode 10 fps": (True, 10.0, "ultrafast"),
    "encode 30 fps": (True, 30.0, "ultrafast"),
    "encode 10 fps veryfast": (True, 10.0, "veryfast"),
}
FPS = 30


def source_fps(video: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=r_frame_rate",
                          "-of", "json", str(video)], capture_output=True, text=True, check=True).stdout
    num, _, den = json.loads(out)["streams"][0]["r_frame_rate"].partition("/")
    return float(num) / float(den or 1)


def transcode(video: Path, size: str, folder: Path) -> Path:
    out = folder / f"{video.stem}-{size}-{FPS}.mp4"
    w, h = size.split("x")
    rate = source_fps(video)
    retime = f"setpts=PTS*{rate:.4f}/{FPS}," if rate < 25 else ""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(video), "-an", "-vf",
                    f"{retime}scale={w}:{h},fps={FPS}", "-c:v", "libx264", "-preset", "veryfast", "-g", "60",
                    "-crf", "20", str(out)], check=True, timeout=900)
    return out


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(video: Path, mode: str, seconds: float, folder: Path) -> dict[str, float]:
    """One camera for `seconds` after a warm-up: process CPU cores, frames grabbed and encoded per second, drops,
    bitrate of the encoded stream."""
    from monitor.capture import frame_encoder
    from monitor.capture.camera import Camera
    from monitor.config.loader import parse_config
    from monitor.core.metrics import Metrics

    encode, fps, preset = MODES[mode]
    clips = {"enabled": encode, "encode": encode, "pre": 5.0}
    if encode:
        clips["encode_fps"] = fps
        frame_encoder.OPTIONS["preset"] = preset
    # capture_priority normal: on a machine other work shares, idle threads would be starved and measure less
    config = parse_config({"model": {"weights": str(folder / "none.pt")},
                           "cameras": [{"name": "cam", "source": str(video), "backend": "opencv", "loop": True,
                                        "fps": 5, "capture_priority": "normal", "clips": clips}]}, folder)
    camera = Camera(config.cameras[0], Metrics())
    camera.start()
    try:
        time.sleep(2.0)                         # open, first frames, encoder opened
        f0, c0, t0 = camera.status()["frames"], cpu_seconds(), time.monotonic()
        e0 = camera.encoder.encoded if camera.encoder else 0
        time.sleep(seconds)
        wall = time.monotonic() - t0
        cpu = cpu_seconds() - c0
        frames = camera.status()["frames"] - f0
        encoded = (camera.encoder.encoded - e0) if camera.encoder else 0
        ring = camera.packets
        held = ring.held_seconds() if ring is not None else 0.0
        bitrate = ring.held_bytes() * 8 / held if ring is not None and held > 0 else 0.0
        dropped = camera.encoder.dropped if camera.encoder else 0
    finally:
        camera.stop()
        frame_encoder.OPTIONS["preset"] = "ultrafast"
    return {"cores": cpu / wall, "grabbed_fps": frames / wall, "encoded_fps": encoded / wall,
            "dropped": dropped, "mbps": bitrate / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, action="append",
                        help="repeatable; default: every video in ../shared/data/videos")
    parser.add_argument("--sizes", default="640x480,1280x720")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    _setup.quiet_logging()
    videos = args.video or sorted(_setup.VIDEOS.glob("*.mp4"))
    with tempfile.TemporaryDirectory(prefix="clips-encode-cost.") as tmp:
        folder = Path(tmp)
        for size in args.sizes.split(","):
            for video in videos:
                clip = transcode(video, size, folder)
                results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
                for _ in range(args.rounds):
                    for mode in MODES:
                        results[mode].append(run(clip, mode, args.seconds, folder))
                med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in results.items()}
                base = med["off"]["cores"]
                print(f"{video.stem} at {size}@{FPS} (process CPU, median of {args.rounds} x {args.seconds:g} s):",
                      flush=True)
                for mode, m in med.items():
                    extra = "" if mode == "off" else (
                        f"  +{m['cores'] - base:.3f} cores, x{m['cores'] / base:.2f}; {m['encoded_fps']:.1f} "
                        f"frames/s encoded, {m['dropped']:.0f} dropped, {m['mbps']:.2f} Mb/s")
                    print(f"  {mode:24s} {m['cores']:.3f} cores ({m['grabbed_fps']:.1f} frames/s grabbed){extra}",
                          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
