"""`monitor bench batch`: images/s on one folder of real JPEG frames, in one run: the seeds' naive path (PIL open +
Resize/CenterCrop/ToTensor/Normalize + FP32 eager ResNet-18, one image at a time), `monitor classify DIR` as it
was (each batch read and decoded, then classified: no overlap), `monitor classify DIR` now (the next images
decoded on a thread pool, or a process pool, while the network runs), and POST /api/classify/batch to a daemon
(`monitor run` as a process, same artifact and inference threads) reading the NDJSON stream to its end.

The variants take turns, round after round (the machine is shared: compare ratios of the same round). The naive
path runs in a process of its own: torch's thread pool spinning after a call would slow the runtime that runs
next in the same process, a cost neither `monitor classify` nor the daemon pays. The classifier is the one
`monitor classify` loads (STREAMS OpenVINO streams); the daemon's batch route runs on the same kind
(Classifier.pipelined), built on its first batch (the warm-up post below).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

import cv2

from monitor.bench.common import footage, read_frames
from monitor.commands.classify import POOL, classify_files
from monitor.inference.classifier import Classifier
from monitor.inference.locate import resolve_weights
from monitor.inference.prefetch import STREAMS, WORKERS

JPEG_QUALITY = 90

# One process: the seeds' loop over the files, images/s on stdout.
_NAIVE = """
import sys, time
from pathlib import Path
import torch
from PIL import Image
from monitor.bench.common import SeedsBaseline
from monitor.inference.classifier import configure_threads
configure_threads(None)
files = sys.argv[1:]
base = SeedsBaseline()
def one(path):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = 256 / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    import numpy as np
    t = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    with torch.inference_mode():
        return base.net(((t - base.mean) / base.std).unsqueeze(0)).argmax()
for f in files[:3]:
    one(f)
t, cpu = time.perf_counter(), time.process_time()
for f in files:
    one(f)
print(len(files) / (time.perf_counter() - t), (time.process_time() - cpu) / len(files))
"""


def write_frames(videos: Sequence[Path], count: int, folder: Path) -> list[Path]:
    """`count` real frames spread over the videos, as JPEG files (quality JPEG_QUALITY) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, frame in enumerate(read_frames(videos, count)):
        path = folder / f"frame{i:05d}.jpg"
        cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        out.append(path)
    return out


def multipart(files: Sequence[Path], boundary: str = "monitor-bench-batch") -> tuple[bytes, str]:
    parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{f.name}"\r\n'
              f"Content-Type: image/jpeg\r\n\r\n").encode() + f.read_bytes() + b"\r\n" for f in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Daemon:
    """`monitor run` with no working camera (its one source is missing: it retries, idle), the artifact and
    inference threads given, batches as large as the folder."""

    def __init__(self, weights: Path, threads: int, body_bytes: int, files: int, tmp: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = tmp / "config.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, port: {self.port}, batch_max_files: {files}, "
            f"batch_max_bytes: {body_bytes + 2**20}}}\n"
            f"model: {{weights: {weights.resolve()}, threads: {threads}}}\n"
            f"cameras:\n  - {{name: idle, source: {tmp / 'missing.mp4'}}}\n"
            f"events: {{database: {tmp}/events.db}}\nlogging: {{level: warning}}\n")
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "-c", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"monitor bench: `monitor run` exited with {self.proc.returncode}")
                time.sleep(0.1)
        self.stop()
        raise SystemExit("monitor bench: the daemon did not answer /healthz within 120 s")

    def post(self, body: bytes, ctype: str) -> tuple[int, float, float]:
        """(files classified, seconds to the first line, seconds to the last) of one batch."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            t = time.perf_counter()
            conn.request("POST", "/api/classify/batch", body, {"Content-Type": ctype})
            r = conn.getresponse()
            if r.status != 200:
                raise SystemExit(f"monitor bench: the batch was answered {r.status}: {r.read()[:300]!r}")
            first = 0.0
            classified = 0
            while True:
                line = r.readline()
                if not line:
                    break
                first = first or time.perf_counter() - t
                doc = json.loads(line)
                classified += "predictions" in doc
            return classified, first, time.perf_counter() - t
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far, all its threads; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the daemon's decoder processes)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _rate(run: Callable[[], int], cpu: Callable[[], float] = time.process_time) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of one run; `cpu` reads the CPU time of whatever does the work."""
    t, c = time.perf_counter(), cpu()
    n = run()
    return n / (time.perf_counter() - t), (cpu() - c) / max(1, n)


FLOOR_BATCH = 8


def _floor_ms(clf: Classifier, files: Sequence[Path]) -> dict[str, float]:
    """The two costs no variant can avoid, each alone, in CPU ms per image (every thread of the process): decoding
    the JPEG files (libjpeg-turbo through OpenCV, the fastest decoder here) and running the network on inputs
    prepared beforehand. Their sum bounds what overlapping them can give: the throughput ratio of two CPU-bound
    paths on the same cores is their CPU-per-image ratio."""
    import numpy as np
    blobs = [f.read_bytes() for f in files]
    cpu = time.process_time()
    images = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in blobs]
    decode = (time.process_time() - cpu) / len(files)
    batches = [clf.prepare(images[i:i + FLOOR_BATCH]) for i in range(0, len(images), FLOOR_BATCH)]
    del images
    clf.run(batches[0])                                  # warm
    cpu = time.process_time()
    for batch in batches:
        clf.run(batch)
    network = (time.process_time() - cpu) / len(files)
    return {"jpeg_decode": decode * 1000, "network": network * 1000}


def bench_batch(args: argparse.Namespace) -> int:
    weights = resolve_weights(args.weights, args.config)
    videos = footage(args.video)
    with tempfile.TemporaryDirectory(prefix="monitor-bench-batch-") as tmp_name:
        tmp = Path(tmp_name)
        files = write_frames(videos, args.frames, tmp / "frames")
        clf = Classifier(weights, streams=STREAMS)       # as `monitor classify` loads it
        body, ctype = multipart(files)
        daemon = Daemon(weights, clf.threads, len(body), len(files), tmp)
        naive_files = [str(f) for f in files[:args.naive_frames]]

        def classify(workers: int, pool: str = "thread") -> Callable[[], int]:
            return lambda: sum(o.predictions is not None for o in classify_files(clf, files, workers=workers,
                                                                                   pool=pool))

        def naive() -> tuple[float, float]:
            out = subprocess.run([sys.executable, "-c", _NAIVE, *naive_files], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"monitor bench: the naive baseline failed: {out.stderr.strip()[-400:]}")
            rate, cpu = out.stdout.split()[-2:]
            return float(rate), float(cpu)

        first_lines: list[float] = []

        def daemon_cpu() -> float:             # the daemon and its decoder processes
            return sum(_process_cpu(p) for p in [daemon.proc.pid, *_children(daemon.proc.pid)])

        def route() -> tuple[float, float]:
            c = daemon_cpu()
            n, first, total = daemon.post(body, ctype)
            if n != len(files):
                raise SystemExit(f"monitor bench: the batch classified {n} of {len(files)} files")
            first_lines.append(first)
            return n / total, (daemon_cpu() - c) / n

        # (the process pool's CPU is its workers', which are not this process's children: not counted)
        variants: dict[str, Callable[[], tuple[float, float]]] = {
            "naive": naive,
            "before": lambda: _rate(classify(0)),
            "threads": lambda: _rate(classify(WORKERS, "thread")),
            "processes": lambda: (_rate(classify(WORKERS, "process"))[0], float("nan")),
            "route": route,
        }
        try:
            floor = _floor_ms(clf, files)
            classify(0)()                                # warm: the runtime's first calls, the page cache
            daemon.post(body, ctype)                     # warm: the daemon's decoder processes
            rates: dict[str, list[float]] = {k: [] for k in variants}
            cpus: dict[str, list[float]] = {k: [] for k in variants}
            for r in range(args.rounds):
                names = list(variants) if r % 2 == 0 else list(variants)[::-1]
                for name in names:
                    rate, cpu = variants[name]()
                    rates[name].append(rate)
                    cpus[name].append(cpu)
        finally:
            daemon.stop()
    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu_ms = {k: statistics.median(v) * 1000 for k, v in cpus.items()}
    now = "threads" if POOL == "thread" else "processes"          # what `monitor classify` runs

    def ratio(a: str, b: str) -> float:
        """The median over the rounds of a's images/s over b's in the same round."""
        return statistics.median(x / y for x, y in zip(rates[a], rates[b]))

    result = {"frames": len(files), "naive_frames": len(naive_files), "rounds": args.rounds,
              "threads": clf.threads,
              "weights": str(weights), "model": clf.meta.name, "images_per_s": {k: round(v, 1) for k, v in med.items()},
              "all_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
              "ratios": {"before_vs_naive": round(ratio("before", "naive"), 2),
                         "after_vs_naive": round(ratio(now, "naive"), 2),
                         "after_vs_before": round(ratio(now, "before"), 2),
                         "threads_vs_processes": round(ratio("threads", "processes"), 2),
                         "route_vs_after": round(ratio("route", now), 2),
                         "route_vs_naive": round(ratio("route", "naive"), 2)},
              "cpu_ms_per_image": {k: round(v, 2) for k, v in cpu_ms.items()},
              "cpu_ratios": {"naive_vs_after": round(cpu_ms["naive"] / cpu_ms["threads"], 2),
                             "route_vs_after": round(cpu_ms["route"] / cpu_ms["threads"], 2)},
              "route_first_line_s": round(statistics.median(first_lines), 3),
              "floor_cpu_ms_per_image": {k: round(v, 2) for k, v in floor.items()},
              "floor_bound_vs_naive": round(cpu_ms["naive"] / (floor["jpeg_decode"] + floor["network"]), 2)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"monitor bench batch: {len(files)} real frames as JPEG files ({', '.join(v.name for v in videos)}), "
          f"{clf.meta.name}, {clf.runtime} with {clf.threads} inference threads (the daemon too), {args.rounds} "
          f"rounds in turns; "
          f"medians (shared machine: compare the ratios)")
    labels = {"naive": f"naive: PIL + FP32 eager, one image at a time ({len(naive_files)} files)",
              "before": "monitor classify DIR without prefetch: loaded just before its batch",
              "threads": f"monitor classify DIR, prefetch on {WORKERS} threads",
              "processes": f"monitor classify DIR, prefetch on {WORKERS} processes",
              "route": "POST /api/classify/batch (daemon process, NDJSON read to the end)"}
    labels[now] += " (now)"
    for k, label in labels.items():
        print(f"  {label:<72} {med[k]:8.1f} images/s  {cpu_ms[k]:7.2f} CPU ms/image   rounds: "
              f"{', '.join(f'{x:.1f}' for x in rates[k])}")
    r = result["ratios"]
    print(f"classify DIR now vs naive: {r['after_vs_naive']:.2f}x (before: {r['before_vs_naive']:.2f}x); now vs "
          f"before: {r['after_vs_before']:.2f}x; threads vs processes: {r['threads_vs_processes']:.2f}x")
    print(f"batch route vs classify DIR now: {r['route_vs_after']:.2f}x; vs naive: {r['route_vs_naive']:.2f}x; "
          f"first line after {result['route_first_line_s'] * 1000:.0f} ms")
    c = result["cpu_ratios"]
    print(f"CPU per image (less sensitive to a busy machine; the process pool's workers not counted): naive "
          f"{c['naive_vs_after']:.2f}x classify DIR with threads; the batch route (daemon + decoder processes) "
          f"{c['route_vs_after']:.2f}x it")
    f = result["floor_cpu_ms_per_image"]
    print(f"floor, CPU ms per image: JPEG decode alone {f['jpeg_decode']:.2f} (cv2.imdecode) + the network alone "
          f"{f['network']:.2f} (batches of {FLOOR_BATCH}, inputs made beforehand) = "
          f"{f['jpeg_decode'] + f['network']:.2f}: no pipeline of these two can pass "
          f"{result['floor_bound_vs_naive']:.2f}x the naive path's CPU per image on this CPU")
    return 0
