"""The web tests' daemon and HTTP helpers.

`Served` runs the real monitor.daemon.Daemon (cameras on files or RTSP, inference worker, alert engine, sinks,
SQLite event store, metrics) with a monitor.web.WebServer on 127.0.0.1, port 0.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from monitor.config.loader import parse_config
from monitor.config.types import Config
from monitor.daemon import Daemon

_lock = threading.Lock()
_weights: Path | None = None


def demo_weights(tmp_root: Path) -> Path:
    """Demo weights built once per test process (6-30 s depending on load), under the session temp folder."""
    global _weights
    with _lock:
        if _weights is None or not _weights.is_file():
            from monitor.weights import demo
            path = tmp_root / "demo.pt"
            demo(path)
            _weights = path
        return _weights


def make_config(tmp: Path, weights: Path, cameras: list[dict], server: Mapping[str, Any] | None = None,
                watchlist: list[dict] | None = None, alerts: Mapping[str, Any] | None = None) -> Config:
    """A validated Config (monitor.config.parse_config) on 127.0.0.1 port 0."""
    data = {
        "server": {"host": "127.0.0.1", "port": 0, **(server or {})},
        "model": {"weights": str(weights), "threads": 2, "top_k": 3},
        "cameras": cameras,
        "watchlist": watchlist or [],
        "alerts": {"snapshots": None, **(alerts or {})},
        "events": {"database": str(tmp / "events.db")},
        "logging": {"level": "debug"},
    }
    return parse_config(data, tmp)


def wait_frames(daemon: Daemon, names: Sequence[str] | None = None, timeout: float = 15.0) -> None:
    """Block until the cameras `names` (default: all) delivered a frame and a classification result."""
    names = list(daemon.cameras) if names is None else list(names)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(daemon.cameras[n].latest() is not None and daemon.results.get(n) is not None for n in names):
            return
        time.sleep(0.05)
    raise TimeoutError("cameras delivered no frames/results in time: "
                       + json.dumps([c.status() for c in daemon.cameras.values()]))


# ---------------------------------------------------------------------------------------------------- HTTP


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.headers, data)
    finally:
        conn.close()


def raw_request(port: int, data: bytes, timeout: float = 10.0, shut: bool = False) -> bytes:
    """Send `data` as is; return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def raw_status(answer: bytes) -> int:
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 else 0


class _Dechunked(io.RawIOBase):
    """The payload of a chunked HTTP/1.1 body, strictly framed (AssertionError on a framing error)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.left = 0
        self.done = False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()
        super().close()

    def readinto(self, b: Any) -> int:
        if self.done:
            return 0
        if self.left == 0:
            line = self.raw.readline()
            if not line:
                return 0
            assert line.endswith(b"\r\n"), f"bad chunk size line {line[:40]!r}"
            self.left = int(line.split(b";")[0], 16)
            if self.left == 0:
                self.done = True
                return 0
        data = self.raw.read(min(len(b), self.left))
        if not data:
            return 0
        b[:len(data)] = data
        self.left -= len(data)
        if self.left == 0:
            assert self.raw.read(2) == b"\r\n", "chunk not followed by CRLF"
        return len(data)


class MjpegReader:
    """A client of /stream/<camera>.mjpg that parses the multipart stream strictly."""

    def __init__(self, port: int, camera: str, headers: Mapping[str, str] | None = None,
                 timeout: float = 10.0, rcvbuf: int = 0) -> None:
        """rcvbuf: a small receive buffer makes a slow reader behave like one on a slow link (on loopback the
        kernel would otherwise buffer megabytes for it)."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET /stream/{camera}.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        self.file = self.sock.makefile("rb")
        status_line = self.file.readline()
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        while True:
            line = self.file.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            self.headers[k.strip().lower()] = v.strip()
        ctype = self.headers.get("content-type", "")
        self.boundary = ctype.partition("boundary=")[2].encode() if self.status == 200 else b""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            # HTTP/1.1: the stream comes in chunks; the multipart parts are parsed from the de-chunked bytes
            self.file = io.BufferedReader(_Dechunked(self.file))

    def part(self) -> tuple[dict[str, str], bytes]:
        """The next part: (its headers, its body); AssertionError on any framing error."""
        line = self.file.readline()
        assert line == b"--" + self.boundary + b"\r\n", f"expected boundary, got {line[:80]!r}"
        headers: dict[str, str] = {}
        while True:
            line = self.file.readline()
            assert line, "stream ended inside part headers"
            if line == b"\r\n":
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers["content-length"])
        body = self.file.read(length)
        assert len(body) == length, "stream ended inside a part"
        assert self.file.read(2) == b"\r\n", "part not followed by CRLF"
        return headers, body

    def parts(self) -> Iterator[tuple[dict[str, str], bytes]]:
        while True:
            yield self.part()

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()


class Served:
    """A real Daemon with our WebServer; `with Served(config) as s:` stops both, whatever happened.

    The daemon starts without its own web server so the tests can pass WebServer options (timeouts)."""

    def __init__(self, config: Config, *, start_daemon: bool = True, wait: bool | Sequence[str] = True,
                 **server_kwargs: Any) -> None:
        """wait: True = until every camera delivered a result, a list = these cameras only, False = no wait.
        start_daemon=False serves a daemon that was built but not started (not ready)."""
        from monitor.web import WebServer
        self.app = Daemon(config)
        self.web = WebServer(self.app.web_services(), config.server.host, config.server.port, **server_kwargs)
        self._start_daemon = start_daemon
        self._wait = wait

    @property
    def port(self) -> int:
        return self.web.port

    def start(self) -> "Served":
        try:
            self.web.start()
            if self._start_daemon:
                self.start_daemon()
        except BaseException:
            self.stop()
            raise
        return self

    def start_daemon(self) -> None:
        self.app.start(web=False)
        self.app.web = self.web
        if self._wait:
            wait_frames(self.app, None if self._wait is True else self._wait)

    def stop(self) -> None:
        try:
            self.web.stop(5)
        finally:
            self.app.web = None
            self.app.stop()

    def __enter__(self) -> "Served":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        value = self.app.metrics.registry.get_sample_value(name, dict(labels or {}))
        return 0.0 if value is None else value


def file_camera(videos_dir: Path, name: str = "cam1", video: str = "car-detection", **extra: Any) -> dict:
    return {"name": name, "source": str(videos_dir / f"{video}.mp4"), "loop": True, "fps": 5, **extra}
