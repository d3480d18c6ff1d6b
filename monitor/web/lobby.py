"""The lobby: accepted connections wait here, on one selector thread, until their request head is complete.

ThreadingHTTPServer would give every accepted socket a thread at once, so a few hundred idle or trickling
clients could pin every thread. Here a connection costs a thread only once its whole request head (request
line and headers) has arrived; idle ones are closed after `head_timeout`, and the number waiting is capped
(the oldest is dropped first).
"""
from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from typing import Callable

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 65536
TICK = 0.25


class _Waiting:
    __slots__ = ("sock", "addr", "since", "buf")

    def __init__(self, sock: socket.socket, addr: tuple, since: float) -> None:
        self.sock = sock
        self.addr = addr
        self.since = since
        self.buf = bytearray()


def _head_complete(buf: bytearray) -> bool:
    # A request head ends with an empty line; clients that send bare LF are accepted by http.server too.
    return b"\r\n\r\n" in buf or b"\n\n" in buf


class Lobby:
    """`dispatch(sock, addr, head_bytes)` is called (on the lobby thread) for each complete request head;
    `reject(sock, status, reason)` answers and closes connections that never form a request."""

    def __init__(self, dispatch: Callable[[socket.socket, tuple, bytes], None],
                 reject: Callable[[socket.socket, int, str], None], head_timeout: float = 10.0,
                 max_waiting: int = 1000) -> None:
        self._dispatch = dispatch
        self._reject = reject
        self.head_timeout = head_timeout
        self.max_waiting = max_waiting
        self.dropped = 0                       # connections closed for idling or to make room
        self._sel = selectors.DefaultSelector()
        self._waiting: OrderedDict[int, _Waiting] = OrderedDict()   # by fileno, oldest first
        self._incoming: list[tuple[socket.socket, tuple]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-lobby", daemon=True)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for sock, _ in incoming:
            _close(sock)
        for w in list(self._waiting.values()):
            _close(w.sock)
        self._waiting.clear()
        self._sel.close()
        _close(self._wake_r)
        _close(self._wake_w)

    def add(self, sock: socket.socket, addr: tuple) -> None:
        """Called by the accepting thread for every new connection; never blocks."""
        if self._stop.is_set():
            _close(sock)
            return
        with self._lock:
            self._incoming.append((sock, addr))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass                                  # a wake-up byte is already pending, or we are closing

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready = self._sel.select(TICK)
            except OSError:                       # a socket closed under us; the next round drops it
                ready = []
            for key, _ in ready:
                if key.fileobj is self._wake_r:
                    self._admit()
                else:
                    self._readable(key.fd)
            self._expire(time.monotonic())

    def _admit(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
        now = time.monotonic()
        for sock, addr in incoming:
            while len(self._waiting) >= self.max_waiting:
                _, oldest = self._waiting.popitem(last=False)
                self._forget(oldest)
                _close(oldest.sock)
                self.dropped += 1
            try:
                sock.setblocking(False)
                self._sel.register(sock, selectors.EVENT_READ)
            except (OSError, ValueError):
                _close(sock)
                continue
            self._waiting[sock.fileno()] = _Waiting(sock, addr, now)

    def _readable(self, fd: int) -> None:
        w = self._waiting.get(fd)
        if w is None:
            return
        try:
            data = w.sock.recv(MAX_HEAD_BYTES + 1 - len(w.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:                              # the client went away before sending a request
            self._remove(fd)
            _close(w.sock)
            return
        w.buf += data
        if _head_complete(w.buf):
            self._remove(fd)
            self._hand_over(w)
        elif len(w.buf) > MAX_HEAD_BYTES:
            self._remove(fd)
            self._reject(w.sock, 431, f"request head larger than {MAX_HEAD_BYTES} bytes")

    def _hand_over(self, w: _Waiting) -> None:
        try:
            w.sock.setblocking(True)
            self._dispatch(w.sock, w.addr, bytes(w.buf))
        except Exception:
            log.exception("http: cannot dispatch a connection from %s", w.addr[0] if w.addr else "?")
            _close(w.sock)

    def _expire(self, now: float) -> None:
        cutoff = now - self.head_timeout
        while self._waiting:
            fd, w = next(iter(self._waiting.items()))
            if w.since > cutoff:
                break
            self._remove(fd)
            self.dropped += 1
            if w.buf:
                self._reject(w.sock, 408, "request head not complete in time")
            else:
                _close(w.sock)

    def _remove(self, fd: int) -> None:
        w = self._waiting.pop(fd, None)
        if w is not None:
            self._forget(w)

    def _forget(self, w: _Waiting) -> None:
        try:
            self._sel.unregister(w.sock)
        except (KeyError, ValueError, OSError):
            pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
