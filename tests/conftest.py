"""Fixtures shared by every test file."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

from monitor.capture.camera import Camera
from monitor.core.metrics import Metrics
from testkit.mqtt import Mosquitto, Subscriber
from testkit.rtsp import SHARED, RtspServer, VideoArg, free_port


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared next to the repository (tools and footage); a missing folder is an error, not a skip."""
    if not SHARED.is_dir():
        pytest.fail(f"shared folder missing: {SHARED} (expected next to the repository)", pytrace=False)
    return SHARED


@pytest.fixture(scope="session")
def videos_dir(shared_dir: Path) -> Path:
    """../shared/data/videos with the Intel IoT DevKit sample videos."""
    videos = shared_dir / "data" / "videos"
    missing = [n for n in ("one-by-one-person-detection", "car-detection", "bottle-detection")
               if not (videos / f"{n}.mp4").is_file()]
    if missing:
        pytest.fail(f"sample videos missing in {videos}: {', '.join(missing)}", pytrace=False)
    return videos


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A real mosquitto on 127.0.0.1 for the tests of one module (anonymous, no ACL: every client may write every
    topic); killed after the module."""
    b = Mosquitto(free_port(), tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.kill()


@pytest.fixture
def metrics() -> Metrics:
    """A fresh Metrics on its own registry."""
    return Metrics()


@pytest.fixture
def rtsp_server(videos_dir: Path) -> Iterator[Callable[..., RtspServer]]:
    """Factory: rtsp_server(videos=("car-detection",), minutes=0, port=None) -> a started RtspServer on
    127.0.0.1. Every server it made is killed at teardown, whatever the test did."""
    servers: list[RtspServer] = []

    def make(videos: Sequence[VideoArg] = ("car-detection",), minutes: float = 0.0,
             port: int | None = None) -> RtspServer:
        server = RtspServer(port if port is not None else free_port(), videos, minutes)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def cameras() -> Iterator[list[Camera]]:
    """Cameras appended here are stopped at teardown even when the test fails."""
    made: list[Camera] = []
    yield made
    for cam in made:
        cam.stop(timeout=2.0)


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    """MQTT subscribers appended here are closed at teardown."""
    made: list[Subscriber] = []
    yield made
    for s in made:
        s.close()
