"""Start and stop the real RTSP test server (../shared/tools/rtsp_serve.py, GStreamer) from tests and benchmarks.

    from testkit.rtsp import RtspServer, free_port

    with RtspServer(free_port(), ["car-detection"], minutes=1) as server:
        url = server.url("car-detection")          # rtsp://127.0.0.1:PORT/car-detection
        server.kill()                              # SIGKILL: a camera that vanishes
        server.start()                             # same port: the camera comes back

Tests usually take the `rtsp_server` fixture from conftest.py, which kills every server it made at teardown.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence, Union

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SERVE = SHARED / "tools" / "rtsp_serve.py"
VIDEOS = SHARED / "data" / "videos"
# Debian puts the GStreamer `gi` bindings into the system Python, not into the venv.
SYSTEM_PYTHON = "/usr/bin/python3"
READY_TIMEOUT = 30.0        # generous: --minutes first concatenates the file with ffmpeg

VideoArg = Union[str, Path]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def video_path(video: VideoArg) -> Path:
    """A path as given, or a name ("car-detection" / "car-detection.mp4") in ../shared/data/videos."""
    path = Path(video)
    if path.is_absolute() or path.parent != Path("."):
        candidate = path
    else:
        candidate = VIDEOS / (path.name if path.suffix else f"{path.name}.mp4")
    if not candidate.is_file():
        raise FileNotFoundError(f"test video not found: {candidate}")
    return candidate


class RtspServer:
    """One rtsp_serve.py process on 127.0.0.1:`port`, serving each video at /<file stem>.

    start() blocks until the server printed "ready"; stop() sends SIGTERM (SIGKILL if it lingers); kill() sends
    SIGKILL right away (the camera-vanishes case); pause()/resume() freeze it with SIGSTOP/SIGCONT (connections
    stay open, nothing flows: the stale-stream case); restart() is stop() + start() on the same port.
    """

    def __init__(self, port: int | None = None, videos: Sequence[VideoArg] = ("car-detection",),
                 minutes: float = 0.0) -> None:
        for needed in (SERVE, Path(SYSTEM_PYTHON)):
            if not needed.exists():
                raise FileNotFoundError(f"RTSP test server needs {needed}")
        self.port = port if port is not None else free_port()
        self.videos = [video_path(v) for v in videos]
        self.minutes = minutes
        self._proc: subprocess.Popen | None = None
        self._dir: Path | None = None

    # -- lifecycle

    def start(self, timeout: float = READY_TIMEOUT) -> "RtspServer":
        if self.running:
            raise RuntimeError(f"RTSP server on port {self.port} already running")
        # A directory of our own as TMPDIR: the server's looped copies (and the folder a SIGKILL leaves behind)
        # are removed by us, not left in /tmp.
        self._dir = Path(tempfile.mkdtemp(prefix=f"rtsp_{self.port}."))
        log = self._dir / "serve.log"
        cmd = [SYSTEM_PYTHON, str(SERVE)]
        if self.minutes:
            cmd += ["--minutes", str(self.minutes)]
        cmd += [str(self.port), *map(str, self.videos)]
        with open(log, "wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env={**os.environ, "TMPDIR": str(self._dir)}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            text = log.read_text(errors="replace")
            if "ready" in text.split():
                return self
            if self._proc.poll() is not None:
                self._cleanup()
                raise RuntimeError(f"RTSP server on port {self.port} exited ({self._proc.returncode}): {text.strip()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"RTSP server on port {self.port} not ready within {timeout:g} s: {text.strip()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit within `timeout`. No-op when not running."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)     # a paused server cannot handle SIGTERM
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL, as a camera losing power. No-op when not running."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5.0)
        self._cleanup()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but no packet flows (a hung camera or a dead network path)."""
        if self.running:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self.running:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = READY_TIMEOUT) -> "RtspServer":
        self.stop()
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- addresses

    def url(self, stem: str, credentials: str = "") -> str:
        """rtsp://127.0.0.1:PORT/<stem>; `credentials` ("user:pass") are put into the URL (the server ignores
        them) to test redaction."""
        auth = f"{credentials}@" if credentials else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}/{stem}"

    # -- context manager

    def __enter__(self) -> "RtspServer":
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
