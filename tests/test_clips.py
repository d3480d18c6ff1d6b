"""Event clips (issue 19): a real RTSP camera (testkit/rtsp, GStreamer, H.264 at 12.5 fps with a 4.8 s GOP) read by
the PyAV capture into its packet ring, recorded by the real daemon's clip stage, served over HTTP with Range, and
checked with ffprobe/ffmpeg; SIGKILL of the real clip process; retention and disk-full on real files.

Events are started and ended by the test through the daemon's own clip listener (ClipManager.on_event, as the
SinkSet calls it), so a clip's expected length is known exactly: pre + event + post, plus up to one GOP because a
clip starts on the keyframe at or before `now - pre`.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from monitor.alerts.event import Event
from monitor.capture.packet_ring import PacketRing, PacketTap
from monitor.config.loader import parse_config
from testkit.clips import check_clips, kill_cycles, playable
from testkit.rtsp import RtspServer, free_port
from monitor.web import api, models
from tests.webapp import Served, demo_weights, request

PRE, POST, EVENT = 2.0, 1.0, 2.0
GOP = 4.8                   # the test server's keyframe interval (60 frames at 12.5 fps), measured below too


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_weights(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(videos_dir: Path) -> Iterator[RtspServer]:
    with RtspServer(free_port(), ["car-detection"], minutes=1) as s:
        yield s


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, weights: Path, server) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("clips")
    cfg = parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(weights), "threads": 1},
        "cameras": [{"name": "cam", "source": server.url("car-detection"), "backend": "pyav",
                     "frame_size": [320, 180], "fps": 1}],
        "clips": {"enabled": True, "pre": PRE, "post": POST, "min_free_bytes": 1,
                  "retain": {"days": 7, "max_bytes": None}},
        "events": {"database": str(tmp / "events.db")},
    }, tmp)
    with Served(cfg, wait=["cam"]) as s:
        ring = s.app.cameras["cam"].packets
        deadline = time.monotonic() + 20
        while ring.held_seconds() < PRE and time.monotonic() < deadline:
            time.sleep(0.1)
        yield s


def record(served: Served, seconds: float, timeout: float = 20.0) -> Event:
    """One event of `seconds` through the daemon's clip listener; the event once its clip is done."""
    done: list[Event] = []
    served.app.clips.add_listener(done.append)
    try:
        ev = served.app.events.insert(Event(camera="cam", rule="r", label="car", score=0.9, peak_score=0.9,
                                            started_at=time.time()))
        served.app.clips.on_event("start", ev)
        time.sleep(seconds)
        ev = replace(ev, ended_at=time.time())
        served.app.events.end_event(ev.id, ev.ended_at, 0.9)
        served.app.clips.on_event("end", ev)
        deadline = time.monotonic() + timeout
        while not any(e.id == ev.id for e in done) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        served.app.clips._listeners.remove(done.append)
    got = served.app.events.get(ev.id)
    assert got is not None and any(e.id == ev.id for e in done), "no clip listener call"
    return got


def probe(target: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,width,height,r_frame_rate:format=duration", "-of", "json", target],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)


def test_clip_is_pre_event_post_within_one_gop_and_a_stream_copy(served: Served, server) -> None:  # type: ignore[no-untyped-def]
    ev = record(served, EVENT)
    assert ev.clip_state == "complete" and ev.clip and ev.clip.startswith("cam/"), ev
    path = served.app.clips.root / ev.clip
    assert playable(path) == ""
    clip, source = probe(str(path)), probe(server.url("car-detection"))
    # stream copy: the camera's codec, size and frame rate (a re-encode at frame_size would be 320x180)
    assert clip["streams"][0] == source["streams"][0], (clip, source)
    duration = float(clip["format"]["duration"])
    least = PRE + EVENT + POST
    assert least - 0.5 <= duration <= least + GOP + 0.5, duration
    assert abs(ev.clip_seconds - duration) < 0.2, (ev.clip_seconds, duration)
    assert not list(served.app.clips.root.rglob("*.part"))
    m = served.app.metrics.registry.get_sample_value
    assert m("monitor_clips_written_total", {"camera": "cam"}) >= 1
    assert m("monitor_clip_preroll_bytes", {"camera": "cam"}) > 0

    # the API: the event document and the clip with Range
    port = served.web.port
    item = models.Event.model_validate(api.event_json(ev)).model_dump(mode="json")    # an /api/events item
    assert item["has_clip"] is True and item["clip"] == f"/api/events/{ev.id}/clip.mp4"
    assert item["clip_state"] == "complete" and abs(item["clip_seconds"] - ev.clip_seconds) < 1e-6
    size = path.stat().st_size
    full = request(port, "GET", item["clip"])
    assert full.status == 200 and full.headers["Content-Type"] == "video/mp4" and len(full.body) == size
    assert full.headers["Accept-Ranges"] == "bytes"
    part = request(port, "GET", item["clip"], headers={"Range": "bytes=100-1099"})
    assert part.status == 206 and part.headers["Content-Range"] == f"bytes 100-1099/{size}"
    assert part.body == path.read_bytes()[100:1100]
    tail = request(port, "GET", item["clip"], headers={"Range": "bytes=-500"})
    assert tail.status == 206 and tail.body == path.read_bytes()[-500:]
    past = request(port, "GET", item["clip"], headers={"Range": f"bytes={size + 10}-"})
    assert past.status == 416 and past.headers["Content-Range"] == f"bytes */{size}"
    head = request(port, "HEAD", item["clip"])
    assert head.status == 200 and head.body == b"" and int(head.headers["Content-Length"]) == size
    assert request(port, "GET", "/api/events/987654/clip.mp4").status == 404


def test_overlapping_events_share_a_clip(served: Served) -> None:
    store, clips = served.app.events, served.app.clips
    done: list[Event] = []
    clips.add_listener(done.append)
    try:
        a, b = (store.insert(Event(camera="cam", rule=rule, label="car", score=0.9, peak_score=0.9,
                                   started_at=time.time())) for rule in ("r1", "r2"))
        clips.on_event("start", a)
        time.sleep(0.5)
        clips.on_event("start", b)       # starts while a's clip records: joins it
        time.sleep(0.5)
        for ev in (b, a):
            ev = replace(ev, ended_at=time.time())
            store.end_event(ev.id, ev.ended_at, 0.9)
            clips.on_event("end", ev)
            time.sleep(0.5)
        deadline = time.monotonic() + 15
        while len(done) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        clips._listeners.remove(done.append)
    a2, b2 = store.get(a.id), store.get(b.id)
    assert a2.clip_state == b2.clip_state == "complete" and a2.clip == b2.clip and a2.clip_seconds >= PRE + 1.5


def test_disk_full_stops_recording_with_a_warning_and_resumes(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    clips = served.app.clips
    m = served.app.metrics.registry.get_sample_value
    clips.disk.min_free = 1 << 60           # more than any disk has: "full"
    try:
        with caplog.at_level("WARNING", logger="monitor.clips.recorder"):
            ev = record(served, 0.2)
        assert ev.clip_state == "failed" and ev.clip is None
        assert m("monitor_clips_disk_full") == 1
        assert any("recording stopped" in r.message for r in caplog.records)
    finally:
        clips.disk.min_free = 1
    clips.sweep()                           # the retention pass notices the space
    assert m("monitor_clips_disk_full") == 0
    assert record(served, 0.2).clip_state == "complete"


def test_sigkill_mid_clip_leaves_a_playable_clip_or_nothing(tmp_path: Path, server) -> None:  # type: ignore[no-untyped-def]
    result = kill_cycles(server.url("car-detection"), tmp_path, 3, random.Random(19))
    assert sum(result["recording_at_kill"]) >= 3, result      # every kill hit a clip being written
    assert result["problems"] == [] and result["parts"] == [], result
    assert set(result["states"]) <= {"complete", "failed"} and result["states"].get("complete", 0) >= 1, result


def test_retention_by_age_per_camera_and_total_oldest_first(served: Served, tmp_path: Path) -> None:
    clips, store = served.app.clips, served.app.events
    sample = next(clips.root.rglob("*.mp4"))
    now = time.time()
    made = {}
    for i, (cam, age_days) in enumerate([("x", 10), ("x", 3), ("x", 2), ("y", 1), ("y", 0.5)]):
        ev = store.insert(Event(camera=cam, rule="r", label="car", score=0.9, peak_score=0.9,
                                started_at=now - age_days * 86400, ended_at=now - age_days * 86400))
        name = f"{cam}/20200101-00000{i}-{ev.id}.mp4"
        (clips.root / cam).mkdir(exist_ok=True)
        (clips.root / name).write_bytes(sample.read_bytes())
        os.utime(clips.root / name, (now - age_days * 86400,) * 2)
        store.set_clip(ev.id, file=name, seconds=1.0, state="complete")
        made[name] = ev.id
    size = sample.stat().st_size
    original = clips.config

    def retain(**kw: object) -> None:
        cfg = original.clips
        clips.config = original.model_copy(update={"clips": cfg.model_copy(
            update={"retain": cfg.retain.model_copy(update=kw)})})

    try:
        retain(per_camera_max_bytes=size)
        clips.sweep(now=now)
        left = {str(p.relative_to(clips.root)) for p in clips.root.rglob("*.mp4")}
        # x: the 10-day-old one goes by age, then the older of its two others; y keeps its newest only
        assert {n for n in made if n in left} == {list(made)[2], list(made)[4]}, left
        for name, event_id in made.items():
            ev = store.get(event_id)
            assert (ev.clip_state, ev.clip) == (("complete", name) if name in left else ("none", None))
        total = sum(p.stat().st_size for p in clips.root.rglob("*.mp4"))
        retain(per_camera_max_bytes=None, max_bytes=total - 1)
        clips.sweep(now=now)
        left = {str(p.relative_to(clips.root)) for p in clips.root.rglob("*.mp4")}
        assert list(made)[2] not in left and list(made)[4] in left   # the oldest goes first over the total cap
        assert served.app.metrics.registry.get_sample_value("monitor_clips_bytes") <= total - 1
    finally:
        clips.config = original


def test_ring_rebases_a_looping_file_into_one_rising_timeline(tmp_path: Path) -> None:
    """A file looping to its start (and, the same path, a reconnect) continues the ring's timeline: the clip
    written across the jump plays to its end with rising timestamps."""
    from monitor.capture.pyav_capture import PyAVCapture
    from monitor.clips.writer import ClipWriter
    from monitor.core.sample import sample_clip

    ring = PacketRing("f", pre=100.0, max_bytes=64 << 20)
    cap = PyAVCapture(str(sample_clip()), 5, 5, ring=ring)
    frames = 0
    while cap.grab():
        frames += 1
    assert cap.set(1, 0)                   # cv2.CAP_PROP_POS_FRAMES: the loop's rewind
    for _ in range(50):
        assert cap.grab()
    cap.release()
    items = ring.snapshot_and_tap(PacketTap())
    assert all(b.dts > a.dts for a, b in zip(items, items[1:]) if a.video and b.video)
    path = tmp_path / "loop.mp4"
    writer = ClipWriter(path, items[0].spec)
    for item in items:
        writer.write(item)
    writer.close()
    assert playable(path) == ""
    packets = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-show_entries", "stream=nb_read_packets",
                              "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    # every packet demuxed is in the ring: the pictures returned plus the decoder's delay (B-frames)
    assert frames + 50 <= int(packets.split()[0]) <= frames + 50 + 4


def test_a_tiny_preroll_byte_cap_drops_whole_gops_and_counts_them() -> None:
    from monitor.capture.pyav_capture import PyAVCapture
    from monitor.core.sample import sample_clip

    cap_bytes = sample_clip().stat().st_size // 4
    ring = PacketRing("t", pre=1000.0, max_bytes=cap_bytes)
    dropped: list[int] = []
    ring._on_dropped = dropped.append
    capture = PyAVCapture(str(sample_clip()), 5, 5, ring=ring)
    while capture.grab():
        pass
    capture.release()
    assert 0 < ring.held_bytes() <= cap_bytes and sum(dropped) > 0 and ring.dropped_bytes == sum(dropped)
    tap = PacketTap()
    assert ring.snapshot_and_tap(tap)[0].keyframe      # whole GOPs went: it still starts on a keyframe


def test_audio_is_copied_in_sync(tmp_path: Path) -> None:
    """A source with AAC audio: the clip carries both streams, copied, of the same length, and decodes cleanly."""
    from monitor.capture.pyav_capture import PyAVCapture
    from monitor.clips.writer import ClipWriter

    src = tmp_path / "av.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-f", "lavfi",
                    "-i", "sine=frequency=440:sample_rate=48000", "-t", "6", "-c:v", "libx264", "-g", "25", "-c:a",
                    "aac", "-shortest", str(src)], check=True, timeout=60)
    ring = PacketRing("av", pre=100.0, max_bytes=64 << 20)
    capture = PyAVCapture(str(src), 5, 5, ring=ring)
    while capture.grab():
        pass
    capture.release()
    items = ring.snapshot_and_tap(PacketTap())
    assert any(not i.video for i in items)
    out = tmp_path / "clip.mp4"
    writer = ClipWriter(out, items[0].spec)
    for item in items:
        writer.write(item)
    writer.close()
    streams = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,duration", "-of",
                              "csv=p=0", str(out)], capture_output=True, text=True, check=True).stdout.split()
    codecs = {line.split(",")[0]: float(line.split(",")[1]) for line in streams}
    assert set(codecs) == {"h264", "aac"} and abs(codecs["h264"] - codecs["aac"]) < 0.2, codecs
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "null", "-"], capture_output=True,
                             text=True, timeout=60)
    assert decoded.returncode == 0 and decoded.stderr == ""


def test_the_daemon_hears_events_through_its_sink_set(served: Served) -> None:
    """The engine's path: SinkSet.emit -> the "clips" listener (a sink thread of its own) -> the recorder."""
    assert "clips" in served.app.sinks.names
    store = served.app.events
    ev = store.insert(Event(camera="cam", rule="r", label="car", score=0.9, peak_score=0.9, started_at=time.time()))
    served.app.sinks.emit("start", ev, None)
    time.sleep(0.5)
    ev = replace(ev, ended_at=time.time())
    store.end_event(ev.id, ev.ended_at, 0.9)
    served.app.sinks.emit("end", ev, None)
    deadline = time.monotonic() + 15
    while store.get(ev.id).clip_state in ("none", "recording") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.get(ev.id).clip_state == "complete"
