"""Sinks end to end: a real HTTP receiver on 127.0.0.1, real commands, real JPEG files, real SQLite."""
from __future__ import annotations

import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.config.types import AlertsConfig, WebhookConfig
from monitor.alerts.event import Event
from monitor.alerts.events import EventStore
from monitor.core.metrics import Metrics
from monitor.alerts.sinks import SinkSet

from testkit.webhook import Receiver

IMAGE = np.zeros((120, 160, 3), np.uint8)
IMAGE[:, :80] = (200, 120, 40)


def failures(metrics: Metrics, sink: str) -> float:
    return metrics.registry.get_sample_value("monitor_sink_failures_total", {"sink": sink}) or 0.0


def dropped(metrics: Metrics, sink: str) -> float:
    return metrics.registry.get_sample_value("monitor_sink_dropped_total", {"sink": sink}) or 0.0


def event(eid: int | None = 1, **kw: object) -> Event:
    fields: dict = {"id": eid, "camera": "yard", "rule": "dogs", "label": "dog", "score": 0.8123,
                    "peak_score": 0.8123, "started_at": 1_700_000_000.0}
    fields.update(kw)
    return Event(**fields)


def wait_until(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def store(tmp_path: Path):
    s = EventStore(tmp_path / "events.db", Metrics())
    yield s
    s.close()


def test_only_configured_sinks_exist(tmp_path: Path) -> None:
    assert SinkSet(AlertsConfig(), Metrics(), None).names == ["log"]
    full = AlertsConfig(snapshots=tmp_path, webhook=WebhookConfig(url="http://127.0.0.1:9/x"), command=("true",))
    assert SinkSet(full, Metrics(), None).names == ["log", "snapshot", "webhook", "command"]


def test_webhook_receives_start_and_end_with_the_snapshot_path(tmp_path: Path, store: EventStore) -> None:
    metrics = Metrics()
    eid = store.start_event("yard", "dogs", "dog", 0.81, 1_700_000_000.0)
    with Receiver("ok") as rx:
        cfg = AlertsConfig(snapshots=tmp_path / "snaps", webhook=WebhookConfig(url=rx.url, timeout=2.0, retries=1))
        sinks = SinkSet(cfg, metrics, store)
        sinks.start()
        try:
            sinks.emit("start", event(eid), IMAGE)
            sinks.emit("end", event(eid, ended_at=1_700_000_030.0, peak_score=0.93), None)
            assert rx.wait_for(2, 5.0)
        finally:
            sinks.stop(5.0)
    start, end = rx.requests
    assert start["kind"] == "start" and end["kind"] == "end"
    assert (start["id"], start["camera"], start["rule"], start["label"]) == (eid, "yard", "dogs", "dog")
    assert start["score"] == pytest.approx(0.8123) and end["peak_score"] == pytest.approx(0.93)
    assert end["ended_at"] == 1_700_000_030.0
    # The snapshot was written before the webhook went out, so its path is real and in both payloads.
    assert start["snapshot"] and Path(start["snapshot"]).is_file() and end["snapshot"] == start["snapshot"]
    assert rx.headers[0]["Content-Type"] == "application/json"
    assert failures(metrics, "webhook") == 0


def test_webhook_500_is_retried_then_counted(tmp_path: Path) -> None:
    metrics = Metrics()
    with Receiver("500") as rx:
        cfg = AlertsConfig(webhook=WebhookConfig(url=rx.url, timeout=2.0, retries=2))
        sinks = SinkSet(cfg, metrics, None, retry_backoff=0.05)
        sinks.start()
        try:
            sinks.emit("start", event(), IMAGE)
            assert wait_until(lambda: failures(metrics, "webhook") == 1, 5.0)
        finally:
            sinks.stop(2.0)
        assert rx.hits == 3                     # the first try plus `retries`
    assert failures(metrics, "webhook") == 1


def test_stop_interrupts_the_retry_backoff(tmp_path: Path) -> None:
    metrics = Metrics()
    with Receiver("500") as rx:
        cfg = AlertsConfig(webhook=WebhookConfig(url=rx.url, timeout=2.0, retries=5))
        sinks = SinkSet(cfg, metrics, None, retry_backoff=30.0)
        sinks.start()
        sinks.emit("start", event(), None)
        assert rx.wait_for(1, 5.0)
        time.sleep(0.1)                         # now sleeping in a 30 s backoff
        t0 = time.monotonic()
        sinks.stop(5.0)
        assert time.monotonic() - t0 < 1.5
        assert rx.hits == 1
    assert failures(metrics, "webhook") == 1


def test_hung_webhook_never_blocks_emit_and_drops_are_counted() -> None:
    metrics = Metrics()
    with Receiver("hang") as rx:
        cfg = AlertsConfig(webhook=WebhookConfig(url=rx.url, timeout=1.0, retries=0), queue_size=8)
        sinks = SinkSet(cfg, metrics, None)
        sinks.start()
        try:
            sinks.emit("start", event(0), IMAGE)
            assert rx.wait_for(1, 5.0)          # the webhook thread is now stuck in the hung request
            worst = 0.0
            t0 = time.perf_counter()
            for i in range(1, 1001):
                s = time.perf_counter()
                sinks.emit("start", event(i), IMAGE)
                worst = max(worst, time.perf_counter() - s)
            total = time.perf_counter() - t0
        finally:
            t1 = time.monotonic()
            sinks.stop(0.5)
            stop_took = time.monotonic() - t1
    print(f"emit x1000 while the webhook hangs: total {total * 1000:.1f} ms, worst {worst * 1000:.2f} ms")
    assert total < 0.5 and worst < 0.05
    assert dropped(metrics, "webhook") >= 1000 - 8
    assert stop_took < 1.5                      # stop gives up on the hung sink within its timeout


def write_args_script(tmp_path: Path) -> Path:
    script = tmp_path / "record.py"
    script.write_text("import sys, json\n"
                      "with open(sys.argv[1], 'a') as f:\n"
                      "    f.write(json.dumps(sys.argv[2:]) + '\\n')\n")
    return script


def test_command_gets_substituted_arguments_without_a_shell(tmp_path: Path, store: EventStore) -> None:
    import json
    metrics = Metrics()
    out = tmp_path / "out.txt"
    cfg = AlertsConfig(snapshots=tmp_path / "snaps",
                       command=(sys.executable, str(write_args_script(tmp_path)), str(out), "{camera}", "{rule}",
                                "{label}", "{score}", "id={event_id}", "{snapshot}", "{unknown} {}", "$HOME;`x`"),
                       command_timeout=10.0)
    eid = store.start_event("yard", "dogs", "dog", 0.81, 1_700_000_000.0)
    sinks = SinkSet(cfg, metrics, store)
    sinks.start()
    try:
        sinks.emit("start", event(eid, label="dog; rm -rf /"), IMAGE)
        sinks.emit("end", event(eid), None)      # commands run for "start" only
        assert wait_until(lambda: out.exists() and out.read_text().count("\n") >= 1, 8.0)
    finally:
        sinks.stop(5.0)
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    args = json.loads(lines[0])
    assert args[:5] == ["yard", "dogs", "dog; rm -rf /", "0.812", f"id={eid}"]
    assert Path(args[5]).is_file() and args[5] == store.get(eid).snapshot
    assert args[6:] == ["{unknown} {}", "$HOME;`x`"]
    assert failures(metrics, "command") == 0


def test_hung_command_is_killed_at_its_timeout_with_its_children(tmp_path: Path) -> None:
    metrics = Metrics()
    pidfile = tmp_path / "child.pid"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen(['sleep', '30'])\n"
            "open(sys.argv[1], 'w').write(str(p.pid))\n"
            "time.sleep(30)\n")
    cfg = AlertsConfig(command=(sys.executable, "-c", code, str(pidfile)), command_timeout=1.0)
    sinks = SinkSet(cfg, metrics, None)
    sinks.start()
    try:
        t0 = time.monotonic()
        sinks.emit("start", event(), None)
        assert wait_until(lambda: failures(metrics, "command") == 1, 6.0)
        took = time.monotonic() - t0
    finally:
        sinks.stop(2.0)
    assert 1.0 <= took < 4.0
    child = int(pidfile.read_text())

    def gone() -> bool:
        try:
            return Path(f"/proc/{child}/stat").read_text().split(") ")[1].startswith("Z")   # zombie: dead
        except FileNotFoundError:
            return True

    assert wait_until(gone, 3.0), "the command's child survived the timeout kill"


def test_command_nonzero_exit_and_missing_program_are_counted(tmp_path: Path) -> None:
    metrics = Metrics()
    sinks = SinkSet(AlertsConfig(command=(sys.executable, "-c", "import sys; sys.exit(3)")), metrics, None)
    sinks.start()
    try:
        sinks.emit("start", event(), None)
        assert wait_until(lambda: failures(metrics, "command") == 1, 5.0)
    finally:
        sinks.stop(2.0)
    metrics2 = Metrics()
    missing = SinkSet(AlertsConfig(command=(str(tmp_path / "no-such-program"),)), metrics2, None)
    missing.start()
    try:
        missing.emit("start", event(), None)
        assert wait_until(lambda: failures(metrics2, "command") == 1, 5.0)
    finally:
        missing.stop(2.0)


def test_snapshot_is_a_decodable_jpeg_with_overlay_and_the_row_gets_its_path(tmp_path: Path,
                                                                              store: EventStore) -> None:
    metrics = Metrics()
    root = tmp_path / "snaps"
    eid = store.start_event("yard", "dogs", "dog", 0.81, 1_700_000_000.0)
    sinks = SinkSet(AlertsConfig(snapshots=root), metrics, store, untrained=True)
    sinks.start()
    try:
        sinks.emit("start", event(eid), IMAGE)
        assert wait_until(lambda: store.get(eid).snapshot is not None, 5.0)
    finally:
        sinks.stop(5.0)
    path = Path(store.get(eid).snapshot)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(1_700_000_000.0))
    assert path == root / "yard" / f"{stamp}-{eid}-dogs.jpg"
    img = cv2.imread(str(path))
    assert img is not None and img.shape == IMAGE.shape
    assert not np.array_equal(img, IMAGE)                       # overlay drawn
    assert img[-2, -2, 2] > 200 and img[-2, -2, 0] < 60        # red event banner at the bottom
    assert IMAGE[-2, -2].tolist() == [0, 0, 0]                   # the shared frame untouched
    assert [p.name for p in path.parent.iterdir()] == [path.name]   # no temp file left behind
    assert failures(metrics, "snapshot") == 0


def test_unwritable_snapshot_directory_counts_a_failure(tmp_path: Path, store: EventStore) -> None:
    metrics = Metrics()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file where the snapshot directory should be")  # root cannot mkdir here either
    with Receiver("ok") as rx:
        cfg = AlertsConfig(snapshots=blocker / "snaps", webhook=WebhookConfig(url=rx.url, timeout=2.0, retries=0))
        eid = store.start_event("yard", "dogs", "dog", 0.81, 1_700_000_000.0)
        sinks = SinkSet(cfg, metrics, store)
        sinks.start()
        try:
            sinks.emit("start", event(eid), IMAGE)
            assert wait_until(lambda: failures(metrics, "snapshot") == 1, 5.0)
            assert rx.wait_for(1, 5.0)
            sinks.emit("start", event(eid), IMAGE)          # the sink thread is alive and keeps trying
            assert wait_until(lambda: failures(metrics, "snapshot") == 2, 5.0)
        finally:
            sinks.stop(5.0)
    assert rx.requests[0]["snapshot"] is None                # nothing written, nothing claimed
    assert store.get(eid).snapshot is None


def test_stop_drains_queued_deliveries(tmp_path: Path) -> None:
    metrics = Metrics()
    with Receiver("ok") as rx:
        sinks = SinkSet(AlertsConfig(webhook=WebhookConfig(url=rx.url, timeout=2.0, retries=0)), metrics, None)
        for i in range(5):
            sinks.emit("start", event(i), None)          # queued before start: nothing lost
        sinks.start()
        sinks.stop(5.0)
        assert sorted(r["id"] for r in rx.requests) == [0, 1, 2, 3, 4]


def test_emit_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        SinkSet(AlertsConfig(), Metrics(), None).emit("middle", event(), None)


def test_snapshot_path_components_are_sanitised(tmp_path: Path, store: EventStore) -> None:
    root = tmp_path / "snaps"
    sinks = SinkSet(AlertsConfig(snapshots=root), Metrics(), store)
    sinks.start()
    try:
        eid = store.start_event("../../etc", "a/b", "dog", 0.8, 1_700_000_000.0)
        sinks.emit("start", event(eid, camera="../../etc", rule="a/b"), IMAGE)
        assert wait_until(lambda: store.get(eid).snapshot is not None, 5.0)
    finally:
        sinks.stop(5.0)
    path = Path(store.get(eid).snapshot).resolve()
    assert root.resolve() in path.parents
    assert re.fullmatch(rf"\d{{8}}-\d{{6}}-{eid}-a_b\.jpg", path.name)


@pytest.mark.parametrize("code", ["301", "302", "307"])
def test_webhook_redirect_is_a_counted_failure_never_a_get(code: str, caplog: pytest.LogCaptureFixture) -> None:
    """urllib follows 301/302 by turning the POST into a GET without its body: the receiver got nothing and the
    delivery was counted as sent. A redirect is a failure: counted, logged with the code, not retried, no GET."""
    metrics = Metrics()
    with Receiver(code) as rx:
        cfg = AlertsConfig(webhook=WebhookConfig(url=rx.url, timeout=2.0, retries=2))
        sinks = SinkSet(cfg, metrics, None, retry_backoff=0.05)
        sinks.start()
        try:
            sinks.emit("start", event(), None)
            assert wait_until(lambda: failures(metrics, "webhook") == 1, 5.0)
            time.sleep(0.3)                     # room for a (wrong) retry or a followed redirect to show up
        finally:
            sinks.stop(2.0)
        assert rx.calls == [("POST", "/hook")], rx.calls
    assert failures(metrics, "webhook") == 1
    logged = [r.getMessage() for r in caplog.records if "alert sink webhook" in r.getMessage()]
    # the target as scheme://host:port only: a webhook's path is often its secret (alerts.webhook.url)
    origin = rx.url.rsplit("/", 1)[0]
    assert len(logged) == 1 and f"HTTP {code}" in logged[0] and f"{origin} (another path)" in logged[0], logged
    assert "/moved" not in logged[0] and "/hook" not in logged[0], logged


def test_listener_sink_gets_the_webhook_event_and_its_full_queue_drops(tmp_path: Path) -> None:
    """A later stage's listener (MQTT): the event the webhook gets (snapshot path once written), the event's
    picture at start; a stuck listener costs only its own bounded queue, counted under its name."""
    import threading
    got: list[tuple] = []
    release = threading.Event()

    def listener(kind: str, ev: Event, picture: object) -> None:
        got.append((kind, ev, picture))
        release.wait(5)

    metrics = Metrics()
    sinks = SinkSet(AlertsConfig(snapshots=tmp_path, queue_size=2), metrics, None, listeners=[("mqtt", listener)])
    assert sinks.names == ["log", "snapshot", "mqtt"]
    sinks.start()
    try:
        sinks.emit("start", event(), IMAGE)
        assert wait_until(lambda: len(got) == 1)
        for i in range(5):     # the listener is stuck in the first delivery: 2 queue up, 3 are dropped
            sinks.emit("start", event(eid=10 + i, started_at=1_700_000_100.0 + i), None)
        assert dropped(metrics, "mqtt") == 3
        release.set()
        assert wait_until(lambda: len(got) == 3)
    finally:
        sinks.stop(timeout=2)
    kind, ev, picture = got[0]
    assert ev == replace(event(), snapshot=ev.snapshot)
    assert kind == "start" and ev.snapshot and Path(ev.snapshot).is_file()
    assert picture is not None and picture.jpeg == Path(ev.snapshot).read_bytes()    # the file's very bytes
