"""Who holds the GIL in a running daemon, and how long its inference worker waits for it (issue 22).

Serves a 1080p25 H.264 transcode of a video over RTSP (the project's GStreamer test server), runs `monitor run`
with N cameras on it, and after a warm-up samples the daemon with `py-spy record --gil --threads` (samples only
of the thread holding the GIL): the share of the time each group of threads (camera-*, inference-worker, http,
...) holds it. The daemon's own counter monitor_inference_thread_seconds_total{state} gives the worker's time
on a core, runnable and blocked over the same run. `--variants` runs the daemon once per variant, in turns, so a
change of load hits all alike:
  new       the code as it is
  sws       PyAV conversions through reformat() (pyav_capture.I420_IN_PLACE = False, before issue 22)
  pytimeout reads bounded by PyAV's Python interrupt callback (pyav_capture.READ_TIMEOUT_IN_FFMPEG = False)

    .venv/bin/python scripts/gil_profile.py --rtsp-serve ../shared/tools/rtsp_serve.py --weights /tmp/bw/demo.pt \
        ../shared/data/videos/car-detection.mp4 --cameras 16 --fps 5 --variants new,sws --rounds 2

Needs py-spy (`.venv/bin/pip install py-spy`; a measuring tool, not a dependency of the package or its tests),
ffmpeg, and /usr/bin/python3 with GStreamer's bindings for the server.
"""
from __future__ import annotations

import argparse
import collections
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

VARIANTS = {"new": "", "sws": "pyav_capture.I420_IN_PLACE = False",
            "pytimeout": "pyav_capture.READ_TIMEOUT_IN_FFMPEG = False"}
RATE = 100          # py-spy samples per second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_sums(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        m = re.match(r'monitor_inference_thread_seconds_total\{state="(\w+)"\} (\S+)', line)
        if m:
            out[m.group(1)] += float(m.group(2))
        elif line.startswith("monitor_frames_classified_total{"):
            out["classified"] += float(line.rsplit(" ", 1)[1])
    return out


def gil_shares(raw: Path, seconds: float) -> dict[str, float]:
    """Thread group -> share of the time it held the GIL (py-spy --gil records only the holder's samples)."""
    held: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        m = re.match(r"thread \(\d+\): ([^;]+?)(?:;.*)? (\d+)$", line.strip())
        if m:
            held[re.sub(r"-c\d+$", "-*", m.group(1))] += int(m.group(2))
    return {name: n / (RATE * seconds) for name, n in held.most_common()}


def wait_up(port: int, daemon: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the daemon did not answer on port {port}:\n{log.read_text(errors='replace')[-2000:]}")


def run_one(variant: str, url: str, cameras: int, fps: float, warmup: float, seconds: float, spy: str,
            folder: Path, weights: Path) -> dict[str, object]:
    port = free_port()
    config = folder / f"{variant}.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": port}, "logging": {"level": "warning"},
        "model": {"weights": str(weights)},
        "events": {"database": str(folder / f"{variant}.db")},
        "cameras": [{"name": f"c{i:02d}", "source": url, "fps": fps, "open_timeout": 60} for i in range(cameras)]}))
    code = (f"import sys; from monitor.capture import pyav_capture\n{VARIANTS[variant]}\n"
            f"from monitor.cli import main; sys.exit(main(['run', '-c', {str(config)!r}]))")
    log = folder / f"{variant}.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_up(port, daemon, log)
        time.sleep(warmup)
        before = metric_sums(port)
        raw = folder / f"{variant}.raw"
        subprocess.run([spy, "record", "--gil", "--threads", "--nonblocking", "-r", str(RATE), "-d", f"{seconds:g}",
                        "-f", "raw", "-o", str(raw), "-p", str(daemon.pid)], check=True, capture_output=True)
        after = metric_sums(port)
    finally:
        daemon.terminate()
        daemon.wait(20)
    diff = {k: after[k] - before.get(k, 0.0) for k in after}
    return {"variant": variant, "gil": gil_shares(raw, seconds), **diff}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("video", type=Path)
    ap.add_argument("--rtsp-serve", type=Path, required=True)
    ap.add_argument("--weights", type=Path, default=Path("weights/resnet18-int8.pt"),
                    help="runtime artifact (default: what `monitor weights fetch|demo` writes)")
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--variants", default="new,sws")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=25.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    variants = [v.strip() for v in args.variants.split(",")]
    if any(v not in VARIANTS for v in variants):
        raise SystemExit(f"--variants: choose from {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="gil-profile.") as tmp:
        folder = Path(tmp)
        clip = folder / "cam1080.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(args.video), "-an", "-vf", "scale=1920:1080,fps=25",
                        "-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-g", "50", "-keyint_min", "50",
                        "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(clip)], check=True)
        port = free_port()
        minutes = args.rounds * len(variants) * (args.warmup + args.seconds + 15) / 60 + 1
        server = subprocess.Popen(["/usr/bin/python3", str(args.rtsp_serve), "--minutes", f"{minutes:g}", str(port),
                                   str(clip)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert server.stdout is not None
            for line in server.stdout:
                if "ready" in line:
                    break
            url = f"rtsp://127.0.0.1:{port}/{clip.stem}"
            print(f"{args.cameras} cameras at {args.fps:g} fps on {url}, {args.seconds:g} s of py-spy --gil after "
                  f"{args.warmup:g} s; counters over the same window")
            for r in range(args.rounds):
                for variant in variants:
                    row = run_one(variant, url, args.cameras, args.fps, args.warmup, args.seconds, spy, folder,
                                  args.weights.resolve())
                    gil = row["gil"]
                    assert isinstance(gil, dict)
                    print(f"round {r + 1} {variant:>9}: GIL held {sum(gil.values()):.1%} ("
                          + ", ".join(f"{k} {v:.1%}" for k, v in list(gil.items())[:4])
                          + f"); worker on a core {row.get('on_cpu', 0):.1f} s, runnable {row.get('runnable', 0):.1f}"
                          f" s, blocked {row.get('blocked', 0):.1f} s; classified {row.get('classified', 0):.0f}",
                          flush=True)
        finally:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
