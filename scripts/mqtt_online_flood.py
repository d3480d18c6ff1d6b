"""`scripts/mqtt_online_flood.py`: what a flood of Home Assistant `online` messages makes the daemon publish, the
code before the resync limit against the code now, in one run.

Issue 17's finding: 1,316 `online` on `homeassistant/status` in 3 s made the daemon publish 16.6k messages (26 MB),
the retained snapshot JPEG included. This starts a mosquitto on 127.0.0.1 and, one after the other, the daemon as
a process (`python -m monitor run`) from a git worktree of the baseline revision and from this working tree, each
on a looping clip with a rule that fires every second or two (so a snapshot is retained), waits for the snapshot,
sends the flood and then listens for --listen seconds (the limit's interval plus 2 s: the coalesced re-publish at
the end of the interval is counted). Printed per tree: messages and bytes the daemon published meanwhile,
re-publishes of one discovery config, snapshots against the events that started meanwhile.

  .venv/bin/python scripts/mqtt_online_flood.py [--baseline REV] [--messages 1316] [--seconds 3]

--baseline defaults to the parent of the commit that added monitor/mqtt/resync.py.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _setup
import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from testkit.faults import clip, flicker_rule
from testkit.mqtt import Mosquitto, Subscriber
from testkit.process import DaemonProcess
from testkit.rtsp import free_port

LISTEN = 12.0           # seconds after the flood's start: the limit's 10 s interval + 2 s


def default_baseline() -> str:
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "monitor/mqtt/resync.py"],
                           cwd=_setup.REPO, capture_output=True, text=True, check=True).stdout.split()
    if not added:
        sys.exit("monitor/mqtt/resync.py is not committed yet: pass --baseline REV")
    return f"{added[-1]}^"


def run_one(tree: Path, name: str, broker: Mosquitto, weights: Path, video: Path, rule: dict, work: Path,
            messages: int, seconds: float) -> dict:
    prefix, ha = f"flood_{name}", f"ha_{name}"
    cfg = work / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(weights), "threads": 1},
        "cameras": [{"name": "cars", "source": str(video), "loop": True, "fps": 5}],
        "watchlist": [rule],
        "events": {"database": str(work / f"{name}-events.db")},
        "mqtt": {"port": broker.port, "topic_prefix": prefix, "discovery_prefix": ha, "client_id": f"flood-{name}"},
    }))
    sub = Subscriber(broker.port, (f"{prefix}/#", f"{ha}/#"))
    proc = DaemonProcess(cfg, cwd=tree)
    flooder = paho.Client(CallbackAPIVersion.VERSION2)
    try:
        proc.started(120)
        sub.wait(lambda m: m.topic == f"{prefix}/cars/snapshot" and len(m.payload) > 5000, timeout=60)
        time.sleep(1.0)
        flooder.connect("127.0.0.1", broker.port)
        flooder.loop_start()
        mark = sub.mark()
        t0 = time.monotonic()
        for i in range(messages):
            flooder.publish(f"{ha}/status", "online", qos=0)
            time.sleep(max(0.0, t0 + seconds * (i + 1) / messages - time.monotonic()))
        took = time.monotonic() - t0
        time.sleep(max(0.0, t0 + LISTEN - time.monotonic()))
        after = sub.messages[mark:]
    finally:
        flooder.disconnect()
        flooder.loop_stop()
        sub.close()
        try:
            proc.stop(15)
        except TimeoutError:
            pass
    ours = [m for m in after if m.topic != f"{ha}/status"]
    return {
        "received": len(after) - len(ours), "took": took, "messages": len(ours),
        "bytes": sum(len(m.payload) for m in ours),
        "config": len([m for m in ours if m.topic == f"{ha}/sensor/{prefix}_cars_label/config"]),
        "snapshots": len([m for m in ours if m.topic == f"{prefix}/cars/snapshot"]),
        "starts": len([m for m in ours if m.topic == f"{prefix}/events" and b'"kind": "start"' in m.payload]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="git revision before the limit (default: the parent of the commit that "
                                       "added monitor/mqtt/resync.py)")
    ap.add_argument("--messages", type=int, default=1316)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--weights")
    args = ap.parse_args()
    baseline = args.baseline or default_baseline()
    with tempfile.TemporaryDirectory(prefix="mqtt-flood-") as tmp:
        work = Path(tmp)
        old_tree = work / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), baseline], cwd=_setup.REPO,
                       check=True, capture_output=True)
        broker = Mosquitto(free_port(), work / "mosquitto").start()
        try:
            weights = _setup.weights(args.weights, work)
            video = clip(_setup.VIDEOS / "car-detection.mp4", work / "cars-6s.mp4", 6)
            label, min_score = flicker_rule(weights, video)
            rule = {"name": "watch", "classes": [label], "min_score": min_score, "min_frames": 1,
                    "end_after": 0.5, "cooldown": 0}
            rows = []
            for name, tree in (("before", old_tree), ("after", _setup.REPO)):
                print(f"{name}: daemon from {tree} ...", file=sys.stderr, flush=True)
                rows.append((name, run_one(tree, name, broker, weights, video, rule, work, args.messages,
                                           args.seconds)))
        finally:
            broker.kill()
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=_setup.REPO,
                           capture_output=True)
    rev = subprocess.run(["git", "rev-parse", "--short", baseline], cwd=_setup.REPO, capture_output=True,
                         text=True).stdout.strip()
    print(f"\n{args.messages} 'online' messages in {args.seconds:g} s on <discovery_prefix>/status; the daemon's "
          f"messages within {LISTEN:g} s of the flood's start (baseline {rev} vs this tree)\n")
    print(f"{'':8} {'online recv':>11} {'messages':>9} {'MB':>7} {'config re-sent':>14} {'snapshots':>9} "
          f"{'event starts':>12}")
    for name, r in rows:
        print(f"{name:8} {r['received']:>11} {r['messages']:>9} {r['bytes'] / 1e6:>7.2f} {r['config']:>14} "
              f"{r['snapshots']:>9} {r['starts']:>12}")
    before, after = rows[0][1], rows[1][1]
    print(f"\nratio before/after: {before['messages'] / max(1, after['messages']):.0f}x messages, "
          f"{before['bytes'] / max(1, after['bytes']):.0f}x bytes")


if __name__ == "__main__":
    main()
