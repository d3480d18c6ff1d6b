"""`monitor bench capacity SOURCE... --fps 5`: how many live cameras one box keeps up with.

Serves the footage as real RTSP streams (GStreamer, rtsp_serve.py), then for each camera count runs the daemon
(capture threads, inference worker, alert engine; no HTTP) in a fresh child process against that many streams
and measures over a fixed window: sampled frames classified vs due, frames replaced before classification,
capture-to-result p50/p99, process CPU and RSS. The answer is the most cameras at which every sampled frame was
classified with p99 under the latency bound. A child per step keeps one step's memory out of the next one's
figures; the step with 0 cameras is the baseline RSS (model loaded, nothing captured).

This module must stay light at import (the child imports it): no torch, no bench.common.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple, Sequence

SYSTEM_PYTHON = "/usr/bin/python3"       # Debian puts GStreamer's `gi` bindings into the system Python
P99_BOUND_MS = 100.0
CLASSIFIED_MIN = 0.97                    # of the due frames: the window's edges cut a frame or two per camera
START_TIMEOUT = 120.0                    # seconds for every camera of a step to deliver a first result
LATENCIES_KEPT = 100_000                 # per step: 16 cameras at 5 fps for 20 min


# ---------------------------------------------------------------- the child: one daemon, N cameras


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB (VmRSS, VmHWM)."""
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024.0
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024.0
    return cur, peak


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _threads_label(threads: int | None) -> str:
    return "default" if threads is None else "auto" if threads == 0 else str(threads)


class Variant(NamedTuple):
    """One daemon setting compared at every step. None: the daemon's default."""
    decode_threads: int | None = None
    malloc: str = "tuned"
    capture: str = "pyav"
    capture_priority: str | None = None
    model_threads: int | None = None

    @property
    def label(self) -> str:
        return (f"decode_threads {_threads_label(self.decode_threads)}, malloc {self.malloc}"
                + f", {self.capture}"
                + (f", capture_priority {self.capture_priority}" if self.capture_priority else "")
                + (f", model threads {self.model_threads}" if self.model_threads is not None else ""))


def _scrape_metrics(port: int, stop: Any, every: float, counts: list[int]) -> None:
    """What Prometheus does to a deployed daemon: GET /metrics every `every` seconds (counts[0] ok, counts[1] failed)."""
    import http.client
    while not stop.wait(every):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            counts[0 if resp.status == 200 else 1] += 1
        except OSError:
            counts[1] += 1


def run_step(urls: list[str], fps: float, seconds: float, warmup: float, config_path: str | None,
             weights: str | None, variant: Variant = Variant(), web: bool = True,
             scrape_every: float = 5.0) -> dict[str, Any]:
    """In the child: run the daemon on `urls` and measure one window. web: as deployed, the HTTP server on and
    /metrics scraped every `scrape_every` seconds."""
    import logging
    import threading

    from monitor.core import memory
    if variant.malloc == "arenas":
        memory.MMAP_THRESHOLD = 0           # the daemon's tune_malloc() then only caps the arenas (as before)
    from monitor.capture import pyav_capture
    if "+pytimeout" in variant.capture:     # reads bounded by PyAV's Python interrupt callback (before issue 22)
        pyav_capture.READ_TIMEOUT_IN_FFMPEG = False
    if "+feedall" in variant.capture:       # keyframe sampling hands every packet to the decoder (before)
        pyav_capture.FEED_KEYFRAMES_ONLY = False

    from monitor.config.types import (CameraConfig, Config, EventsConfig, LoggingConfig, ModelConfig, RuleConfig,
                                      ServerConfig)
    from monitor.core.logsetup import setup_logging
    from monitor.daemon import Daemon

    setup_logging("warning", "text")
    logging.getLogger("monitor").setLevel(logging.WARNING)
    if config_path:
        from monitor.config.loader import load_config
        model = load_config(config_path).model
    else:
        model = ModelConfig()
    if weights:
        model = _replace(model, weights=Path(weights))
    if variant.model_threads is not None:
        model = _replace(model, threads=variant.model_threads)
    priority = {} if variant.capture_priority is None else {"capture_priority": variant.capture_priority}
    cams = tuple(CameraConfig(name=f"cam{i:02d}", source=u, fps=fps, open_timeout=60, read_timeout=10,
                              stale_after=10, decode_threads=variant.decode_threads, **priority,
                              **capture_options(variant.capture))
                 for i, u in enumerate(urls))
    with tempfile.TemporaryDirectory(prefix="monitor-capacity.") as tmp:
        # With clips: a rule that hits on every result opens an event on every camera at its first result and
        # keeps it open, so every camera writes its clip (ring + stream copy) through the measured window.
        recording = "+clips" in variant.capture
        watchlist = (RuleConfig(name="always", classes=("dog",), min_score=0, min_frames=1, end_after=3600),) \
            if recording else ()
        config = Config(model=model, cameras=cams, events=EventsConfig(database=Path(tmp) / "events.db"),
                        logging=LoggingConfig(level="warning"), watchlist=watchlist,
                        server=ServerConfig(host="127.0.0.1", port=0))
        started = time.monotonic()
        daemon = Daemon(config)
        daemon.start(web=web)
        scrapes = [0, 0]
        stop_scraping = threading.Event()
        if web and daemon.web is not None:
            threading.Thread(target=_scrape_metrics, args=(daemon.web.port, stop_scraping, scrape_every, scrapes),
                             name="bench-scrape", daemon=True).start()
        try:
            board = daemon.results
            deadline = time.monotonic() + START_TIMEOUT
            while not all(board.get(c.name) is not None for c in cams):
                if time.monotonic() > deadline:
                    waiting = {c.name: daemon.cameras[c.name].status()["reason"] or daemon.cameras[c.name]
                               .status()["state"] for c in cams if board.get(c.name) is None}
                    return {"cameras": len(cams), "error": f"no result within {START_TIMEOUT:g} s from {waiting}"}
                time.sleep(0.1)
            first_result = time.monotonic() - started
            time.sleep(warmup)
            seen: deque[float] = deque(maxlen=LATENCIES_KEPT)
            daemon.worker.latency_observer = seen.append
            before = _counts(daemon)
            cpu0, t0 = _cpu_seconds(), time.monotonic()
            load0 = os.getloadavg()[0]
            time.sleep(seconds)
            cpu1, t1 = _cpu_seconds(), time.monotonic()
            after = _counts(daemon)
            daemon.worker.latency_observer = None
            latencies = list(seen)
            rss, peak = _rss_mb()
            rings = [getattr(daemon.cameras[c.name], "packets", None) for c in cams]
            preroll = [r.held_bytes() for r in rings if r is not None]
            clip_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*.mp4*"))
            statuses = [daemon.cameras[c.name].status() for c in cams]
        finally:
            stop_scraping.set()
            daemon.stop()
    window = t1 - t0
    diff = {k: after[k] - before[k] for k in before}
    due = fps * window * len(cams) if cams else 0.0
    return {
        "cameras": len(cams), "seconds": round(window, 2), "fps": fps, "variant": variant.label,
        "model_threads": model.threads, "capture_priority": cams[0].capture_priority if cams else None,
        "due": round(due, 1), "classified": diff["classified"], "dropped": diff["dropped"],
        "failed": diff["failed"],
        "classified_ratio": round(diff["classified"] / due, 3) if due else None,
        "grabbed_fps_per_camera": round(diff["grabbed"] / window / max(len(cams), 1), 2),
        "retrieved_per_camera_per_s": round(diff["retrieved"] / window / max(len(cams), 1), 2),
        "p50_ms": round(_percentile(latencies, 50) * 1000, 1) if latencies else None,
        "p99_ms": round(_percentile(latencies, 99) * 1000, 1) if latencies else None,
        "cpu_cores": round((cpu1 - cpu0) / window, 3),
        # the worker per batch (issue 22): on a core, runnable waiting for one, blocked (the GIL or a lock)
        "batches": diff["batches"],
        **{f"batch_{k}_ms": round(diff[k] / diff["batches"] * 1000, 2) if diff["batches"] else None
           for k in ("on_cpu", "runnable", "blocked")},
        "worker_blocked_share": round(diff["blocked"] / window, 3),
        "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1),
        "load1": round((load0 + os.getloadavg()[0]) / 2, 2),
        "first_result_s": round(first_result, 2),
        "resolution": sorted({f"{s['width']}x{s['height']}" for s in statuses}),
        "decoders": sorted({s["decoder"] for s in statuses}),
        "torch_loaded": "torch" in sys.modules,
        "threads": len(os.listdir("/proc/self/task")),
        "web": web, "scrapes": scrapes[0], "scrape_failures": scrapes[1],
        "decoding": sorted({s.get("decoding", "all") for s in statuses}),
        "keyframe_interval_s": sorted({s.get("keyframe_interval") for s in statuses} - {None}),
        "preroll_mb_per_camera": round(sum(preroll) / len(preroll) / 1e6, 2) if preroll else None,
        "clip_mb_written": round(clip_bytes / 1e6, 1) if preroll else None,
    }


def capture_options(capture: str) -> dict[str, Any]:
    """--capture values: "opencv", "pyav" (full size) or "pyav:WxH" (frame_size) -> CameraConfig fields;
    "pyav+clips[:WxH]": the same with event clips on (5 s pre-roll), every camera recording (see run_step);
    "pyav+ring": clips on but no event, so only the pre-roll rings are kept (the cost of clips between events);
    "pyav+all" / "pyav+keyframes": camera `sample:` all (every frame decoded) / keyframes (the default is auto:
    keyframes only when 1/fps >= the GOP); "pyav+pytimeout": reads bounded by PyAV's own timeout (its interrupt
    callback takes the GIL on every socket read) instead of FFmpeg's socket timeout; "pyav+feedall": keyframe sampling
    still hands every packet to the decoder (both set in run_step)."""
    backend, _, size = capture.partition(":")
    backend, *extras = backend.split("+")
    if backend not in ("opencv", "pyav") or (size and backend != "pyav") or (extras and backend != "pyav") or any(
            e not in ("clips", "ring", "all", "keyframes", "pytimeout", "feedall") for e in extras) or ({"all", "keyframes"} <= set(extras)):
        raise ValueError(capture)
    options: dict[str, Any] = {"backend": backend}
    if "clips" in extras or "ring" in extras:
        from monitor.config.types import CameraClipsConfig
        options["clips"] = CameraClipsConfig(enabled=True, pre=5.0, post=10.0, max_length=600.0)
    for sample in ("all", "keyframes"):
        if sample in extras:
            options["sample"] = sample
    if size:
        w, h = size.lower().split("x")
        options["frame_size"] = (int(w), int(h))
    return options


def run_decode_step(urls: list[str], fps: float, seconds: float, mode: str,
                    decode_threads: int | None = None) -> dict[str, Any]:
    """In the child, without the daemon: OpenCV captures opened as Camera opens them. mode "grab": grab() every
    frame; "retrieve": grab() every frame and retrieve() `fps` frames per second into one reused array (what the
    camera does); "read": read() every frame (what it did before). The floor under the daemon's figures."""
    retrieve = mode == "retrieve"
    import threading

    import cv2
    import numpy as np

    import monitor.capture.camera  # noqa: F401  (sets the FFmpeg env like the daemon)

    rss0, _ = _rss_mb()
    stop = threading.Event()
    grabbed = [0] * len(urls)
    errors: list[str] = []

    def run_pyav(i: int, url: str) -> None:
        # mode "pyav-all" / "pyav-keyframes": PyAV demux + decode as a `backend: pyav` camera does, every frame
        # or only the keyframes (sample: keyframes). Decoding only: the conversion of the sampled frames is the
        # same work either way.
        import monitor.capture.pyav_capture as pyav_capture
        pyav_capture.SKIP_LOOP_FILTER = mode != "pyav-keyframes-deblock"
        cap = pyav_capture.PyAVCapture(url, 20.0, 10.0, decode_threads)
        cap.keyframes_only = mode.startswith("pyav-keyframes")
        if mode == "pyav-demux":
            # receive + demux alone, what keyframe sampling keeps (clips need every packet): the part of the
            # other two modes that is not decoding
            for _ in cap._container.demux(cap._stream):
                grabbed[i] += 1
                if stop.is_set():
                    break
            cap.release()
            return
        while not stop.is_set():
            if not cap.grab():
                errors.append(f"grab failed on {url}: {cap.error}")
                break
            grabbed[i] += 1
        cap.release()

    def run(i: int, url: str) -> None:
        if mode.startswith("pyav"):
            run_pyav(i, url)
            return
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 20000,
                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000,
                                                     cv2.CAP_PROP_N_THREADS,
                                                     1 if decode_threads is None else decode_threads])
        buf: np.ndarray | None = None
        next_at = time.monotonic()
        while not stop.is_set():
            if not cap.grab():
                errors.append(f"grab failed on {url}")
                break
            grabbed[i] += 1
            if mode == "read":
                cap.retrieve()
            elif retrieve and time.monotonic() >= next_at:
                next_at += 1.0 / fps
                ok, out = cap.retrieve(buf) if buf is not None else cap.retrieve()
                buf = out if ok else buf
        cap.release()

    threads = [threading.Thread(target=run, args=(i, u), daemon=True) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    time.sleep(min(3.0, seconds / 3))               # opened and streaming before the window starts
    cpu0, t0, grabbed0 = _cpu_seconds(), time.monotonic(), sum(grabbed)
    time.sleep(seconds)
    cpu, window, count = _cpu_seconds() - cpu0, time.monotonic() - t0, sum(grabbed) - grabbed0
    rss, _ = _rss_mb()
    stop.set()
    for t in threads:
        t.join(15)
    n = max(len(urls), 1)
    return {"cameras": len(urls), "mode": mode, "rss_mb": round(rss, 1),
            "cpu_cores_per_camera": round(cpu / window / n, 5),
            "decode_threads": decode_threads,
            "per_camera_mb": round((rss - rss0) / n, 1), "grabbed_fps_per_camera": round(count / window / n, 1),
            "errors": errors[:3]}


def _keyframe_ratios(breakdown: list[dict[str, Any]]) -> list[str]:
    """Keyframes only against every frame, per codec and decoder thread count, from the same run's breakdown: the
    captures' whole CPU, and their decode CPU (the demux-only mode's CPU subtracted from both)."""
    lines = []
    for key in dict.fromkeys((r["codec"], r["decode_threads"]) for r in breakdown):
        cpu = {r["mode"]: r["cpu_cores_per_camera"] for r in breakdown
               if (r["codec"], r["decode_threads"]) == key and "error" not in r and not r["errors"]}
        if not {"pyav-demux", "pyav-all", "pyav-keyframes"} <= cpu.keys() or not cpu["pyav-keyframes"]:
            continue
        demux = cpu["pyav-demux"]
        for mode in ("pyav-keyframes", "pyav-keyframes-deblock"):
            if mode in cpu and cpu[mode] > demux:
                lines.append(f"{key[0]}: keyframes only{' (deblocked)' if mode.endswith('deblock') else ''} against "
                             f"every frame: {cpu['pyav-all'] / cpu[mode]:.1f}x less capture CPU, "
                             f"{(cpu['pyav-all'] - demux) / (cpu[mode] - demux):.1f}x less decode CPU "
                             f"(receive + demux, {demux:.4f} cores per camera, subtracted)")
    return lines


def _replace(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace or pydantic's model_copy, whichever the config types are."""
    if hasattr(obj, "model_copy"):
        return obj.model_copy(update=changes)
    from dataclasses import replace
    return replace(obj, **changes)


def _counts(daemon: Any) -> dict[str, Any]:
    """The counters the window is measured with, from one pass over the registry: each get_sample_value() would
    collect the whole registry again (like a /metrics scrape, about 7.5 ms of Python with the GIL held at 64
    cameras), and the 200 of them this needs stalled every camera for a second at both ends of the window,
    which went straight into its p99."""
    wanted = {"monitor_frames_classified_total": "classified", "monitor_frames_dropped_total": "dropped",
              "monitor_frames_failed_total": "failed", "monitor_batch_size_count": "batches"}
    counts: dict[str, Any] = {key: 0 for key in wanted.values()}
    counts.update(on_cpu=0.0, runnable=0.0, blocked=0.0)
    for family in daemon.metrics.registry.collect():
        for sample in family.samples:
            if sample.name in wanted and (sample.name == "monitor_batch_size_count"
                                          or sample.labels.get("camera") in daemon.cameras):
                counts[wanted[sample.name]] += int(sample.value)
            elif sample.name == "monitor_inference_thread_seconds_total" and sample.labels.get("state") in counts:
                counts[sample.labels["state"]] += sample.value
    statuses = [c.status() for c in daemon.cameras.values()]
    return {**counts, "grabbed": sum(s["frames"] for s in statuses),
            "retrieved": sum(s.get("retrieved", s["frames"]) for s in statuses)}


def _child_main() -> int:
    spec = json.loads(sys.argv[2])
    if "decode" in spec:
        result = run_decode_step(spec["urls"], spec["fps"], spec["seconds"], spec["decode"],
                                 spec.get("decode_threads"))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    result = run_step(spec["urls"], spec["fps"], spec["seconds"], spec["warmup"], spec.get("config"),
                      spec.get("weights"), Variant(*spec["variant"]), web=spec.get("web", True))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- the parent: server, transcode, steps


CODECS = ("h264", "hevc")


LOOP_FREE_START_S = 45.0        # a phased step's start-up (64 cameras: about 20 s to every first result), with room


def _loops_for(video: Path, seconds: float) -> int:
    """How many plays of `video` last `seconds` (ffprobe's duration)."""
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                            str(video)], capture_output=True, text=True)
    try:
        return max(1, math.ceil(seconds / float(probe.stdout.strip())))
    except ValueError:
        raise SystemExit(f"monitor bench capacity: ffprobe could not read the duration of {video}: "
                         f"{probe.stderr.strip()[-300:]}") from None


def _transcode(video: Path, spec: str, folder: Path, gop: float = 2.0, codec: str = "h264",
               phase: float = 0.0, loops: int = 1) -> Path:
    """WIDTHxHEIGHT@FPS: H.264 or H.265 as IP cameras send it (no B-frames, a keyframe every `gop` seconds, no
    scene-cut keyframes), in a temp folder. phase > 0: the keyframes fall at phase + k * gop seconds (after the
    first picture's), so cameras served from different phases do not all send their keyframe at once."""
    try:
        size, rate = spec.split("@")
        width, height = (int(v) for v in size.lower().split("x"))
        fps = float(rate)
    except ValueError:
        raise SystemExit(f"monitor bench capacity: --transcode {spec!r}: expected WIDTHxHEIGHT@FPS, e.g. "
                         f"1920x1080@25") from None
    keyint = max(1, round(gop * fps))
    out = folder / (f"{video.stem}-{width}x{height}-{codec}-gop{gop:g}{f'-phase{phase:g}' if phase else ''}"
                    f"{f'-x{loops}' if loops > 1 else ''}.mp4")
    forced = ["-force_key_frames", f"expr:gte(t,n_forced*{gop:g}+{phase:g})"] if phase else []
    if codec == "hevc":
        # -forced-idr: without it x265 makes a forced keyframe a non-IDR picture that the MP4 does not mark as a
        # keyframe, and every phase's keyframes stayed at 0, 1, 2 s (checked with ffprobe)
        encoder = ["-c:v", "libx265", "-preset", "ultrafast", "-tag:v", "hvc1", "-forced-idr", "1",
                   "-x265-params", f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:log-level=error"]
    else:
        encoder = ["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main", "-bf", "0",
                   "-g", str(keyint), "-keyint_min", str(keyint), "-sc_threshold", "0"]
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(video), "-an",
           "-vf", f"scale={width}:{height},fps={fps:g}", *encoder, *forced, "-pix_fmt", "yuv420p", str(out)]
    print(f"transcoding {video.name} to {codec} {width}x{height} at {fps:g} fps, a keyframe every {gop:g} s"
          f"{f' from {phase:g} s' if phase else ''}{f', the video played {loops} times' if loops > 1 else ''} "
          f"(temporary) ...", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"monitor bench capacity: ffmpeg failed on {video}: {done.stderr.strip()[-500:]}")
    return out


class _Server:
    """rtsp_serve.py on 127.0.0.1:port; a temp dir of its own as TMPDIR (its looped copies go there)."""

    def __init__(self, serve: Path, videos: list[Path], minutes: float, folder: Path) -> None:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = folder / "serve.log"
        tmp = folder / "serve-tmp"
        tmp.mkdir()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([SYSTEM_PYTHON, str(serve), "--minutes", f"{minutes:g}", str(self.port),
                                          *map(str, videos)], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(tmp)},
                                         start_new_session=True)
        deadline = time.monotonic() + 120
        while "ready" not in self.log.read_text(errors="replace").split():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"monitor bench capacity: RTSP server did not start: "
                                 f"{self.log.read_text(errors='replace').strip()[-500:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class _Servers:
    """The step's RTSP servers: one, or one per `per_server` cameras (--sessions-per-server). One GStreamer test
    server refused or garbled most of 64 simultaneous 1080p sessions; several processes share them out."""

    def __init__(self, serve: Path, videos: list[Path], minutes: float, folder: Path, cameras: int,
                 per_server: int = 0) -> None:
        count = 1 if per_server <= 0 else max(1, math.ceil(cameras / per_server))
        self.per_server = per_server if per_server > 0 else max(1, cameras)
        self.videos = videos
        self.servers: list[_Server] = []
        try:
            for i in range(count):
                sub = folder / f"server-{i}" if count > 1 else folder
                sub.mkdir(exist_ok=True)
                self.servers.append(_Server(serve, videos, minutes, sub))
        except BaseException:
            self.stop()
            raise

    def urls(self, cameras: int) -> list[str]:
        """Camera i's URL: its server by blocks of per_server, the videos in turn."""
        return [f"rtsp://127.0.0.1:{self.servers[min(i // self.per_server, len(self.servers) - 1)].port}/"
                f"{self.videos[i % len(self.videos)].stem}" for i in range(cameras)]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "monitor.bench.capacity", "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=spec["seconds"] + spec["warmup"] + 180)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"cameras": len(spec["urls"]), "error": f"child exited {proc.returncode}: {proc.stderr.strip()[-800:]}"}


def _passes(row: dict[str, Any]) -> bool:
    return ("error" not in row and row["cameras"] > 0 and row["dropped"] == 0 and row["failed"] == 0
            and (row["classified_ratio"] or 0) >= CLASSIFIED_MIN and row["p99_ms"] is not None
            and row["p99_ms"] < P99_BOUND_MS)


def run_capacity(videos: list[Path], steps: list[int], fps: float, seconds: float, warmup: float,
                 serve: Path, transcode: str | None, config: str | None, weights: str | None,
                 progress: Any = None, breakdown_cameras: int = 0,
                 variants: Sequence[Variant] = (Variant(),), gop: float = 2.0,
                 codecs: Sequence[str] = ("h264",), web: bool = True, per_server: int = 0,
                 phases: int = 1) -> dict[str, Any]:
    """variants (x codecs, with a transcode): each run at every step; interleaved per step so that a change of load
    on the machine hits every one alike."""
    with tempfile.TemporaryDirectory(prefix="monitor-bench-capacity.") as tmp:
        folder = Path(tmp)
        # phases > 1: each video in that many transcodes whose keyframes are spread over the GOP (cameras take
        # them in turn), as independent cameras send them; with one, every camera's keyframe arrives at once.
        # Each phase's transcode also lasts a whole step (the video looped before encoding): the test server
        # loops a file by playing it again from its first picture, a keyframe in every phase's file, so at each
        # loop all the phases' keyframes fell together once (a traced 64-camera run: one burst of 320 ms
        # latencies 30 s after the start, the whole of its p99), which independent cameras never do.
        loops = {v: _loops_for(v, warmup + seconds + LOOP_FREE_START_S) if phases > 1 else 1 for v in videos}
        served_by = {c: [_transcode(v, transcode, folder, gop, c, gop * k / phases, loops[v]) for k in range(phases)
                         for v in videos] if transcode else list(videos) for c in codecs}
        arms = [(c, v, (f"{c}, " if len(codecs) > 1 else "") + v.label) for c in codecs for v in variants]
        # A fresh server per step: every step starts at the beginning of the (looped) files, and one step's
        # sessions cannot leave the next one a server in a bad state. Long enough for a step and its start-up.
        minutes = max(1.0, (warmup + seconds + START_TIMEOUT) / 60.0 + 0.5)
        rows: list[dict[str, Any]] = []
        breakdown = []
        jobs: list[tuple[int, str | None, Variant, str, str]] = [(n, None, v, c, label) for n in steps
                                                                 for c, v, label in arms]
        # The bare captures once per decoder thread count compared (the other settings do not matter to them).
        jobs += [(breakdown_cameras, m, Variant(t), c, c) for c in codecs
                 for t in dict.fromkeys(v.decode_threads for v in variants)
                 for m in ("grab", "retrieve", "read", "pyav-demux", "pyav-all", "pyav-keyframes",
                           "pyav-keyframes-deblock") if breakdown_cameras]
        for n, mode, variant, codec, label in jobs:
            served = served_by[codec]
            sub = folder / f"step-{len(rows) + len(breakdown)}"
            sub.mkdir()
            server = _Servers(serve, served, minutes, sub, n, per_server) if n else None
            try:
                urls = server.urls(n) if server else []
                if mode is None:
                    spec = {"urls": urls, "fps": fps, "seconds": seconds,
                            "warmup": warmup, "config": config, "weights": weights, "variant": list(variant),
                            "web": web}
                    row = _run_child(spec)
                    if "error" in row and row["error"].startswith("no result within") and server is not None:
                        # The test server's shared GStreamer media now and then leaves a session that connected
                        # while the pipeline was preparing without an answer (about one step in twenty, worse
                        # under load): the daemon is fine, the step is not a measurement. One retry, fresh server.
                        server.stop()
                        (sub / "retry").mkdir()
                        server = _Servers(serve, served, minutes, sub / "retry", n, per_server)
                        if progress is not None:
                            print(f"{n:>7} | retrying with a fresh RTSP server: {row['error']}", file=progress,
                                  flush=True)
                        spec["urls"] = server.urls(n)
                        first_error = row["error"]
                        row = _run_child(spec)
                        row["retried_after"] = first_error
                    row["variant"] = label
                    row["codec"] = codec
                    row["passes"] = _passes(row)
                    rows.append(row)
                    if progress is not None:
                        same = [r for r in rows if r["variant"] == row["variant"]]
                        print(_format_row(row, same) + (f" | {row['variant']}" if len(arms) > 1 else ""),
                              file=progress, flush=True)
                    continue
                spec = {"urls": urls, "fps": fps,
                        "seconds": min(seconds, 15.0), "warmup": 0.0, "decode": mode,
                        "decode_threads": variant.decode_threads}
                row = _run_child(spec)
                row["codec"] = codec
                breakdown.append(row)
                if progress is not None and "error" not in row:
                    what = {"grab": "grab() only", "read": "read() every frame (before)",
                            "retrieve": f"grab() + retrieve() at {fps:g} fps into one array (now)",
                            "pyav-demux": "receive + demux only, no decoding",
                            "pyav-all": "demux + decode of every frame",
                            "pyav-keyframes": "demux + decode of the keyframes only (no deblocking)",
                            "pyav-keyframes-deblock": "demux + decode of the keyframes only, deblocked"}[mode]
                    print(f"{codec + ': ' if len(codecs) > 1 else ''}"
                          f"{'PyAV' if mode.startswith('pyav') else 'OpenCV'} alone, decode_threads {_threads_label(variant.decode_threads)}, {row['cameras']} captures, {what}: "
                          f"{row['per_camera_mb']} MB and "
                          f"{row['cpu_cores_per_camera']:.4f} cores per camera ({row['grabbed_fps_per_camera']} fps "
                          f"grabbed){' errors: ' + '; '.join(row['errors']) if row['errors'] else ''}", file=progress,
                          flush=True)
            finally:
                if server is not None:
                    server.stop()
    if progress is not None:
        for line in _keyframe_ratios(breakdown):
            print(line, file=progress, flush=True)
    summary = []
    for codec, variant, label in arms:
        mine = [r for r in rows if r["variant"] == label and "error" not in r]
        base = next((r for r in mine if r["cameras"] == 0), None)
        for r in mine:
            if base is not None and r["cameras"] > 0:
                r["rss_per_camera_mb"] = round((r["rss_mb"] - base["rss_mb"]) / r["cameras"], 1)
        top = max((r for r in mine if r["cameras"] > 0), key=lambda r: r["cameras"], default=None)
        summary.append({"variant": label, "codec": codec, **variant._asdict(),
                        "cameras": top["cameras"] if top else 0,
                        "rss_mb": top["rss_mb"] if top else None,
                        "rss_per_camera_mb": top.get("rss_per_camera_mb") if top else None,
                        "cpu_per_camera": round(top["cpu_cores"] / top["cameras"], 3) if top else None,
                        "cpu_cores": top["cpu_cores"] if top else None,
                        "decoding": top.get("decoding") if top else None,
                        "p99_ms": top["p99_ms"] if top else None, "passes": bool(top and top["passes"])})
    passing = [r["cameras"] for r in rows if r.get("passes") and r["variant"] == arms[0][2]]
    return {"sources": [v.name for v in videos], "transcode": transcode, "gop_s": gop if transcode else None,
            "codecs": list(codecs) if transcode else None, "web": web, "fps": fps, "window_s": seconds,
            "p99_bound_ms": P99_BOUND_MS, "steps": rows, "breakdown": breakdown, "summary": summary,
            "max_cameras": max(passing) if passing else 0, "cores": os.cpu_count()}


def _format_row(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    if "error" in row:
        return f"{row['cameras']:>7} | error: {row['error']}"
    prev = [r for r in rows[:-1] if "error" not in r]
    extra = ""
    if prev and row["cameras"] > prev[-1]["cameras"]:
        extra = f"{(row['rss_mb'] - prev[-1]['rss_mb']) / (row['cameras'] - prev[-1]['cameras']):.1f}"
    ratio = "-" if row["classified_ratio"] is None else f"{row['classified_ratio']:.3f}"
    p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.0f}"
    p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.0f}"
    cpu_cam = f"{row['cpu_cores'] / row['cameras']:.3f}" if row["cameras"] else "-"
    verdict = "yes" if row.get("passes") else ("-" if row["cameras"] == 0 else "NO")
    split = "-" if not row.get("batches") else \
        f"{row['batch_on_cpu_ms']:.1f}/{row['batch_runnable_ms']:.1f}/{row['batch_blocked_ms']:.1f}"
    return (f"{row['cameras']:>7} | {ratio:>10} | {row['dropped']:>7} | {p50:>6} | {p99:>6} | "
            f"{row['cpu_cores']:>9.2f} | {cpu_cam:>8} | {row['rss_mb']:>7.0f} | {extra:>9} | "
            f"{row['load1']:>5.1f} | {split:>16} | {verdict}")


HEADER = (f"{'cameras':>7} | {'classified':>10} | {'dropped':>7} | {'p50 ms':>6} | {'p99 ms':>6} | "
          f"{'CPU cores':>9} | {'CPU/cam':>8} | {'RSS MB':>7} | {'MB/extra':>9} | {'load':>5} | "
          f"{'batch cpu/rq/GIL':>16} | ok")


def bench_capacity(args: argparse.Namespace) -> int:
    serve = Path(args.rtsp_serve)
    if not serve.is_file():
        raise SystemExit(f"monitor bench capacity: the RTSP server script {serve} is missing: pass "
                         f"--rtsp-serve PATH to an RTSP server script (GStreamer)")
    if not Path(SYSTEM_PYTHON).exists():
        raise SystemExit(f"monitor bench capacity: {SYSTEM_PYTHON} (with GStreamer's gi bindings) is missing")
    if args.transcode and not shutil.which("ffmpeg"):
        raise SystemExit("monitor bench capacity: --transcode needs ffmpeg on PATH")
    codecs = [c.strip() for c in args.codec.split(",")]
    if any(c not in CODECS for c in codecs) or not codecs:
        raise SystemExit(f"monitor bench capacity: --codec {args.codec!r}: expected h264 and/or hevc")
    if (codecs != ["h264"] or args.gop != 2.0) and not args.transcode:
        raise SystemExit("monitor bench capacity: --codec and --gop shape the transcode: pass --transcode WxH@FPS")
    if args.phases < 1 or (args.phases > 1 and not args.transcode):
        raise SystemExit("monitor bench capacity: --phases K needs K >= 1 and --transcode (it shapes the transcodes)")
    if args.gop <= 0:
        raise SystemExit("monitor bench capacity: --gop must be > 0 seconds")
    videos = [Path(s).resolve() for s in args.sources]
    for v in videos:
        if not v.is_file():
            raise SystemExit(f"monitor bench capacity: {v}: no such file (SOURCE is a video file to serve)")
    try:
        steps = sorted({int(s) for s in args.cameras.split(",")})
    except ValueError:
        raise SystemExit(f"monitor bench capacity: --cameras {args.cameras!r}: expected e.g. 0,1,4,8,16") from None
    if not steps or steps[0] < 0 or args.fps <= 0 or args.seconds <= 0:
        raise SystemExit("monitor bench capacity: --cameras must be >= 0, --fps and --seconds > 0")
    config = args.config
    if not config and Path("config.yaml").is_file():
        config = "config.yaml"                  # its model section, as the other commands do
    from monitor.inference.locate import resolve_weights
    weights = resolve_weights(args.weights, config)
    if not weights.is_file():
        raise SystemExit(f"monitor bench capacity: no weights at {weights}: pass --weights FILE (or create it with "
                         f"`monitor weights demo --out {weights}`: same speed as trained weights)")
    try:
        threads = [None if t.strip() == "default" else int(t) for t in args.decode_threads.split(",")]
        mallocs = [m.strip() for m in args.malloc.split(",")]
    except ValueError:
        raise SystemExit(f"monitor bench capacity: --decode-threads {args.decode_threads!r}: expected e.g. default,1,2,0") from None
    if any(t is not None and not 0 <= t <= 16 for t in threads) or any(m not in ("tuned", "arenas") for m in mallocs):
        raise SystemExit("monitor bench capacity: --decode-threads takes default or 0..16 (0 = FFmpeg's choice), --malloc "
                         "tuned and/or arenas")
    captures = [c.strip() for c in args.capture.split(",")]
    try:
        for c in captures:
            capture_options(c)
    except ValueError:
        raise SystemExit(f"monitor bench capacity: --capture {args.capture!r}: expected e.g. opencv,pyav:960x540") from None
    try:
        model_threads = [None if n.strip() == "default" else int(n) for n in args.model_threads.split(",")]
    except ValueError:
        raise SystemExit(f"monitor bench capacity: --model-threads {args.model_threads!r}: expected numbers, e.g. "
                         f"1,2") from None
    priorities = [None if p.strip() == "default" else p.strip() for p in args.capture_priority.split(",")]
    if any(p not in (None, "normal", "low", "idle") for p in priorities) or any(
            t is not None and not 1 <= t <= 64 for t in model_threads):
        raise SystemExit("monitor bench capacity: --capture-priority takes normal, low and/or idle, "
                         "--model-threads 1..64")
    variants = [Variant(m_threads, m, c, p, mt) for c in captures for m in mallocs for m_threads in threads
                for p in priorities for mt in model_threads]
    out = sys.stderr if args.json else sys.stdout
    print(f"monitor bench capacity: {', '.join(v.name for v in videos)}"
          f"{' transcoded to ' + ' and '.join(codecs) + ' ' + args.transcode + f', GOP {args.gop:g} s' if args.transcode else ''}"
          f", {'web server on, /metrics scraped every 5 s' if not args.no_web else 'no web server'}, {args.fps:g} fps sampled per "
          f"camera, {args.seconds:g} s window after {args.warmup:g} s warm-up, {os.cpu_count()} cores; "
          f"one daemon process per step; model from {args.weights or config or 'defaults'}", file=out)
    print("batch cpu/rq/GIL: the inference worker's ms per batch on a core / runnable waiting for a core / blocked "
          "(waiting for the GIL or a lock)", file=out)
    print(HEADER, file=out, flush=True)
    r = run_capacity(videos, steps, args.fps, args.seconds, args.warmup, serve, args.transcode, config,
                     args.weights, progress=out, breakdown_cameras=args.breakdown, variants=variants, gop=args.gop,
                     codecs=codecs, web=not args.no_web, per_server=args.sessions_per_server,
                     phases=args.phases)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    res = sorted({x for row in r["steps"] for x in row.get("resolution", [])})
    dec = sorted({x for row in r["steps"] for x in row.get("decoders", [])})
    print(f"streams {', '.join(res)} ({', '.join(dec)} decoding); "
          f"torch loaded: {any(row.get('torch_loaded') for row in r['steps'])}")
    print(f"most cameras with every sampled frame classified and p99 < {P99_BOUND_MS:.0f} ms"
          f"{' (' + r['summary'][0]['variant'] + ')' if len(variants) > 1 else ''}: {r['max_cameras']}")
    for v in r["summary"]:
        per = [f"{row['cameras']}: {row['rss_per_camera_mb']}" for row in r["steps"]
               if "rss_per_camera_mb" in row and row["variant"] == v["variant"]]
        if per:
            print(f"{v['variant']}: RSS per camera over the 0-camera daemon (MB): {', '.join(per)}")
    first = r["summary"][0]
    if len(r["summary"]) > 1 and first["rss_per_camera_mb"]:
        for v in r["summary"]:
            if v["rss_per_camera_mb"]:
                print(f"at {v['cameras']} cameras, {v['variant']}: {v['rss_per_camera_mb']} MB per camera "
                      f"({v['rss_per_camera_mb'] / first['rss_per_camera_mb']:.2f}x {first['variant']}), "
                      f"RSS {v['rss_mb']:.0f} MB, {v['cpu_per_camera']} cores per camera "
                      f"({first['cpu_per_camera'] / v['cpu_per_camera'] if v['cpu_per_camera'] else float('nan'):.1f}x "
                      f"less than {first['variant']}), decoding {','.join(v['decoding'] or [])}, p99 {v['p99_ms']} ms, "
                      f"ok {'yes' if v['passes'] else 'no'}")
    return 0


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--child":
    raise SystemExit(_child_main())
