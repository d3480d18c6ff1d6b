"""Fault injection and measurement for the reliability suites (tests/test_faults_*.py, tests/test_crash_safety.py),
the long-run scripts (scripts/, soak included):

- resources() / settle() / leaked(): threads and open fds of the process, back to a baseline or not;
- CrashWatch: exceptions escaping threads and ERROR lines, i.e. what a component dying would leave;
- HangServer, BadRtspServer (garbage after a real RTSP set-up, a cut answer, noise), HttpCloseServer;
- truncated_copy() (`head -c`), clip() (ffmpeg stream copy), FullFilesystem (a filled tmpfs);
- kill_restart_run(): the RTSP server SIGKILLed and restarted at random moments under a daemon;
- flicker_rule(), EventLog, measure() / alternate() / rate_ratios(): events that start and end all the time,
  counted from the log, and classification rates of healthy and faulty windows measured alternately;
- read_events(): the daemon's SQLite file read from outside (the daemon as a process: testkit/process.py).

Everything here is a real part: real sockets speaking (a bit of) RTSP or HTTP, real files cut as `head -c` would,
a real full filesystem. Nothing is mocked; the daemon under test cannot tell these from broken cameras and disks.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from monitor.daemon import Daemon


# ---------------------------------------------------------------------------------------------------------
# Resources: threads and open file descriptors of this process


@dataclass(frozen=True)
class Resources:
    threads: int
    fds: int
    thread_names: tuple[str, ...]
    fd_targets: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.threads} threads, {self.fds} fds"


def resources() -> Resources:
    """Live threads (threading.active_count) and open fds (/proc/self/fd) of this process."""
    names = tuple(sorted(t.name for t in threading.enumerate()))
    fd_dir = "/proc/self/fd"
    targets = []
    for fd in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:          # the fd of the listing itself, closed by now
            continue
    return Resources(threading.active_count(), len(targets), names, tuple(sorted(targets)))


def settle(baseline: Resources, timeout: float) -> Resources:
    """Poll until threads and fds are back to `baseline` (or fewer), at most `timeout` seconds; the last count.

    Camera threads blocked inside OpenCV's open/read outlive stop() by up to their open/read timeout (they are
    daemon threads that release their capture themselves), so "back to baseline" is checked with that margin."""
    deadline = time.monotonic() + timeout
    while True:
        now = resources()
        if (now.threads <= baseline.threads and now.fds <= baseline.fds) or time.monotonic() >= deadline:
            return now
        time.sleep(0.1)


def leaked(baseline: Resources, after: Resources) -> str:
    """What `after` holds beyond `baseline`, readable ('' when nothing)."""
    parts = []
    extra_threads = sorted(set(after.thread_names) - set(baseline.thread_names))
    if after.threads > baseline.threads:
        parts.append(f"threads {baseline.threads} -> {after.threads} (new: {', '.join(extra_threads) or '?'})")
    if after.fds > baseline.fds:
        extra = list(after.fd_targets)
        for t in baseline.fd_targets:
            if t in extra:
                extra.remove(t)
        parts.append(f"fds {baseline.fds} -> {after.fds} (new: {', '.join(extra[:10]) or '?'})")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Crash watch: exceptions escaping threads, errors logged by the daemon


class CrashWatch:
    """Counts what would be a crash of a component: an exception escaping any thread (threading.excepthook), and
    ERROR records or 'unexpected error' reasons logged under the `monitor` logger (every component catches and
    logs its own failures, so these are the traces of one that would otherwise have died).

    `expected_errors` are substrings of ERROR messages that the scenario provokes on purpose (e.g. a locked
    database is logged at ERROR by design); those are counted separately, not as crashes."""

    def __init__(self, expected_errors: tuple[str, ...] = ()) -> None:
        self.expected_errors = expected_errors
        self.escaped: list[str] = []
        self.errors: list[str] = []
        self.expected: list[str] = []
        self._lock = threading.Lock()
        self._old_hook: Callable[..., Any] | None = None
        watch = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                msg = record.getMessage()
                if record.levelno < logging.ERROR and "unexpected error" not in msg:
                    return
                with watch._lock:
                    if record.levelno >= logging.ERROR and any(e in msg for e in watch.expected_errors):
                        watch.expected.append(msg)
                    else:
                        watch.errors.append(f"{record.levelname} {record.name}: {msg}"
                                            + (" [with traceback]" if record.exc_info else ""))

        self._handler = _Handler(logging.DEBUG)
        self._logger = logging.getLogger("monitor")

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        with self._lock:
            self.escaped.append(f"thread {args.thread.name if args.thread else '?'}: "
                                f"{args.exc_type.__name__}: {args.exc_value}")
        if self._old_hook is not None:
            self._old_hook(args)

    @property
    def crashes(self) -> int:
        with self._lock:
            return len(self.escaped) + len(self.errors)

    def report(self) -> list[str]:
        with self._lock:
            return self.escaped + self.errors

    def __enter__(self) -> CrashWatch:
        self._old_hook = threading.excepthook
        threading.excepthook = self._hook
        self._logger.addHandler(self._handler)
        if self._logger.getEffectiveLevel() > logging.WARNING:
            raise RuntimeError("CrashWatch: the monitor logger drops warnings; it would miss what it counts")
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self._handler)
        if self._old_hook is not None:
            threading.excepthook = self._old_hook


# ---------------------------------------------------------------------------------------------------------
# Servers that misbehave


class _TcpServer:
    """A listener on 127.0.0.1:0 with one accept thread and one thread per connection (`serve(conn, n)`)."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self.accepted = threading.Event()
        self._done = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, name=f"{type(self).__name__}-{self.port}", daemon=True)

    def url(self, path: str = "stream") -> str:
        return f"rtsp://127.0.0.1:{self.port}/{path}"

    def _accept(self) -> None:
        while not self._done.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            with self._lock:
                self.connections += 1
                n = self.connections
                self._conns.append(conn)
            self.accepted.set()
            t = threading.Thread(target=self._serve_safely, args=(conn, n), daemon=True,
                                 name=f"{type(self).__name__}-{self.port}-{n}")
            self._threads.append(t)
            t.start()

    def _serve_safely(self, conn: socket.socket, n: int) -> None:
        try:
            self.serve(conn, n)
        except OSError:
            pass            # the client went away: what broken cameras see all the time

    def serve(self, conn: socket.socket, n: int) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Close every connection now (a client blocked on one gets EOF)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def start(self) -> _TcpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join(2)
        self.listener.close()
        self.release()
        for t in self._threads:
            t.join(2)

    def __enter__(self) -> _TcpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HangServer(_TcpServer):
    """Accepts and never answers: a camera hung on connect. Connections are held until release()/stop()."""

    def serve(self, conn: socket.socket, n: int) -> None:
        self._done.wait()


_SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=fault\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\na=control:track1\r\n")


class BadRtspServer(_TcpServer):
    """A TCP server on 127.0.0.1 that plays RTSP badly (seeded randomness, so runs repeat):

    - "garbage":  answers OPTIONS/DESCRIBE/SETUP/PLAY like a camera (H.264 over RTP, TCP interleaved), then
                  sends random bytes: interleaved packets with random payloads, mixed with raw random runs
    - "truncate": answers OPTIONS, sends the first half of the DESCRIBE answer, then closes the connection
    - "noise":    random bytes right after connecting, no RTSP at all
    """

    MODES = ("garbage", "truncate", "noise")

    def __init__(self, mode: str, seed: int = 0, rate: int = 256 * 1024) -> None:
        if mode not in self.MODES:
            raise ValueError(f"BadRtspServer mode must be one of {', '.join(self.MODES)} (got {mode!r})")
        super().__init__()
        self.mode = mode
        self.seed = seed
        self.rate = rate                   # bytes per second of garbage
        self.requests: list[str] = []      # RTSP methods received, in order

    def serve(self, conn: socket.socket, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        conn.settimeout(0.2)
        if self.mode == "noise":
            self._spew(conn, rng)
            return
        buf = b""
        while not self._done.is_set():
            while b"\r\n\r\n" not in buf:
                try:
                    chunk = conn.recv(4096)
                except socket.timeout:
                    if self._done.is_set():
                        return
                    continue
                if not chunk:
                    return
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method = lines[0].split(" ", 1)[0]
            cseq = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("cseq:")), "0")
            self.requests.append(method)
            reply = self._reply(method, cseq, lines[0])
            if self.mode == "truncate" and method == "DESCRIBE":
                conn.sendall(reply[: len(reply) // 2])
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
                return
            conn.sendall(reply)
            if method == "PLAY":
                self._spew(conn, rng)
                return
            if method == "TEARDOWN":
                return

    def _reply(self, method: str, cseq: str, request_line: str) -> bytes:
        head = f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n"
        body = ""
        if method == "OPTIONS":
            head += "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n"
        elif method == "DESCRIBE":
            url = request_line.split(" ")[1] if " " in request_line else self.url()
            head += f"Content-Base: {url.rstrip('/')}/\r\nContent-Type: application/sdp\r\n"
            body = _SDP
        elif method == "SETUP":
            head += "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 4711;timeout=60\r\n"
        elif method == "PLAY":
            head += "Session: 4711\r\nRange: npt=0.000-\r\n"
        else:
            head += "Session: 4711\r\n"
        if body:
            head += f"Content-Length: {len(body)}\r\n"
        return (head + "\r\n" + body).encode("latin-1")

    def _spew(self, conn: socket.socket, rng: random.Random) -> None:
        """Random bytes at `rate` until the client leaves or the server stops."""
        chunk_every = 0.02
        per_chunk = max(64, int(self.rate * chunk_every))
        seq = 0
        while not self._done.is_set():
            if self.mode == "garbage" and rng.random() < 0.7:
                # An interleaved RTP packet on channel 0: valid framing, random RTP header and H.264 payload.
                payload = bytes([0x80, 96 | (0x80 if rng.random() < 0.1 else 0)]) + seq.to_bytes(2, "big") \
                    + rng.randbytes(min(per_chunk, 1400))
                seq = (seq + 1) & 0xFFFF
                data = b"$\x00" + len(payload).to_bytes(2, "big") + payload
            else:
                data = rng.randbytes(per_chunk)
            conn.sendall(data)
            self._done.wait(chunk_every)


class HttpCloseServer(_TcpServer):
    """An HTTP 'webhook receiver' that reads the request and closes the socket without answering."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0
        self.url_http = f"http://127.0.0.1:{self.port}/hook"

    def serve(self, conn: socket.socket, n: int) -> None:
        conn.settimeout(2.0)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(4096)
            if not chunk:
                break
            buf += chunk
        self.hits += 1
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()


# ---------------------------------------------------------------------------------------------------------
# Damaged files


def truncated_copy(src: Path | str, dst: Path | str, size: int | float) -> Path:
    """The first `size` bytes of `src` (a fraction of its length if `size` < 1) into `dst`, as `head -c` does."""
    data = Path(src).read_bytes()
    n = int(len(data) * size) if isinstance(size, float) and size < 1 else int(size)
    Path(dst).write_bytes(data[:n])
    return Path(dst)


# ---------------------------------------------------------------------------------------------------------
# RTSP kill/restart


class Restartable(Protocol):
    """What the kill/restart run needs of an RTSP server (testkit.rtsp.RtspServer is one)."""

    def kill(self) -> None: ...
    def start(self) -> Any: ...


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class KillRun:
    kills: int = 0
    flaps: int = 0                                      # kills while the camera had not resumed yet
    resume_s: list[float] = field(default_factory=list)   # server ready -> first result of a frame read after it
    outage_s: list[float] = field(default_factory=list)   # kill -> that result
    reconnects: int = 0
    witness_frames: list[int] = field(default_factory=list)  # frames the other camera got classified per cycle
    not_resumed: int = 0
    schedule: list[tuple[float, float]] = field(default_factory=list)   # (up before kill, down before restart)

    def figures(self) -> dict:
        return {
            "kills": self.kills, "flaps": self.flaps, "reconnects": self.reconnects,
            "resumed": len(self.resume_s), "not_resumed": self.not_resumed,
            "resume_p50_s": round(percentile(self.resume_s, 50), 3),
            "resume_p99_s": round(percentile(self.resume_s, 99), 3),
            "resume_max_s": round(max(self.resume_s), 3) if self.resume_s else None,
            "outage_p50_s": round(percentile(self.outage_s, 50), 3),
            "outage_p99_s": round(percentile(self.outage_s, 99), 3),
            "witness_min_frames_per_cycle": min(self.witness_frames) if self.witness_frames else None,
        }


def _classified(daemon: Daemon, camera: str) -> float:
    return daemon.metrics.registry.get_sample_value("monitor_frames_classified_total", {"camera": camera}) or 0.0


def _reconnects(daemon: Daemon, camera: str) -> float:
    return daemon.metrics.registry.get_sample_value("monitor_camera_reconnects_total", {"camera": camera}) or 0.0


def wait_resumed(daemon: Daemon, camera: str, since_mono: float, timeout: float) -> float | None:
    """Monotonic time at which the first result of a frame read after `since_mono` was ready, None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = daemon.results.get(camera)
        if result is not None and result.frame.captured_mono > since_mono:
            return result.frame.captured_mono + result.latency
        time.sleep(0.01)
    return None


def kill_restart_run(daemon: Daemon, server: Restartable, camera: str, kills: int, rng: random.Random, *,
                     witness: str | None = None, up: tuple[float, float] = (0.0, 3.0),
                     down: tuple[float, float] = (0.0, 2.0), flap: float = 0.2, resume_timeout: float = 30.0,
                     on_cycle: Callable[[int, KillRun], None] | None = None) -> KillRun:
    """Kill the RTSP server under a running daemon `kills` times at random moments and restart it each time.

    A cycle: wait until `camera` classifies a frame read after the last restart (time to resume), stay up for
    U(up) seconds, SIGKILL the server, stay down U(down) seconds, restart it on the same port. With probability
    `flap` the next kill comes U(0, 1) s after the restart, before the camera resumed (a flapping camera: kills
    that land in the middle of OpenCV's RTSP handshake or of the backoff). The run ends with the camera resumed.
    `witness`, another camera of the daemon, must keep being classified through every cycle."""
    run = KillRun()
    reconnects0 = _reconnects(daemon, camera)
    ready = time.monotonic()
    killed_at: float | None = None
    must_resume = True
    for i in range(kills + 1):
        if must_resume:
            resumed = wait_resumed(daemon, camera, ready, resume_timeout)
            if resumed is None:
                run.not_resumed += 1
                status = daemon.cameras[camera].status()
                raise AssertionError(f"cycle {i}: camera {camera} not classified within {resume_timeout:g} s of "
                                     f"the server restart: {status}")
            if i > 0:
                run.resume_s.append(max(0.0, resumed - ready))
                if killed_at is not None:
                    run.outage_s.append(resumed - killed_at)
        if i == kills:
            break
        witness0 = _classified(daemon, witness) if witness else 0.0
        if must_resume:
            t_up = rng.uniform(*up)
        else:
            t_up = rng.uniform(0.0, 1.0)
            run.flaps += 1
        t_down = rng.uniform(*down)
        run.schedule.append((round(t_up, 3), round(t_down, 3)))
        time.sleep(t_up)
        server.kill()
        run.kills += 1
        if must_resume:
            killed_at = time.monotonic()
        time.sleep(t_down)
        server.start()
        ready = time.monotonic()
        if witness:
            run.witness_frames.append(int(_classified(daemon, witness) - witness0))
        must_resume = not (i < kills - 1 and rng.random() < flap)
        if on_cycle is not None:
            on_cycle(i, run)
    run.reconnects = int(_reconnects(daemon, camera) - reconnects0)
    return run


def summarize(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"p50 {percentile(values, 50):.2f} s, p99 {percentile(values, 99):.2f} s, "
            f"max {max(values):.2f} s, mean {statistics.fmean(values):.2f} s (n={len(values)})")


# ---------------------------------------------------------------------------------------------------------
# A rule that makes events start and end often on real footage with the (untrained) model in use


def flicker_rule(weights: Path | str, video: Path | str, frames: int = 75) -> tuple[str, float]:
    """(label, min_score) for a rule on `video`: the model's most frequent top-1 class on its first `frames`
    frames, and the median of that class's probability there. At that min_score the class is hit on about every
    other frame, so with min_frames 1 and a short end_after, events start and end over and over (measured on the
    footage and the weights in use, never assumed)."""
    import cv2
    import numpy as np

    from monitor.inference.classifier import Classifier

    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    images = []
    while len(images) < frames:
        ok, image = cap.read()
        if not ok:
            break
        images.append(image)
    cap.release()
    if not images:
        raise RuntimeError(f"flicker_rule: no frame could be read from {video}")
    clf = Classifier(weights)
    probs = clf.probabilities(images, ["center"] * len(images))
    index = int(np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]).argmax())
    return clf.labels[index], float(np.median(probs[:, index]))


# ---------------------------------------------------------------------------------------------------------
# Alert bookkeeping: "event N started" log lines, classification rates


class EventLog(logging.Handler):
    """Collects the ids of the alert engine's INFO lines "event N started" / "event N ended" (N is None when the
    start could not be committed). Attach with `with EventLog() as log:`; the lines are logged after the
    commit, so every id here must be a row in SQLite."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.started: list[Any] = []
        self.ended: list[Any] = []
        self._logger = logging.getLogger("monitor.alerts.engine")
        self._old_level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if msg.startswith("event %s started") and record.args:
            self.started.append(record.args[0])     # type: ignore[index]
        elif msg.startswith("event %s ended") and record.args:
            self.ended.append(record.args[0])       # type: ignore[index]

    def __enter__(self) -> EventLog:
        self._logger.addHandler(self)
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._old_level)


def counter(daemon: Daemon, name: str, **labels: str) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


def alerts_started(daemon: Daemon) -> float:
    """monitor_alerts_total summed over rules and labels (it counts event starts, committed or not)."""
    total = 0.0
    for metric in daemon.metrics.registry.collect():
        if metric.name == "monitor_alerts":
            total += sum(s.value for s in metric.samples if s.name == "monitor_alerts_total")
    return total


@dataclass
class Window:
    label: str
    seconds: float
    classified: float
    alerts: float

    @property
    def rate(self) -> float:
        return self.classified / self.seconds if self.seconds else 0.0


def measure(daemon: Daemon, camera: str, seconds: float, label: str) -> Window:
    """Frames of `camera` classified, and events started, during the next `seconds`."""
    n0, a0, t0 = _classified(daemon, camera), alerts_started(daemon), time.monotonic()
    time.sleep(seconds)
    n1, a1, t1 = _classified(daemon, camera), alerts_started(daemon), time.monotonic()
    return Window(label, t1 - t0, n1 - n0, a1 - a0)


# ---------------------------------------------------------------------------------------------------------
# A full filesystem


class FullFilesystem:
    """A tiny tmpfs mounted at `path` and filled up, so every write there fails with ENOSPC (needs root or
    CAP_SYS_ADMIN; `available()` says whether mounting works here). Directories can still be created (tmpfs
    charges them no blocks), so a writer gets as far as opening its file and fails on the write itself: the
    partial-file path. Unmounted at exit."""

    def __init__(self, path: Path | str, size: str = "256k") -> None:
        self.path = Path(path)
        self.size = size
        self.mounted = False

    @staticmethod
    def available(probe_dir: Path | str) -> str:
        """'' when a tmpfs can be mounted under `probe_dir`, else why not."""
        probe = Path(probe_dir) / ".mount-probe"
        probe.mkdir(exist_ok=True)
        try:
            import subprocess
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True,
                               text=True, timeout=10)
            if r.returncode != 0:
                return f"cannot mount a tmpfs: {r.stderr.strip() or r.returncode}"
            subprocess.run(["umount", str(probe)], check=True, timeout=10)
            return ""
        except (OSError, ValueError) as exc:
            return f"cannot mount a tmpfs: {exc}"
        finally:
            try:
                probe.rmdir()
            except OSError:
                pass

    def __enter__(self) -> FullFilesystem:
        import subprocess
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)], check=True,
                       capture_output=True, timeout=10)
        self.mounted = True
        try:
            with open(self.path / "filler", "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 4096)
        except OSError as exc:
            if exc.errno != 28:     # ENOSPC is the point; anything else is a broken set-up
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        import subprocess
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True, timeout=10)
            self.mounted = False


# ---------------------------------------------------------------------------------------------------------
# Faulty and healthy windows, alternating


@dataclass
class Fault:
    name: str
    apply: Callable[[], None]           # start the fault (e.g. daemon.reload(config with a broken sink))
    clear: Callable[[], None]           # back to the healthy set-up


SINKS = ("log", "snapshot", "webhook", "command")


def counters(daemon: Daemon) -> dict[str, float]:
    """Failure and drop counters of every sink, and the event store's write errors."""
    out = {"events_db_errors": counter(daemon, "monitor_events_db_errors_total")}
    for sink in SINKS:
        out[f"{sink}_failures"] = counter(daemon, "monitor_sink_failures_total", sink=sink)
        out[f"{sink}_dropped"] = counter(daemon, "monitor_sink_dropped_total", sink=sink)
    return out


def alternate(daemon: Daemon, camera: str, fault_list: list[Fault], seconds: float,
              settle: float = 0.5) -> tuple[list[Window], dict[str, dict[str, float]]]:
    """Windows of `seconds` each: healthy, fault 1, healthy, fault 2, ..., healthy (same camera, same length,
    measured alternately so machine noise hits both sides alike). Returns the windows and, per fault, the
    counters that moved between applying it and `settle` seconds after clearing it."""
    windows = [measure(daemon, camera, seconds, "healthy")]
    moved: dict[str, dict[str, float]] = {}
    for fault in fault_list:
        before = counters(daemon)
        fault.apply()
        time.sleep(settle)
        windows.append(measure(daemon, camera, seconds, fault.name))
        fault.clear()
        time.sleep(settle)
        after = counters(daemon)
        moved[fault.name] = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        windows.append(measure(daemon, camera, seconds, "healthy"))
    return windows, moved


def rate_ratios(windows: list[Window]) -> dict[str, float]:
    """Each faulty window's classification rate over the mean of the healthy windows on either side."""
    ratios = {}
    for i in range(1, len(windows) - 1, 2):
        healthy = (windows[i - 1].rate + windows[i + 1].rate) / 2
        ratios[windows[i].label] = windows[i].rate / healthy if healthy else 0.0
    return ratios


def clip(src: Path | str, dst: Path | str, seconds: float) -> Path:
    """The first `seconds` of a video, stream-copied (no re-encoding) with ffmpeg."""
    import subprocess
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-t", f"{seconds:g}", "-an",
                    "-c", "copy", str(dst)], check=True, timeout=60)
    return Path(dst)


# ---------------------------------------------------------------------------------------------------------
# The daemon's SQLite file read from outside (crash safety; the process itself: testkit/process.py)


def read_events(db: Path | str) -> dict[int, dict]:
    """Every row of the events table, read by a connection of our own (read-only, WAL) as any other process."""
    import sqlite3
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return {int(r["id"]): dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")}
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    finally:
        conn.close()
