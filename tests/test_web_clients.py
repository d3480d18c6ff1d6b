"""Issue 17: one client cannot lock everyone out of the HTTP port before auth.

Real sockets from two loopback addresses (a server bound to 127.0.0.1 accepts connections whose source is
127.0.0.2, ...): the attacker's sockets are bound to one address, the victim's /healthz comes from another. The
attacks hold connections without ever finishing a request: idle sockets, slowloris heads, one byte then
nothing, pipelined requests whose answers are never read. The victim's /healthz must answer at once all along;
the attacker's sockets past its cap get 503, and every held socket is closed by a deadline.
"""
from __future__ import annotations

import os
import select
import socket
import statistics
import time
from pathlib import Path
from typing import Iterator

import pytest

from monitor.web.clients import client_key
from testkit.waiting import wait_until
from tests.webapp import Served, file_camera, make_config

MAX_CONNECTIONS = 24          # reserve: 24 // 8 = 3 slots for health checks, one per client
PER_CLIENT = 8
FIRST_BYTE = 2.0              # first_byte_timeout here (5 s by default)
HEAD_TIMEOUT = 5.0
STALL = 3.0                   # request_timeout: how long a client may take nothing of its answers
SLOW_HEAD = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path, demo_weights: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("clients")
    cfg = make_config(tmp, demo_weights, [file_camera(videos_dir, "cam1")],
                      server={"max_connections": MAX_CONNECTIONS, "max_connections_per_client": PER_CLIENT,
                              "head_timeout": f"{HEAD_TIMEOUT}s"})
    # The daemon is built, not started: the port, the guard and the routes are all real; no camera is needed.
    with Served(cfg, start_daemon=False, request_timeout=STALL, first_byte_timeout=FIRST_BYTE) as s:
        yield s


def connect(src: str, port: int, rcvbuf: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((src, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def get(src: str, port: int, path: str) -> tuple[int, bytes, float]:
    """(status, whole answer, seconds) of one GET from address `src` (0 for no answer)."""
    t0 = time.monotonic()
    with connect(src, port) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    parts = data.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), data, time.monotonic() - t0


def healthz_times(src: str, port: int, n: int) -> list[float]:
    times = []
    for _ in range(n):
        status, data, seconds = get(src, port, "/healthz")
        assert status == 200 and data.endswith(b"ok\n"), data[:300]
        times.append(seconds)
    return times


def answered_at_once(socks: list[socket.socket]) -> list[bytes]:
    """What each socket that has something to read right now holds (the server answered it)."""
    ready, _, _ = select.select(socks, [], [], 0.2)
    return [s.recv(4096) for s in ready]


def refusals(served: Served) -> float:
    return served.sample("monitor_http_requests_total", {"code": "503"})


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def closed_by_server(s: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# ---------------------------------------------------------------------------------------------------- one client


@pytest.mark.parametrize("attacker,victim", [("127.0.0.2", "127.0.0.1"), ("127.0.0.1", "127.0.0.2")])
def test_one_client_at_its_cap_does_not_keep_healthz_from_another(served: Served, attacker: str,
                                                                  victim: str) -> None:
    port = served.port
    assert wait_until(lambda: served.web.connections == 0, HEAD_TIMEOUT + 2)
    baseline_fds = fds()
    before = healthz_times(victim, port, 10)
    held: list[socket.socket] = []
    extra: list[socket.socket] = []
    try:
        # slowloris heads: each holds a connection until head_timeout
        for i in range(PER_CLIENT):
            held.append(connect(attacker, port))
            held[-1].sendall(SLOW_HEAD + str(i).encode())
        assert wait_until(lambda: served.web.connections == PER_CLIENT, 3), served.web.connections
        refused0 = refusals(served)
        extra = [connect(attacker, port) for _ in range(5)]
        assert wait_until(lambda: refusals(served) == refused0 + 5, 3)
        answers = answered_at_once(extra)
        assert len(answers) == 5 and all(a.startswith(b"HTTP/1.1 503 ") and b"max_connections_per_client" in a
                                         for a in answers), answers
        assert served.web.connections == PER_CLIENT
        # the victim, meanwhile: /healthz at once, and the rest of the API too (the attacker is not at the total cap)
        during = healthz_times(victim, port, 10)
        assert get(victim, port, "/api/status")[0] == 200
        assert served.web.connections == PER_CLIENT          # the attacker's heads are all still held
        print(f"\n/healthz from {victim}: median {ms(statistics.median(before))} with no attacker, "
              f"{ms(statistics.median(during))} (max {ms(max(during))}) while {attacker} holds {PER_CLIENT} "
              f"connections (its cap) and 5 more were refused 503")
        assert max(during) < 1.0
        # the heads end with 408 at head_timeout
        t0 = time.monotonic()
        assert all(b" 408 " in closed_by_server(s, HEAD_TIMEOUT + 3) for s in held)
        assert time.monotonic() - t0 < HEAD_TIMEOUT + 2
        for s in held + extra:
            s.close()
        held, extra = [], []

        # idle sockets (nothing sent): closed silently after the first-byte deadline, long before head_timeout
        idle = [connect(attacker, port) for _ in range(PER_CLIENT)]
        held = idle
        assert wait_until(lambda: served.web.connections == PER_CLIENT, 3), served.web.connections
        t0 = time.monotonic()
        assert all(closed_by_server(s, FIRST_BYTE + 3) == b"" for s in idle)
        took = time.monotonic() - t0
        assert took < FIRST_BYTE + 1.5 < HEAD_TIMEOUT, took
        assert wait_until(lambda: served.web.connections == 0, 2)
    finally:
        for s in held + extra:
            s.close()
    assert wait_until(lambda: fds() <= baseline_fds, 3), (fds(), baseline_fds)


# ---------------------------------------------------------------------------------------------------- every slot


def _attack(kind: str, src: str, port: int) -> socket.socket:
    if kind == "pipelined":
        # answers it never reads: 300 x 18 kB of app.js against a 4 kB receive buffer
        s = connect(src, port, rcvbuf=4096)
        s.settimeout(3)
        try:
            s.sendall(b"GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 300)
        except TimeoutError:
            pass                                         # the server stopped reading: what it has is enough
        return s
    s = connect(src, port)
    if kind == "one byte":
        s.sendall(b"G")
    elif kind == "slow head":
        s.sendall(SLOW_HEAD)
    return s


@pytest.mark.parametrize("victim", ["127.0.0.1", "127.0.0.9"])
def test_health_check_gets_through_when_every_slot_is_held(served: Served, victim: str) -> None:
    """Attackers on three addresses hold every general slot (slowloris heads, one byte then nothing,
    pipelined answers never read), three more hold the health-check slots: the victim's /healthz still answers
    200 at once from the reserve (in place of an attacker's connection that sent no request), anything else from
    it is 503 until slots free up; every held socket is then closed by its deadline and the descriptors come
    back."""
    port = served.port
    web = served.web
    general = MAX_CONNECTIONS - web.health_reserve
    assert web.health_reserve == 3
    assert wait_until(lambda: web.connections == 0, HEAD_TIMEOUT + 2)
    baseline_fds = fds()
    addresses = [f"127.0.0.{i}" for i in range(1, 8) if f"127.0.0.{i}" != victim][:6]
    kinds = ["slow head", "one byte", "pipelined", "slow head"]
    socks: list[socket.socket] = []
    try:
        t0 = time.monotonic()
        for i in range(general):
            socks.append(_attack(kinds[i % len(kinds)], addresses[i // PER_CLIENT], port))
        assert wait_until(lambda: web.slots.general == general, 3), web.slots.general
        # three more attackers fill the reserve (one slot each): idle, a slow head, one byte
        socks += [_attack("idle", addresses[3], port), _attack("slow head", addresses[4], port),
                  _attack("one byte", addresses[5], port)]
        assert wait_until(lambda: web.slots.reserved == 3, 3)
        preempted = web.slots.preempted
        refused0 = refusals(served)
        more = [connect(addresses[0], port), connect(addresses[3], port)]   # at its cap; holds a reserve slot
        socks += more
        assert wait_until(lambda: refusals(served) == refused0 + 2, 3)
        answers = answered_at_once(more)
        assert sorted(b"max_connections_per_client" in a for a in answers) == [False, True], answers
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers)

        status, data, seconds = get(victim, port, "/healthz")
        assert status == 200 and data.endswith(b"ok\n"), data
        assert web.slots.preempted == preempted + 1
        times = healthz_times(victim, port, 5) + [seconds]
        status, data, _ = get(victim, port, "/api/status")
        assert status == 503 and b"only /healthz and /readyz" in data, data
        assert web.slots.general == general                  # still held by the attack
        elapsed = time.monotonic() - t0
        print(f"\n/healthz from {victim} with all {general} general slots held by 3 addresses and the "
              f"{web.health_reserve} reserved ones by 3 more: median {ms(statistics.median(times))}, "
              f"max {ms(max(times))} (attack {elapsed:.1f} s old)")
        assert max(times) < 1.0

        # every held socket is closed by a deadline: first byte, head, or taking nothing for STALL seconds
        assert wait_until(lambda: web.connections == 0, max(HEAD_TIMEOUT, STALL) + 3), \
            (web.connections, web.slots.general, web.slots.reserved)
        assert web.slots.general == web.slots.reserved == 0 and not web.slots.by_client
        assert get(victim, port, "/api/status")[0] == 200
    finally:
        for s in socks:
            s.close()
    assert wait_until(lambda: fds() <= baseline_fds, 3), (fds(), baseline_fds)


def test_pipelined_answers_never_read_are_dropped_after_the_stall_deadline(served: Served) -> None:
    """Without a deadline uvicorn waits forever to write the next answer to a client that reads nothing."""
    assert wait_until(lambda: served.web.connections == 0, HEAD_TIMEOUT + 2)
    s = _attack("pipelined", "127.0.0.2", served.port)
    try:
        assert wait_until(lambda: served.web.connections == 1 and served.web.active_requests == 1, 3)
        t0 = time.monotonic()
        assert wait_until(lambda: served.web.connections == 0, STALL + 3)
        assert time.monotonic() - t0 > STALL - 1.0           # not before it stalled
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------------- who a client is


def test_an_ipv6_client_is_its_64_and_a_mapped_ipv4_address_is_the_ipv4_one() -> None:
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff:ffff:ffff:fffe") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("::ffff:127.0.0.2") == client_key("127.0.0.2") == "127.0.0.2"
    assert client_key("127.0.0.1") != client_key("127.0.0.2")
    assert client_key(None) == "-"
