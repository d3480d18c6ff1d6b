"""`monitor bench stream`: MJPEG fan-out cost. Process CPU of the daemon with 1 viewer vs N viewers of one camera.

The daemon (camera, inference worker, web server) runs in this process; the viewers are real HTTP clients in a
separate process, so their own CPU is not counted. Each frame should be drawn and encoded once whatever the
number of viewers, so N viewers should cost little more than one (target: at most 1.2x).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from monitor.inference.locate import resolve_weights
from monitor.config.types import CameraConfig, Config, EventsConfig, ModelConfig, ServerConfig, StreamConfig
from monitor.core.redact import redact_url

TARGET_RATIO = 1.2
WARMUP = 2.0               # seconds after the viewers connected before measuring

# The viewers: N threads, each a real HTTP client reading /stream/<camera>.mjpg and checking its framing.
# Prints "ready" once every viewer got a first part, then "done <json>" after `seconds` of measured reading.
_VIEWERS = r'''
import http.client, json, sys, threading, time
port, camera, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
warmup, seconds = float(sys.argv[4]), float(sys.argv[5])
parts = [0] * count
errors = []
first = threading.Barrier(count + 1)
stop = threading.Event()

def view(i):
    first_done = False
    try:
        # HTTP/1.1 like a browser: the stream comes chunked; http.client takes the chunks apart
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/stream/{camera}.mjpg")
        f = conn.getresponse()
        if f.status != 200:
            raise RuntimeError(f"HTTP {f.status}")
        while not stop.is_set():
            if not f.readline().startswith(b"--"):
                raise RuntimeError("bad boundary")
            length = 0
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(f.read(length + 2)) != length + 2:
                raise RuntimeError("stream ended")
            parts[i] += 1
            if not first_done:
                first_done = True
                first.wait(30)
        conn.close()
    except Exception as e:
        errors.append(repr(e))
        if not first_done:
            first.abort()

threads = [threading.Thread(target=view, args=(i,), daemon=True) for i in range(count)]
for t in threads:
    t.start()
try:
    first.wait(30)
except threading.BrokenBarrierError:
    print("failed " + json.dumps(errors[:3]), flush=True)
    sys.exit(1)
time.sleep(warmup)
start = list(parts)
print("ready", flush=True)
time.sleep(seconds)
got = [p - s for p, s in zip(parts, start)]
print("done " + json.dumps({"parts": got, "errors": errors[:3]}), flush=True)
stop.set()
'''


# The web framework's memory: a fresh process imports what the daemon imports without the web layer, then the
# web layer (FastAPI, uvicorn, pydantic models, python-multipart), then serves requests on a daemon-less app.
# The stdlib HTTP server the old hand-built layer stood on is imported last, for reference.
_FRAMEWORK_RSS = r'''
import http.client, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
import monitor.daemon, monitor.config.loader
base = rss()
import monitor.web.server
imported = rss()
from monitor.config.loader import parse_config
from monitor.core.metrics import Metrics
cfg = parse_config({"model": {"weights": "/nonexistent.pt"}, "cameras": [{"name": "c", "source": "0"}],
                    "server": {"port": 0}}, __import__("pathlib").Path("/tmp"))
from monitor.inference.results import ResultBoard
from monitor.web.services import WebServices
# no pipeline: the requests below read the config and the metrics only
services = WebServices(results=ResultBoard(), alerts=None, events=None, classifier=None, custom=None,
                       metrics=Metrics(), heatmaps=set(), ready=lambda: True, current_config=lambda: cfg,
                       current_cameras=dict, current_paused=frozenset, current_started_at=lambda: 0.0)
web = monitor.web.server.WebServer(services, "127.0.0.1", 0)
web.start()
started = rss()
conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
n = int(sys.argv[1])
for i in range(n):
    conn.request("GET", ("/healthz", "/metrics", "/openapi.json", "/nope")[i % 4])
    conn.getresponse().read()
conn.close()
served = rss()
web.stop()
import http.server, socketserver, email.parser
print(json.dumps({"base": base, "import": imported - base, "started": started - imported,
                  "served": served - started, "requests": n, "stdlib_http_server": rss() - served}))
'''


def framework_rss(requests: int = 2000) -> dict[str, float]:
    """MB of RSS the web layer adds: at import, at start, after serving `requests` requests (fresh process)."""
    out = subprocess.run([sys.executable, "-c", _FRAMEWORK_RSS, str(requests)], capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"monitor bench stream: framework RSS run failed: {out.stderr[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _measure(daemon: Any, camera: str, viewers: int, seconds: float) -> dict[str, Any]:
    """Process CPU and stream figures over `seconds` with `viewers` real clients (0 = no viewer)."""
    deadline = time.monotonic() + 5
    while daemon.web.streams.viewers and time.monotonic() < deadline:    # the previous run's viewers left
        time.sleep(0.05)
    if viewers == 0:
        time.sleep(WARMUP)
        u0, s0 = _cpu()
        t0 = time.monotonic()
        frames0 = daemon.cameras[camera].status()["frames"]
        time.sleep(seconds)
        u1, s1 = _cpu()
        t1 = time.monotonic()
        return _row(0, t1 - t0, u1 - u0, s1 - s0, 0, daemon.cameras[camera].status()["frames"] - frames0, [])
    proc = subprocess.Popen([sys.executable, "-c", _VIEWERS, str(daemon.web.port), camera, str(viewers),
                             str(WARMUP), str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"monitor bench stream: viewers failed to start: {line or 'no output'}")
        encoder = daemon.web.streams.encoder(camera)
        u0, s0 = _cpu()
        t0 = time.monotonic()
        enc0 = encoder.encoded_frames
        frames0 = daemon.cameras[camera].status()["frames"]
        line = proc.stdout.readline().strip()
        u1, s1 = _cpu()
        t1 = time.monotonic()
        enc1 = encoder.encoded_frames
        frames1 = daemon.cameras[camera].status()["frames"]
        if not line.startswith("done "):
            raise SystemExit(f"monitor bench stream: viewers failed: {line or 'no output'}")
        report = json.loads(line[5:])
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    if report["errors"]:
        raise SystemExit(f"monitor bench stream: viewer errors: {report['errors']}")
    parts = sorted(report["parts"])
    return _row(viewers, t1 - t0, u1 - u0, s1 - s0, enc1 - enc0, frames1 - frames0,
                [parts[0], parts[len(parts) // 2], parts[-1]])


def _row(viewers: int, seconds: float, user: float, system: float, encoded: int, captured: int,
         parts: list[int]) -> dict[str, Any]:
    cpu = user + system
    return {"viewers": viewers, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 3),
            "user_seconds": round(user, 3), "system_seconds": round(system, 3),
            "cpu_percent": round(100 * cpu / seconds, 1), "encoded": encoded, "frames_captured": captured,
            "parts_per_viewer": parts}


def run_stream_bench(source: str, weights: Path, seconds: float, viewers: int,
                     stream: StreamConfig | None = None) -> dict[str, Any]:
    from monitor.daemon import Daemon

    stream = stream or StreamConfig()
    stream = StreamConfig(fps=stream.fps, width=stream.width, quality=stream.quality,
                          max_viewers=max(stream.max_viewers, viewers))
    is_file = "://" not in source and not source.isdigit() and not source.startswith("/dev/")
    camera = CameraConfig(name="bench", source=source, loop=is_file, fps=5.0)
    with tempfile.TemporaryDirectory(prefix="monitor-bench-stream.") as tmp:
        config = Config(server=ServerConfig(host="127.0.0.1", port=0, stream=stream),
                        model=ModelConfig(weights=weights, threads=2, top_k=3), cameras=(camera,),
                        events=EventsConfig(database=Path(tmp) / "events.db"))
        daemon = Daemon(config)
        daemon.start(web=True)
        try:
            deadline = time.monotonic() + 20
            while daemon.cameras["bench"].latest() is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"monitor bench stream: no frame from {redact_url(source)} in 20 s: "
                                     f"{daemon.cameras['bench'].status()['reason']}")
                time.sleep(0.1)
            idle = _measure(daemon, "bench", 0, seconds)
            one = _measure(daemon, "bench", 1, seconds)
            many = _measure(daemon, "bench", viewers, seconds)
        finally:
            daemon.stop()
    ratio = many["cpu_seconds"] / one["cpu_seconds"] if one["cpu_seconds"] > 0 else float("inf")
    stream_one = one["cpu_seconds"] - idle["cpu_seconds"]
    stream_many = many["cpu_seconds"] - idle["cpu_seconds"]
    return {
        "source": redact_url(source), "stream": {"fps": stream.fps, "width": stream.width, "quality": stream.quality},
        "seconds": seconds, "no_viewer": idle, "one_viewer": one, "many_viewers": many,
        "ratio": round(ratio, 3), "target": TARGET_RATIO, "within_target": ratio <= TARGET_RATIO,
        # CPU added by viewers per viewer beyond the first, as a share of the one-viewer process CPU
        "per_extra_viewer_percent": round(100 * (many["cpu_seconds"] - one["cpu_seconds"])
                                          / max(viewers - 1, 1) / max(one["cpu_seconds"], 1e-9), 2),
        "stream_only_ratio": round(stream_many / stream_one, 2) if stream_one > 0 else None,
    }


def bench_stream(args: argparse.Namespace) -> int:
    if args.viewers < 1:
        raise SystemExit("monitor bench stream: --viewers must be at least 1")
    if args.seconds <= 0:
        raise SystemExit("monitor bench stream: --seconds must be > 0")
    weights = resolve_weights(args.weights, args.config)
    source = args.source if "://" in args.source or args.source.isdigit() else str(Path(args.source).resolve())
    if "://" not in source and not source.isdigit() and not Path(source).exists():
        raise SystemExit(f"monitor bench stream: {source}: no such file")
    stream = None
    if args.config:
        from monitor.config.loader import ConfigError, load_config
        try:
            stream = load_config(args.config).server.stream
        except ConfigError as e:
            raise SystemExit(f"monitor bench stream: {args.config}: invalid config:\n{e}") from None
    r = run_stream_bench(source, weights, args.seconds, args.viewers, stream)
    r["web_rss_mb"] = {k: round(v, 1) if isinstance(v, float) else v for k, v in framework_rss().items()}
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    s = r["stream"]
    print(f"monitor bench stream: {r['source']}, MJPEG {s['fps']:g} fps, width {s['width'] or 'native'}, "
          f"quality {s['quality']}; {r['seconds']:g} s per run; viewers in a separate process")
    print(f"{'viewers':>8} | {'process CPU s':>13} | {'user':>6} | {'sys':>6} | {'CPU %':>6} | {'encoded':>7} | "
          f"{'captured':>8} | {'parts/viewer min/med/max':>24}")
    for row in (r["no_viewer"], r["one_viewer"], r["many_viewers"]):
        ppv = "/".join(map(str, row["parts_per_viewer"])) or "-"
        print(f"{row['viewers']:>8} | {row['cpu_seconds']:>13.3f} | {row['user_seconds']:>6.2f} | "
              f"{row['system_seconds']:>6.2f} | {row['cpu_percent']:>6.1f} | {row['encoded']:>7} | "
              f"{row['frames_captured']:>8} | {ppv:>24}")
    verdict = "within" if r["within_target"] else "OVER"
    print(f"ratio {r['many_viewers']['viewers']} viewers / 1 viewer: {r['ratio']:.2f}x process CPU "
          f"({verdict} the {TARGET_RATIO}x target); +{r['per_extra_viewer_percent']:.2f}% per extra viewer")
    if r["stream_only_ratio"] is not None:
        print(f"streaming's own share (minus the no-viewer run): {r['stream_only_ratio']:.2f}x")
    m = r["web_rss_mb"]
    print(f"web layer RSS (fresh process, {m['base']:.0f} MB before it): import +{m['import']:.1f} MB, "
          f"started +{m['started']:.1f} MB, {m['requests']} requests served +{m['served']:.1f} MB; "
          f"(the stdlib http.server the old layer used: +{m['stdlib_http_server']:.1f} MB)")
    return 0
