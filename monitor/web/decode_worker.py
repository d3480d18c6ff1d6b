"""The process that decodes uploads (started by monitor.web.decoders, run as a script: `python -I <this file>`).

It imports cv2 and numpy only (no torch, no OpenVINO, not even the monitor package): about 40 MB resident,
18 MB of it its own, 0.15 s of CPU to start. It reads one request at a time on stdin and answers on the
descriptor that was stdout (stdout itself goes to /dev/null, so that no library's chatter can corrupt the
answers; stderr too, so that a hostile file cannot fill the journal with libjpeg/libpng/libtiff warnings).

Once cv2 is imported it writes READY. Request: REQUEST header (magic, data length, imread flag, classify side,
CPU seconds, address-space bytes, network input size and resize, 0 for the decoded picture), then the data.
With an input size, the worker also makes the network's input (shorter side to `resize`, centre crop `size`:
monitor/core/resample.py, the package's one definition, loaded by path) and answers that picture (150 KB for
224x224) instead of the decoded one: the batch route's decodes then pipe 7x less back and the resize runs here,
beside the network, not in the daemon. Answer: ANSWER header (status, payload length), then the
payload: for OK, IMAGE (height, width, channels) and the uint8 pixels; for FAILED, a UTF-8 message. Before
each decode the process limits itself: RLIMIT_CPU a second past the parent's limit (the parent measures and
kills first, to the tick; this is the floor if the parent cannot) and RLIMIT_AS to what the decode was charged
plus a margin (a decode that
allocates more fails in the decoder instead of growing the machine's memory). Both limits are lifted between
decodes.
"""
from __future__ import annotations

import os
import resource
import struct
import sys

REQUEST = struct.Struct("<IQiIdQII")
ANSWER = struct.Struct("<BQ")
IMAGE = struct.Struct("<III")
MAGIC = 0x4D444543                # "CEDM"
READY = b"R"
OK, FAILED = 0, 1


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _limit(cpu_seconds: float, address_space: int) -> None:
    try:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(usage.ru_utime + usage.ru_stime + cpu_seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        if address_space:
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            soft = _vm_size() + address_space
            resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    except (OSError, ValueError):
        pass                      # a sandbox that forbids it: the parent's measurements still bound the decode


def _unlimit() -> None:
    for which in (resource.RLIMIT_AS, resource.RLIMIT_CPU):
        try:
            resource.setrlimit(which, (resource.getrlimit(which)[1],) * 2)
        except (OSError, ValueError):
            pass


def _trim() -> None:
    # Give the heap's freed pages back (a TIFF's directories, libpng's rows are many small blocks below the mmap
    # threshold): an idle worker holds what it held before the decode, not the decode's peak.
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")          # VmHWM from here on: the parent reads each decode's peak
    except OSError:
        pass


def decode(cv2, np, data: bytes, flag: int, side: int):  # noqa: ANN001 (modules passed in: imported in main)
    """BGR uint8 image at most `side` on its short side, or a str saying why there is none. Also what the daemon
    runs in-thread in the benchmark that compares the two (tests/test_upload_bombs.py)."""
    buf = np.frombuffer(data, np.uint8)
    image, failure = None, "not a readable image"
    for attempt in dict.fromkeys((flag, cv2.IMREAD_COLOR)):  # a reduced size first, then the full size
        try:
            image = cv2.imdecode(buf, attempt)
        except cv2.error as e:
            failure = f"not a readable image (the decoder failed: {str(e).strip().splitlines()[-1][:160]})"
        if image is not None:
            break
    if image is None and data[:6] in (b"GIF87a", b"GIF89a"):
        image = _first_video_frame(cv2, data)
    if image is None:
        return failure
    h, w = image.shape[:2]                                # IMREAD_COLOR*: always 8-bit BGR
    if min(h, w) > side:
        scale = side / min(h, w)
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def _resample():  # noqa: ANN202 (a module loaded by path)
    """monitor/core/resample.py, loaded by its path (this process does not import the package)."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "core", "resample.py")
    spec = importlib.util.spec_from_file_location("monitor_core_resample", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_video_frame(cv2, data: bytes):  # noqa: ANN001
    # Some OpenCV builds lack a GIF decoder in imdecode; FFmpeg reads GIFs as one-frame videos. The same as
    # capture/frames.py's helper, kept here because this process is started by path with `python -I` and imports
    # nothing but cv2 and numpy (not the package, which may not be importable from an isolated interpreter).
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".gif") as f:
        f.write(data)
        f.flush()
        cap = cv2.VideoCapture(f.name, cv2.CAP_FFMPEG)
        try:
            ok, frame = cap.read()
            return frame if ok else None
        finally:
            cap.release()


def main() -> int:
    answers = os.dup(1)           # the answers' descriptor; fd 1 (and 2) now go to /dev/null
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # SIGXCPU dumps core by default: no core files
    except (OSError, ValueError):
        pass
    import numpy as np
    import cv2
    cv2.setNumThreads(0)          # one decode is one thread: the CPU limit is the decode's, and no thread stacks
    resample = _resample()
    _write_all(answers, READY)
    while True:
        head = _read_exact(0, REQUEST.size)
        if head is None:
            return 0              # the parent closed the pipe: stop
        magic, length, flag, side, cpu_seconds, address_space, size, resize = REQUEST.unpack(head)
        if magic != MAGIC:
            return 2
        _reset_peak()             # (here, not after answering: the parent reads the peak once it has the answer)
        data = _read_exact(0, length)
        if data is None:
            return 0
        _limit(cpu_seconds, address_space)
        try:
            result = decode(cv2, np, data, flag, side)
            if size and not isinstance(result, str):
                result = resample.center_prepared(result, size, resize)
        except MemoryError:
            result = "the decoder ran out of its memory allowance"
        finally:
            _unlimit()
        del data
        _trim()                   # before answering: the parent reads the worker's size once it has the answer
        if isinstance(result, str):
            message = result.encode()
            _write_all(answers, ANSWER.pack(FAILED, len(message)) + message)
        else:
            h, w = result.shape[:2]
            pixels = memoryview(result).cast("B")
            _write_all(answers, ANSWER.pack(OK, IMAGE.size + len(pixels)) + IMAGE.pack(h, w, 3))
            _write_all(answers, pixels)
        del result


if __name__ == "__main__":
    sys.exit(main())
