"""Leaks (issue 24): after N uploads, N live-view connect/disconnect cycles and N reloads, the live objects of the
types involved, the threads, the decoder processes and tracemalloc's traced memory are back to what they were.

No timing in the assertions: every round waits (bounded) for what it started to end, then counts.
"""
from __future__ import annotations

import gc
import os
import threading
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import cv2
import pytest

from monitor.core.memory import trim
from monitor.core.sample import sample_clip
from testkit.waiting import wait_until
from tests.webapp import MjpegReader, Served, demo_weights, make_config, request

N = 12
# Types whose instances one upload, viewer or reload makes; none may outlive its round.
WATCHED = ("Viewer", "StreamEncoder", "Frame", "Result", "Inference", "Thread", "Task", "Event", "Camera",
           "AlertEngine", "SinkSet", "Config", "Request", "Response", "JSONResponse")
PER_ROUND_LIMIT = 1024            # bytes a round may keep at one line of code
TRACE_LIMIT = 512 * 1024          # bytes of traced growth over all N rounds (a leak of 40 KB a round is past it)


def live_counts() -> Counter[str]:
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects() if type(o).__name__ in WATCHED)


def watched_config(tmp: Path, weights: Path, min_score: float):
    cams = [{"name": "cam0", "source": "sample", "loop": True, "fps": 5}]
    return make_config(tmp, weights, cams, server={"stream": {"fps": 5, "width": 320}},
                       watchlist=[{"name": "cars", "classes": ["car"], "min_score": min_score}])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    weights = demo_weights(tmp_path_factory.getbasetemp())
    tmp = tmp_path_factory.mktemp("leaks")
    with Served(watched_config(tmp, weights, 0.5)) as s:
        s.tmp, s.weights = tmp, weights          # type: ignore[attr-defined]
        yield s


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    cap = cv2.VideoCapture(str(sample_clip()))
    ok, frame = cap.read()
    cap.release()
    assert ok
    return cv2.imencode(".jpg", frame)[1].tobytes()


def settled(served: Served) -> bool:
    """Nothing a round started is still running: no viewer, no encoder thread, no upload decode."""
    return (served.web.streams.viewers == 0 and served.web.decoders.busy == 0
            and not any(t.name.startswith("mjpeg-") for t in threading.enumerate()))


def check_returns_to_baseline(served: Served, one_round: Callable[[int], None]) -> None:
    for i in range(3):                           # warm-up: pools, caches, lazily built objects
        one_round(i)
    assert wait_until(lambda: settled(served), 10)
    threads = threading.active_count()
    pids = served.web.decoders.pids()
    before = live_counts()
    tracemalloc.start(int(os.environ.get("LEAK_FRAMES", "1")))
    try:
        traced0 = tracemalloc.take_snapshot()
        for i in range(N):
            one_round(i)
        assert wait_until(lambda: settled(served), 10)
        gc.collect()
        traced1 = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    after = live_counts()
    grown = {k: after[k] - before[k] for k in after if after[k] > before[k]}
    # A result or frame may be newer than the one counted before; never N more of anything.
    assert all(v < N // 2 for v in grown.values()), f"live objects grew over {N} rounds: {grown}"
    assert wait_until(lambda: threading.active_count() <= threads, 10), \
        f"threads {threads} -> {threading.active_count()}: {[t.name for t in threading.enumerate()]}"
    assert served.web.decoders.pids() == pids or len(served.web.decoders.pids()) <= served.web.decoders.size
    # The cameras' frame arrays come and go from a bounded pool (capture/buffers.py): whether one is held at the
    # second snapshot is a matter of timing, not a leak.
    # pytest's log capture keeps every record a round logs (a reload logs two lines).
    pool = [tracemalloc.Filter(False, "*/monitor/capture/*"), tracemalloc.Filter(False, "*/logging/__init__.py")]
    diff = traced1.filter_traces(pool).compare_to(traced0.filter_traces(pool), "lineno")
    growth = sum(d.size_diff for d in diff)
    top = "\n".join(str(d) for d in diff[:5])
    if os.environ.get("LEAK_FRAMES"):
        for st in traced1.filter_traces(pool).compare_to(traced0.filter_traces(pool), "traceback")[:4]:
            print(st, *st.traceback.format()[-12:], sep="\n")
    print(f"traced growth over {N} rounds: {growth / 1024:.0f} KB; top:\n{top}")
    assert growth < TRACE_LIMIT, f"tracemalloc: {growth / 1024:.0f} KB more over {N} rounds; top:\n{top}"
    # One allocation more per round kept for good: a leak, unless it is a few hundred bytes (not what grows MB/h).
    per_round = [str(d) for d in diff if d.count_diff >= N and d.size_diff >= PER_ROUND_LIMIT * N]
    assert not per_round, f"allocations that grow with every round:\n" + "\n".join(per_round)


def test_uploads_leave_nothing_behind(served: Served, jpeg: bytes) -> None:
    def upload(i: int) -> None:
        explain = "?explain=true" if i % 2 else ""
        r = request(served.port, "POST", f"/api/classify{explain}", jpeg, {"Content-Type": "image/jpeg"})
        assert r.status == 200, r
    check_returns_to_baseline(served, upload)


def test_viewer_cycles_leave_nothing_behind(served: Served) -> None:
    def view(i: int) -> None:
        reader = MjpegReader(served.port, "cam0", timeout=20)
        try:
            assert reader.status == 200
            reader.part()
        finally:
            reader.close()
        assert wait_until(lambda: served.web.streams.viewers == 0, 10)
    check_returns_to_baseline(served, view)


def test_reloads_leave_nothing_behind(served: Served) -> None:
    def reload(i: int) -> None:
        served.app.reload(watched_config(served.tmp, served.weights, 0.5 + 0.01 * (i % 5 + 1)))  # type: ignore
        assert served.app.config.watchlist[0].min_score == pytest.approx(0.5 + 0.01 * (i % 5 + 1))
    root = __import__("logging").getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        check_returns_to_baseline(served, reload)
    finally:
        root.handlers[:] = handlers                # Daemon.reload() sets up the CLI's logging
        root.setLevel(level)


def test_trim_returns_free_heap_pages() -> None:
    # Holes in the heap: many JPEG-sized blocks freed while a small object after each one stays.
    blocks = [(bytearray(100_000), bytearray(64)) for _ in range(400)]
    keep = [small for _, small in blocks]
    del blocks
    assert trim() is True                         # glibc (the only libc the daemon runs on here) released pages
    del keep


@pytest.mark.slow
@pytest.mark.timeout(4800)
def test_soak_load_script_runs_flat() -> None:
    """The README's one-hour figure: scripts/soak_load.py with the issue-24 load on 4 real RTSP cameras for 60
    minutes; RSS slope over the second half under the issue's 2 MB/h target, fds and threads back to baseline (its
    exit status)."""
    import subprocess
    import sys
    script = Path(__file__).resolve().parents[1] / "scripts" / "soak_load.py"
    done = subprocess.run([sys.executable, str(script), "--rtsp", "--minutes", "60", "--warmup", "120",
                           "--every", "60"], capture_output=True, text=True, timeout=4500)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
