"""`scripts/soak_load.py`: the daemon as a process (`monitor run`) under the web load of issue 24 for M minutes;
RSS, fds and threads over time and their slope over the second half.

The load: N cameras (default 4 on the packaged sample clip, looped; --rtsp: real RTSP streams from the GStreamer
test server) at 5 fps; 3 MJPEG viewers that reconnect every 20 s; an image upload to /api/classify every 2 s;
a SIGHUP every 60 s after changing a rule's min_score in the config file; /metrics scraped every 5 s. Each load
can be left out (--no-viewers, --no-uploads, --no-reloads) to split a growth between them.

Printed every --every seconds: the daemon's RSS, its upload decoder processes' RSS, open fds, threads, and the
requests done. At the end: first/last/peak, and the slope (MB/h, least squares) over the second half. Exit
status 1 when the second-half slope exceeds --max-slope (default 2 MB/h, the issue's target) or fds/threads end
above their baseline.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import _setup
from testkit.process import DaemonProcess


def proc_figures(pid: int) -> tuple[float, int, int]:
    """(RSS MB, open fds, threads) of a process, from /proc."""
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return rss, fds, threads


def decoder_rss(pid: int) -> float:
    """Summed RSS (MB) of the daemon's child processes (the upload decoders)."""
    total = 0.0
    children: set[str] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):      # each thread lists the children it started
            children.update(Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    except OSError:
        pass
    for child in children:
        try:
            total += proc_figures(int(child))[0]
        except (OSError, ValueError):
            pass
    return total


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mt) * (v - mv) for t, v in points) / den * 3600


def fetch(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class Load:
    """The client side: one thread per kind of load, each counting what it did and what failed."""

    def __init__(self, port: int, cameras: list[str], jpeg: bytes) -> None:
        self.port, self.cameras, self.jpeg = port, cameras, jpeg
        self.stop = threading.Event()
        self.counts = {"uploads": 0, "views": 0, "scrapes": 0, "reloads": 0, "errors": 0}
        self.threads: list[threading.Thread] = []

    def run(self, name: str, target, *args) -> None:
        t = threading.Thread(target=self._guard, args=(target, *args), name=name, daemon=True)
        self.threads.append(t)
        t.start()

    def _guard(self, target, *args) -> None:
        while not self.stop.is_set():
            try:
                target(*args)
            except Exception as e:  # noqa: BLE001 (counted and shown; the load goes on)
                self.counts["errors"] += 1
                print(f"load error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                self.stop.wait(1.0)

    def upload(self, every: float) -> None:
        status = fetch(self.port, "POST", "/api/classify", self.jpeg, {"Content-Type": "image/jpeg"})
        if status != 200:
            raise RuntimeError(f"upload answered {status}")
        self.counts["uploads"] += 1
        self.stop.wait(every)

    def scrape(self, every: float) -> None:
        if fetch(self.port, "GET", "/metrics") != 200:
            raise RuntimeError("/metrics failed")
        self.counts["scrapes"] += 1
        self.stop.wait(every)

    def view(self, camera: str, seconds: float) -> None:
        """One viewer: connect, read the stream for `seconds`, hang up."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(f"GET /stream/{camera}.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            end = time.monotonic() + seconds
            got = 0
            while time.monotonic() < end and not self.stop.is_set():
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("stream ended")
                got += len(chunk)
            if got == 0:
                raise RuntimeError("no stream data")
        self.counts["views"] += 1


def write_config(path: Path, weights: Path, sources: list[str], db: Path, min_score: float) -> None:
    cams = "\n".join(f"  - name: cam{i}\n    source: {src}\n    fps: 5" + ("\n    loop: true" if src == "sample" else "")
                     for i, src in enumerate(sources))
    path.write_text(f"""server:
  host: 127.0.0.1
  port: {{port}}
model:
  weights: {weights}
  threads: 2
cameras:
{cams}
watchlist:
  - name: cars
    classes: [car]
    min_score: {min_score:.3f}
alerts:
  snapshots: null
events:
  database: {db}
logging:
  level: info
""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="measured duration (default 30)")
    parser.add_argument("--warmup", type=float, default=120.0, metavar="S", help="load before measuring (default 120)")
    parser.add_argument("--every", type=float, default=60.0, metavar="S", help="print period (default 60)")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--rtsp", action="store_true", help="cameras on RTSP test streams instead of the sample clip")
    parser.add_argument("--no-viewers", action="store_true")
    parser.add_argument("--no-uploads", action="store_true")
    parser.add_argument("--no-reloads", action="store_true")
    parser.add_argument("--max-slope", type=float, default=2.0, metavar="MB/H")
    parser.add_argument("--weights", metavar="FILE", help="runtime artifact (default: demo weights built here)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()
    return soak(args)


def soak(args: argparse.Namespace) -> int:
    import cv2

    from monitor.core.sample import sample_clip
    from testkit.rtsp import RtspServer, free_port

    cap = cv2.VideoCapture(str(sample_clip()))
    ok, frame = cap.read()
    cap.release()
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    with tempfile.TemporaryDirectory(prefix="monitor-soak-load.") as tmp_name:
        tmp = Path(tmp_name)
        weights = _setup.weights(args.weights, tmp)
        server = None
        if args.rtsp:
            videos = [_setup.VIDEOS / f"{n}.mp4" for n in ("car-detection", "bottle-detection")]
            server = RtspServer(free_port(), videos, minutes=args.minutes + args.warmup / 60 + 2).start()
            sources = [server.url(videos[i % len(videos)].stem) for i in range(args.cameras)]
        else:
            sources = ["sample"] * args.cameras
        port = free_port()
        config = tmp / "config.yaml"

        def configure(min_score: float) -> None:
            write_config(config, weights, sources, tmp / "events.db", min_score)
            config.write_text(config.read_text().replace("{port}", str(port)))

        configure(0.5)
        daemon = DaemonProcess(config)
        try:
            daemon.started(120)
            pid = daemon.proc.pid
            load = Load(port, [f"cam{i}" for i in range(args.cameras)], jpeg)
            load.run("scrape", load.scrape, 5.0)
            if not args.no_uploads:
                load.run("upload", load.upload, 2.0)
            if not args.no_viewers:
                for i in range(3):
                    load.run(f"viewer{i}", load.view, f"cam{i % args.cameras}", 20.0)
            if not args.no_reloads:
                def reload_every() -> None:
                    load.stop.wait(60.0)
                    if load.stop.is_set():
                        return
                    configure(0.5 + 0.01 * (load.counts["reloads"] % 10 + 1))
                    daemon.send(signal.SIGHUP)
                    load.counts["reloads"] += 1
                load.run("reload", reload_every)
            print(f"soak_load: {args.cameras} {'RTSP' if args.rtsp else 'sample'} cameras at 5 fps, pid {pid}; "
                  f"warm-up {args.warmup:g} s, then {args.minutes:g} min", flush=True)
            time.sleep(args.warmup)
            t0 = time.monotonic()
            samples: list[dict] = []
            end = t0 + args.minutes * 60
            while True:
                now = time.monotonic()
                rss, fds, threads = proc_figures(pid)
                row = {"t": round(now - t0, 1), "rss_mb": round(rss, 1), "decoders_mb": round(decoder_rss(pid), 1),
                       "fds": fds, "threads": threads, **load.counts}
                samples.append(row)
                print(f"{row['t']:7.0f} s  RSS {rss:7.1f} MB  decoders {row['decoders_mb']:6.1f} MB  fds {fds:3d}  "
                      f"threads {threads:3d}  uploads {load.counts['uploads']}  views {load.counts['views']}  "
                      f"reloads {load.counts['reloads']}  scrapes {load.counts['scrapes']}  "
                      f"errors {load.counts['errors']}", flush=True)
                if now >= end:
                    break
                time.sleep(min(args.every, max(0.0, end - time.monotonic())))
            load.stop.set()
            for t in load.threads:
                t.join(35)
            time.sleep(3)                               # viewers' hang-ups reach the daemon
            rss, fds, threads = proc_figures(pid)
        finally:
            daemon.stop(30) if daemon.proc.poll() is None else None
            daemon.kill()
            if server is not None:
                server.kill()
    half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2]
    slope = slope_per_hour([(s["t"], s["rss_mb"]) for s in half])
    dslope = slope_per_hour([(s["t"], s["decoders_mb"]) for s in half])
    first = samples[0]
    result = {"rss_first": first["rss_mb"], "rss_last": samples[-1]["rss_mb"],
              "rss_peak": max(s["rss_mb"] for s in samples), "slope_mb_per_h_second_half": round(slope, 2),
              "decoders_slope_mb_per_h_second_half": round(dslope, 2), "fds": [first["fds"], fds],
              "threads": [first["threads"], threads], **load.counts}
    print(f"RSS {result['rss_first']} -> {result['rss_last']} MB (peak {result['rss_peak']}); slope over the "
          f"second half {slope:+.2f} MB/h (decoders {dslope:+.2f} MB/h); fds {first['fds']} -> {fds}; threads "
          f"{first['threads']} -> {threads} (after the load stopped)")
    if args.json:
        print(json.dumps(result))
    failed = slope > args.max_slope or fds > first["fds"] or threads > first["threads"] or load.counts["errors"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
