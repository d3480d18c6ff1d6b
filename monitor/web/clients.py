"""Who a client is for the per-client limits (connections, failed logins), and warnings rate-limited per client.

A client is its address; an IPv6 client is its /64. One IPv6 host normally holds a whole /64 (SLAAC, privacy
addresses that rotate inside it), so a limit per full IPv6 address would hand one machine 2^64 budgets; a /64
is what one site gets at the least. An IPv4-mapped IPv6 address (::ffff:a.b.c.d, from a dual-stack socket) is
its IPv4 address. The price: clients behind one NAT, one IPv6 /64 or one reverse proxy share a budget
(behind a proxy, raise server.max_connections_per_client).
"""
from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Generic, Iterator, TypeVar

V = TypeVar("V")


def client_key(host: str | None) -> str:
    """The per-client key of a peer address (as asyncio reports it); "-" when there is none (Unix socket)."""
    if not host:
        return "-"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])         # fe80::1%eth0: the zone is not the client
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ClientTable(Generic[V]):
    """A dict of at most `size` clients; the least recently used one is dropped to make room, so hostile input
    (a flood of addresses) costs bounded memory. Not thread-safe: used on the HTTP server's event loop only."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._items: OrderedDict[str, V] = OrderedDict()
        self.evicted = 0

    def get(self, key: str) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def setdefault(self, key: str, make: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            while len(self._items) >= self.size:
                self._items.popitem(last=False)
                self.evicted += 1
            value = self._items[key] = make()
        return value

    def pop(self, key: str) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


class ClientWarnings:
    """WARNING lines about clients, at most one per client per `interval` and `burst` per interval in all (a
    flood from many addresses cannot flood the log either); the lines held back are counted in the next one."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, burst: int = 20, size: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.interval = float(interval)
        self.burst = int(burst)
        self.clock = clock
        self._last: ClientTable[list[float]] = ClientTable(size)     # key -> [time of last line, held back]
        self._window = -float("inf")
        self._lines = 0
        self._held_others = 0

    def warn(self, key: str, message: str, *args: Any) -> bool:
        """Log `message % args` with the count held back for `key` since its last line; False when held back."""
        now = self.clock()
        entry = self._last.setdefault(key, lambda: [-float("inf"), 0.0])
        if now - entry[0] < self.interval:
            entry[1] += 1
            return False
        if now - self._window >= self.interval:
            self._window, self._lines = now, 0
        if self._lines >= self.burst:
            entry[1] += 1
            self._held_others += 1
            return False
        self._lines += 1
        held, entry[0], entry[1] = int(entry[1]), now, 0
        extra = ""
        if held:
            extra += f"; {held} more like it from this client since its last line"
        if self._held_others:
            extra += (f"; {self._held_others} lines about other clients held back (at most {self.burst} "
                      f"every {self.interval:g} s)")
            self._held_others = 0
        self.log.warning(message + extra, *args)
        return True
