"""Keyframe sampling (issue 22): a `backend: pyav` camera sampled no faster than its stream's keyframes decodes only
the keyframes, on real RTSP cameras (GStreamer on 127.0.0.1) sending H.264 and H.265 with a 1 s GOP made by
ffmpeg at test time. Counted from the camera's own figures: pictures decoded per second, the measured keyframe
interval, what /api/status reports; a live viewer switches it back to every frame; a faster sampling rate, or
`sample: all`, decodes every frame."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from monitor.capture.camera import Camera
from monitor.config.loader import ConfigError, load_config
from monitor.config.types import CameraConfig
from monitor.core.metrics import Metrics
from testkit.rtsp import VIDEOS, RtspServer
from testkit.waiting import wait_until

FPS_IN = 25
CODECS = {"h264": ["-c:v", "libx264", "-bf", "2"], "hevc": ["-c:v", "libx265", "-x265-params", "log-level=error"]}


@pytest.fixture(scope="module")
def gop_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """30 s of real footage at 320x180, 25 fps, a keyframe every second (scene cuts off), H.264 with B-frames
    and H.265."""
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed")
    folder = tmp_path_factory.mktemp("gop")
    made = {}
    for codec, args in CODECS.items():
        out = folder / f"gop1-{codec}.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(VIDEOS / "car-detection.mp4"), "-vf", f"scale=320:180,fps={FPS_IN}", *args, "-preset", "ultrafast", "-g", str(FPS_IN),
                        "-keyint_min", str(FPS_IN), "-sc_threshold", "0", "-an", str(out)],
                       check=True, timeout=120)
        made[codec] = out
    return made


@pytest.fixture(scope="module")
def server(gop_clips: dict[str, Path]) -> Iterator[RtspServer]:
    from testkit.rtsp import free_port
    with RtspServer(free_port(), list(gop_clips.values())) as srv:
        yield srv


def up(cams: list[Camera], server: RtspServer, codec: str, metrics: Metrics, **kw: object) -> Camera:
    cam = Camera(CameraConfig(name=f"{codec}-{len(cams)}", source=server.url(f"gop1-{codec}"), backend="pyav",
                              open_timeout=5, read_timeout=4, stale_after=4, **kw), metrics)
    cams.append(cam)
    cam.start()
    return cam


def test_sampled_at_the_keyframe_rate_decodes_only_keyframes(server: RtspServer, metrics: Metrics,
                                                            cameras: list[Camera],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Both codecs at once (their cameras run side by side: half the wall time)."""
    caplog.set_level("INFO", logger="monitor.capture.camera")
    trio = {codec: (up(cameras, server, codec, metrics, fps=1), up(cameras, server, codec, metrics, fps=5),
                    up(cameras, server, codec, metrics, fps=1, sample="all")) for codec in CODECS}
    slows = [t[0] for t in trio.values()]
    assert wait_until(lambda: all(c.status()["decoding"] == "keyframes" for c in slows), 20), \
        [c.status() for c in slows]
    for slow in slows:
        assert slow.status()["keyframe_interval"] == pytest.approx(1.0, abs=0.05), slow.status()
    before = {c.name: c.status()["frames"] for c in cameras}
    time.sleep(3.0)
    decoded = {c.name: (c.status()["frames"] - before[c.name]) / 3.0 for c in cameras}
    for codec, (slow, fast, forced_all) in trio.items():
        # one picture a second instead of 25, and each of them classified (due)
        assert 0.5 <= decoded[slow.name] <= 1.7, (codec, decoded)
        assert decoded[fast.name] >= 15 and decoded[forced_all.name] >= 15, (codec, decoded)
        assert fast.status()["decoding"] == "all" and forced_all.status()["decoding"] == "all"
        assert slow.take_due() is not None           # the keyframes are the samples
        assert slow.status()["retrieved"] >= 3
        # the fallback says why, once
        why = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"camera {fast.name}: keyframe")]
        assert len(why) == 1 and "longer than the sampling interval 0.20 s" in why[0], why

    # someone watches: every frame again (from the next keyframe), then back to keyframes
    for slow in slows:
        slow.watch(4.0)
    assert wait_until(lambda: all(c.status()["decoding"] == "all" for c in slows), 3)
    before = {c.name: c.status()["frames"] for c in slows}
    time.sleep(1.5)
    assert all(c.status()["frames"] - before[c.name] >= 20 for c in slows), [c.status() for c in slows]
    assert wait_until(lambda: all(c.status()["decoding"] == "keyframes" for c in slows), 8)


def test_keyframes_needs_pyav(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cameras:\n  - name: a\n    source: rtsp://127.0.0.1/x\n    backend: opencv\n"
                    "    sample: keyframes\nwatchlist: []\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "cameras[0].sample" in str(e.value) and "backend: pyav" in str(e.value), e.value
    path.write_text(path.read_text().replace("    backend: opencv\n", ""))
    assert load_config(path).cameras[0].backend == "pyav"       # the default for URLs


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_keyframe_decoder_skips_deblocking_and_hands_back_every_frame(codec: str, tmp_path: Path) -> None:
    """PyAVCapture on a real file (320x180, 1 s GOP, deblocking on; H.264 with B-frames): every frame, then
    keyframes only, then every frame again. Against a plain decode of the same file: the keyframes-only pictures
    are the file's keyframes, decoded without the loop filter (close to the deblocked ones, not equal to them all);
    every other picture is bit-identical, none is lost at either switch (the B-frames the full decoder still held
    are handed over), and none after the way back drifts."""
    import av
    import numpy as np

    from monitor.capture.pyav_capture import PyAVCapture
    clip = tmp_path / f"deblock-{codec}.mp4"
    encoder = (["-c:v", "libx264", "-bf", "2"] if codec == "h264"
               else ["-c:v", "libx265", "-x265-params", "log-level=error:bframes=2"])
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(VIDEOS / "car-detection.mp4"), "-t", "8", "-vf",
                    f"scale=320:180,fps={FPS_IN}", *encoder, "-preset", "veryfast", "-g", str(FPS_IN),
                    "-keyint_min", str(FPS_IN), "-sc_threshold", "0", "-an", str(clip)], check=True, timeout=120)
    reference: dict[int, np.ndarray] = {}
    keyframes: set[int] = set()
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            reference[frame.pts] = frame.to_ndarray(format="gray")
            if frame.key_frame:
                keyframes.add(frame.pts)
    order = sorted(reference)

    cap = PyAVCapture(str(clip), 5.0, 5.0)
    got: list[tuple[int, bool, np.ndarray]] = []
    while cap.grab():
        got.append((cap._frame.pts, cap.skipping, cap._frame.to_ndarray(format="gray")))
        keyframe_grabs = sum(1 for _, skipping, _ in got if skipping)
        cap.keyframes_only = len(got) >= 30 and keyframe_grabs < 3
    cap.release()

    skipped = [(pts, picture) for pts, skipping, picture in got if skipping]
    keys = sorted(keyframes)
    first, last = keys.index(skipped[0][0]), keys.index(skipped[-1][0])
    assert [pts for pts, _ in skipped] == keys[first:last + 1] and len(skipped) >= 3, [pts for pts, _ in skipped]
    psnr = [10 * np.log10(255 ** 2 / max(1e-9, float(((picture.astype(float) - reference[pts]) ** 2).mean())))
            for pts, picture in skipped]
    assert min(psnr) > 35 and any(p < 99 for p in psnr), psnr       # deblocking skipped, and harmless
    full = [(pts, picture) for pts, skipping, picture in got if not skipping]
    assert last + 1 < len(keys), "the clip ended before the way back"
    expected = [pts for pts in order if pts < keys[first] or pts >= keys[last + 1]]
    assert [pts for pts, _ in full] == expected
    assert all(np.array_equal(picture, reference[pts]) for pts, picture in full)


def test_hevc_camera_sampled_at_keyframes_records_a_clip_with_its_preroll(server: RtspServer,
                                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """H.265 end to end through the real daemon: a camera decoding keyframes only (1 fps, 1 s GOP) still keeps
    every packet in its pre-roll, and an event's clip is a stream copy of the camera's HEVC (same codec and size),
    pre + event + post long within a GOP, that ffmpeg decodes to the end without an error."""
    from monitor.config.loader import parse_config
    from tests.test_clips import POST, PRE, probe, record
    from tests.webapp import Served, demo_weights
    from testkit.clips import playable

    tmp = tmp_path_factory.mktemp("hevc-clips")
    cfg = parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(demo_weights(tmp_path_factory.getbasetemp())), "threads": 1},
        "cameras": [{"name": "cam", "source": server.url("gop1-hevc"), "fps": 1}],     # backend auto: PyAV
        "clips": {"enabled": True, "pre": PRE, "post": POST, "min_free_bytes": 1,
                  "retain": {"days": 7, "max_bytes": None}},
        "events": {"database": str(tmp / "events.db")},
    }, tmp)
    with Served(cfg, wait=["cam"]) as served:
        cam = served.app.cameras["cam"]
        assert wait_until(lambda: cam.status()["decoding"] == "keyframes" and cam.packets.held_seconds() >= PRE,
                          20), (cam.status(), cam.packets.held_seconds())
        event = record(served, 2.0)
    assert event.clip_state == "complete" and event.clip, event
    path = served.app.clips.root / event.clip
    clip, source = probe(str(path)), probe(server.url("gop1-hevc"))
    assert clip["streams"][0]["codec_name"] == "hevc" and clip["streams"][0] == source["streams"][0], (clip, source)
    duration = float(clip["format"]["duration"])
    assert PRE + 2.0 + POST - 0.5 <= duration <= PRE + 2.0 + POST + 1.0 + 0.5, duration
    assert playable(path) == ""
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                             text=True, timeout=60)
    assert decoded.returncode == 0 and not decoded.stderr.strip(), decoded.stderr
