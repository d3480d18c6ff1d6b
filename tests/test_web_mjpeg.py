"""The MJPEG live view: framing, overlay, one encode per frame shared by all viewers, slow viewers skip."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from monitor.render.overlay import BANNER_COLOR, banner_height
from testkit.waiting import wait_until
from tests.webapp import MjpegReader, Served, demo_weights, file_camera, make_config, request

FPS = 8
WIDTH = 384
MAX_VIEWERS = 5


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> Iterator[Served]:
    root = tmp_path_factory.getbasetemp()
    weights = demo_weights(root)
    tmp = tmp_path_factory.mktemp("mjpeg")
    cfg = make_config(tmp, weights, [file_camera(videos_dir, "cam1"), file_camera(videos_dir, "alarm", fps=2),
                                     {"name": "dark", "source": str(tmp / "missing.mp4")}],
                      server={"stream": {"fps": FPS, "width": WIDTH, "quality": 70, "max_viewers": MAX_VIEWERS}},
                      watchlist=[{"name": "always", "classes": ["dog"], "cameras": ["alarm"], "min_score": 0,
                                  "min_frames": 1, "end_after": "1h"}])
    with Served(cfg, wait=["cam1", "alarm"]) as s:
        yield s


@pytest.fixture(autouse=True)
def no_viewers_left(served: Served) -> None:
    """Each test starts without viewers of earlier tests (the server notices a hang-up within a frame)."""
    assert wait_until(lambda: served.web.streams.viewers == 0, 3)


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "part is not a decodable JPEG"
    return image


def test_stream_parts_are_framed_jpegs_with_overlay(served: Served) -> None:
    reader = MjpegReader(served.port, "cam1")
    try:
        assert reader.status == 200
        assert reader.headers["content-type"] == "multipart/x-mixed-replace; boundary=monitor-frame"
        assert "no-store" in reader.headers["cache-control"]
        previous = None
        for _ in range(5):
            headers, body = reader.part()
            assert headers["content-type"] == "image/jpeg" and int(headers["content-length"]) == len(body)
            image = decode(body)
            assert image.shape == (216, WIDTH, 3)                 # 768x432 scaled to the configured width
            assert previous is None or not np.array_equal(previous, image)   # every part is a new frame
            previous = image
        # The overlay is drawn: the raw frame at the same size differs from the streamed one in the panel area
        raw = cv2.resize(served.app.cameras["cam1"].latest().image, (WIDTH, 216), interpolation=cv2.INTER_AREA)
        assert raw[:30, :100].mean() - previous[:30, :100].mean() > 10      # the dimmed prediction panel
    finally:
        reader.close()
    assert wait_until(lambda: served.web.streams.encoder("cam1") is None)


def test_event_banner_while_event_active(served: Served) -> None:
    assert wait_until(lambda: served.app.alerts.active("alarm") != [], 10)
    reader = MjpegReader(served.port, "alarm")
    try:
        _, body = reader.part()
        _, body = reader.part()                                   # one drawn after the event surely started
    finally:
        reader.close()
    image = decode(body)
    h = banner_height(WIDTH)
    strip = image[-h + 2:, :, :].reshape(-1, 3).astype(int)
    red = np.all(np.abs(strip - np.array(BANNER_COLOR)) < 60, axis=1).mean()
    assert red > 0.6, f"only {red:.0%} of the banner strip is red"
    # no banner on a camera without an event
    reader = MjpegReader(served.port, "cam1")
    try:
        image = decode(reader.part()[1])
    finally:
        reader.close()
    strip = image[-h + 2:, :, :].reshape(-1, 3).astype(int)
    assert np.all(np.abs(strip - np.array(BANNER_COLOR)) < 60, axis=1).mean() < 0.2


class Viewer(threading.Thread):
    def __init__(self, port: int, camera: str, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.reader = MjpegReader(port, camera, rcvbuf=8192 if delay else 0)
        self.address = "127.0.0.1:%d" % self.reader.sock.getsockname()[1]
        self.delay = delay
        self.times: list[float] = []
        self.sizes: list[tuple[int, ...]] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                _, body = self.reader.part()
                self.times.append(time.monotonic())
                self.sizes.append(decode(body).shape)
                if self.delay:
                    time.sleep(self.delay)
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            if not self.stop.is_set():
                self.error = e

    def count_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in self.times if t0 <= t < t1)

    def close(self) -> None:
        self.stop.set()
        self.reader.close()
        if self.is_alive():
            self.join(5)


def test_fan_out_encodes_once_and_slow_viewer_skips(served: Served) -> None:
    skipped_before = served.sample("monitor_stream_frames_skipped_total", {"camera": "cam1"})
    fast = [Viewer(served.port, "cam1") for _ in range(3)]
    slow = Viewer(served.port, "cam1", delay=0.6)
    viewers = [*fast, slow]
    try:
        for v in viewers:
            assert v.reader.status == 200
            v.start()
        assert wait_until(lambda: all(v.times for v in viewers), 5)
        assert served.sample("monitor_stream_viewers", {"camera": "cam1"}) == 4
        encoder = served.web.streams.encoder("cam1")
        assert encoder is not None
        frames0 = served.app.cameras["cam1"].status()["frames"]
        enc0, t0 = encoder.encoded_frames, time.monotonic()
        time.sleep(3.0)
        enc1, t1 = encoder.encoded_frames, time.monotonic()
        frames1 = served.app.cameras["cam1"].status()["frames"]
        stats = {s["address"]: s for s in encoder.stats()}
        newest = encoder.latest()[0]
        encoded = enc1 - enc0
        seconds = t1 - t0
        # one encode per frame, not per viewer: at most the stream rate and at most the frames captured
        assert encoded <= FPS * seconds * 1.15 + 2, (encoded, seconds)
        assert encoded <= frames1 - frames0 + 1
        assert encoded >= FPS * seconds * 0.6, f"encoder too slow: {encoded} in {seconds:.1f} s"
        for v in fast:       # every fast viewer got (nearly) every encoded frame, at the stream rate
            got = v.count_between(t0, t1)
            assert got >= encoded - 3, (got, encoded)
            assert v.error is None
            assert stats[v.address]["skipped"] == 0
        got_slow = slow.count_between(t0, t1)
        assert 2 <= got_slow <= seconds / 0.6 + 2
        assert all(size == (216, WIDTH, 3) for v in viewers for size in v.sizes)
        # The slow viewer: every frame published since it joined was either sent or skipped, and it was sent
        # only what it read plus the few still in flight to it (socket buffers): it is not fed a backlog.
        s = stats[slow.address]
        print(f"slow viewer: read {len(slow.times)}, sent {s['sent']}, skipped {s['skipped']} "
              f"of {newest - s['first'] + 1} published since it joined")
        assert s["sent"] + s["skipped"] == s["number"] - s["first"] + 1     # skips are counted up to its last send
        assert newest - s["number"] <= FPS * 1.5                             # ... which is recent
        assert len(slow.times) <= s["sent"] <= len(slow.times) + 4
        assert s["skipped"] >= (s["number"] - s["first"]) / 2
        # the slow viewer never held back the pipeline either
        assert frames1 - frames0 >= 12.5 * seconds * 0.7
    finally:
        for v in viewers:
            v.close()
    assert wait_until(lambda: served.sample("monitor_stream_viewers", {"camera": "cam1"}) == 0)
    assert served.sample("monitor_stream_frames_skipped_total", {"camera": "cam1"}) - skipped_before >= s["skipped"]
    assert wait_until(lambda: served.web.streams.encoder("cam1") is None)
    assert wait_until(lambda: not encoder.is_alive())           # stopped with the last viewer


def test_no_encoder_without_viewers(served: Served) -> None:
    assert wait_until(lambda: served.web.streams.viewers == 0)
    assert served.web.streams.encoder("cam1") is None
    threads = [t.name for t in threading.enumerate() if t.name.startswith("mjpeg-")]
    assert threads == [] or wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("mjpeg-")])


def test_viewer_cap_answers_503(served: Served) -> None:
    readers = [MjpegReader(served.port, "cam1" if i % 2 else "alarm") for i in range(MAX_VIEWERS)]
    try:
        assert [r.status for r in readers] == [200] * MAX_VIEWERS
        r = request(served.port, "GET", "/stream/cam1.mjpg")
        assert r.status == 503 and "max_viewers" in r.json()["error"] and r.headers["Retry-After"]
        assert served.web.streams.viewers == MAX_VIEWERS
        readers[0].close()
        assert wait_until(lambda: served.web.streams.viewers == MAX_VIEWERS - 1)
        again = MjpegReader(served.port, "cam1")
        readers[0] = again
        assert again.status == 200 and decode(again.part()[1]).shape[1] == WIDTH
    finally:
        for r in readers:
            r.close()
    assert wait_until(lambda: served.web.streams.viewers == 0)


def test_viewer_of_a_down_camera_is_released_when_it_leaves(served: Served) -> None:
    # No frame ever comes, so the server only notices the hang-up by watching the socket.
    reader = MjpegReader(served.port, "dark")
    assert reader.status == 200
    assert wait_until(lambda: served.web.streams.viewers_of("dark") == 1)
    reader.close()
    assert wait_until(lambda: served.web.streams.viewers_of("dark") == 0, 3)
    assert served.sample("monitor_stream_viewers", {"camera": "dark"}) == 0


def test_snapshot_is_the_newest_frame_with_overlay(served: Served) -> None:
    r = request(served.port, "GET", "/snapshot/cam1.jpg")
    assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert decode(r.body).shape == (216, WIDTH, 3)
    dark = request(served.port, "GET", "/snapshot/dark.jpg")
    assert dark.status == 503 and "no" in dark.json()["error"]
    assert request(served.port, "GET", "/snapshot/nope.jpg").status == 404
    assert served.web.streams.encoder("cam1") is None            # a snapshot does not start the live encoder


def test_stop_ends_streams_promptly(tmp_path: Path, videos_dir: Path, tmp_path_factory, served: Served) -> None:
    root = tmp_path_factory.getbasetemp()
    # (`served` only orders this test after the others of the module; it runs its own daemon)
    cfg = make_config(tmp_path, demo_weights(root), [file_camera(videos_dir, "cam1")],
                      server={"stream": {"fps": 5}})
    with Served(cfg) as s:
        readers = [MjpegReader(s.port, "cam1") for _ in range(3)]
        for r in readers:
            r.part()
        t0 = time.monotonic()
        s.web.stop(5)
        assert time.monotonic() - t0 < 1.0              # the daemon gives the web server 1 s
        for r in readers:
            with pytest.raises((AssertionError, OSError, ValueError)):
                for _ in range(50):
                    r.part()
            r.close()
        assert s.web.active_requests == 0


def test_head_of_a_stream_is_just_headers(served: Served) -> None:
    r = request(served.port, "HEAD", "/stream/cam1.mjpg", timeout=3)
    assert r.status == 200 and r.body == b"" and r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
    assert wait_until(lambda: served.web.streams.viewers == 0, 2)


def test_reload_that_removes_a_camera_ends_its_stream(tmp_path: Path, videos_dir: Path, tmp_path_factory,
                                                      served: Served) -> None:
    root = tmp_path_factory.getbasetemp()
    cfg = make_config(tmp_path, demo_weights(root), [file_camera(videos_dir, "keep"), file_camera(videos_dir, "drop")],
                      server={"stream": {"fps": 5}})
    with Served(cfg) as s:
        keep, drop = MjpegReader(s.port, "keep"), MjpegReader(s.port, "drop")
        try:
            keep.part()
            drop.part()
            s.app.reload(cfg.model_copy(update={"cameras": cfg.cameras[:1]}))
            with pytest.raises((AssertionError, OSError, ValueError)):
                for _ in range(30):
                    drop.part()
            assert wait_until(lambda: s.web.streams.viewers_of("drop") == 0)
            assert request(s.port, "GET", "/stream/drop.mjpg").status == 404
            # its metric series are removed, not left behind as zeros (the viewer gauge included)
            metrics = request(s.port, "GET", "/metrics").body.decode()
            assert 'camera="drop"' not in metrics and 'camera="keep"' in metrics
            assert [c["name"] for c in request(s.port, "GET", "/api/status").json()["cameras"]] == ["keep"]
            for _ in range(3):
                keep.part()                                  # the other camera's viewer is undisturbed
        finally:
            keep.close()
            drop.close()
