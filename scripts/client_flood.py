"""`scripts/client_flood.py`: what one client (or a few) holding sockets does to everyone else's /healthz (issue 17).

Runs the daemon as a process (`python -m monitor run`, default server settings: 256 connections) from this
checkout or from `--checkout DIR` (another worktree, e.g. the commit before a change: both in one run give a
before/after), then for each attack opens its sockets from 127.0.0.2.. (bound source addresses; the server on
127.0.0.1 accepts them) and has a victim on 127.0.0.1 ask /healthz every 0.2 s for `--seconds`:
- idle: 256 sockets from one address that send nothing (the report of issue 17);
- slowloris: 256 from one address, each a request head that never ends;
- spread: the same 256 idle sockets from 8 addresses (32 each, the default per-client cap).
Prints, per attack: how many of the attacker's sockets the server kept, how many victim checks got 200 and
503, the victim's median and worst latency, and how long the victim was locked out.

    .venv/bin/python scripts/client_flood.py [--checkout /tmp/before] [--seconds 15]
"""
from __future__ import annotations

import argparse
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

import _setup
from testkit.process import DaemonProcess

ATTACKS = {"idle": (1, b""), "slowloris": (1, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "),
           "spread": (8, b"")}
SOCKETS = 256


def healthz(port: int) -> tuple[int, float]:
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return 0, time.monotonic() - t0
    line = data.split(b"\r\n", 1)[0].split()
    return (int(line[1]) if len(line) > 1 else 0), time.monotonic() - t0


def attack(port: int, addresses: int, first: bytes, seconds: float) -> dict[str, object]:
    socks = []
    for i in range(SOCKETS):
        s = socket.socket()
        s.bind((f"127.0.0.{2 + i % addresses}", 0))
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            if first:
                s.sendall(first)
        except OSError:
            s.close()
            continue
        socks.append(s)
    time.sleep(0.3)                                  # let the server accept or refuse them all
    refused = 0
    for s in socks:
        s.setblocking(False)
        try:
            refused += s.recv(4096).startswith(b"HTTP/1.1 503")
        except BlockingIOError:
            pass
        except OSError:
            refused += 1
    checks: list[tuple[float, int, float]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        status, took = healthz(port)
        checks.append((time.monotonic() - t0, status, took))
        time.sleep(0.2)
    for s in socks:
        s.close()
    ok = [took for _, status, took in checks if status == 200]
    bad = [at for at, status, _ in checks if status != 200]
    return {"kept": len(socks) - refused, "checks": len(checks), "ok": len(ok), "not_ok": len(bad),
            "median_ms": round(statistics.median(ok) * 1000, 1) if ok else None,
            "max_ms": round(max(ok) * 1000, 1) if ok else None,
            "locked_out_s": round(bad[-1] - bad[0] + 0.2, 1) if bad else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", type=Path, default=_setup.REPO, help="the monitor checkout to run")
    ap.add_argument("--seconds", type=float, default=15.0, help="victim checks per attack, in seconds")
    ap.add_argument("--weights", help="model weights (default: demo weights built here)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="client-flood.") as tmp:
        work = Path(tmp)
        cfg = work / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({
            "server": {"port": 0}, "model": {"weights": str(_setup.weights(args.weights, work))},
            "cameras": [{"name": "cars", "source": str(_setup.VIDEOS / "car-detection.mp4"), "loop": True,
                         "fps": 1}],
            "events": {"database": str(work / "events.db")}, "logging": {"level": "info"}}))
        proc = DaemonProcess(cfg, cwd=args.checkout)
        try:
            line = proc.lines[proc.started(60)]
            port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
            rev = args.checkout.name
            print(f"checkout {args.checkout}: /healthz from 127.0.0.1 every 0.2 s for {args.seconds:g} s per attack")
            for i, (name, (addresses, first)) in enumerate(ATTACKS.items()):
                time.sleep(11 if i else 0)          # the previous attack's sockets are gone (head_timeout 10 s)
                r = attack(port, addresses, first, args.seconds)
                print(f"  {rev} {name:9} {SOCKETS} sockets from {addresses} address(es): kept {r['kept']}, "
                      f"/healthz {r['ok']}/{r['checks']} ok, median {r['median_ms']} ms, max {r['max_ms']} ms, "
                      f"locked out {r['locked_out_s']} s", flush=True)
        finally:
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
