"""Fleet end to end: three daemon processes, one real PostgreSQL 15, real RTSP cameras.

Each node runs one local camera (it keeps alerting while PostgreSQL is away) and shares six fleet cameras (three
RTSP streams, each opened twice). In order: the cameras spread 2/2/2 with one holder each; kill -9 of a node moves
its cameras to the others within lease time + 10 s, never two runners at a time (sampled throughout from every
node's /api/status and from PostgreSQL); PostgreSQL stopped while events fire loses and duplicates nothing; the
killed node restarts, rejoins, and the load is rebalanced without flapping. Short leases: heartbeat 1 s, lease 6 s.
"""
from __future__ import annotations

import collections
import json
import signal
import re
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import psycopg
import pytest
import yaml

from monitor.inference.classifier import Classifier
from testkit.footage import read_video_frames
from testkit.postgres import postgres  # noqa: F401  (module-scoped fixture)
from testkit.postgres import Postgres
from testkit.mqtt import Mosquitto, retained_now
from testkit.process import DaemonProcess
from testkit.rtsp import RtspServer, free_port
from testkit.waiting import wait_until

HEARTBEAT, LEASE = 1.0, 6.0
OUTAGE = 10.0           # seconds PostgreSQL stays stopped (at least)
NODES = ("n1", "n2", "n3")
STREAMS = ("car-detection", "one-by-one-person-detection", "bottle-detection")
FLEET = tuple(f"f{i}" for i in range(1, 7))
START_TIMEOUT = 60.0


class Node:
    def __init__(self, name: str, root: Path, config: Path, port: int) -> None:
        self.name, self.root, self.config, self.port = name, root, config, port
        self.proc: DaemonProcess | None = None

    def start(self) -> None:
        self.proc = DaemonProcess(self.config)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    def get(self, path: str, timeout: float = 2.0) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            return r.read()

    def running(self) -> set[str]:
        """Fleet cameras this node runs now (its /api/status)."""
        doc = json.loads(self.get("/api/status"))
        return {c["name"] for c in doc["cameras"]} & set(FLEET)

    def metric(self, name: str, camera: str | None = None) -> float | None:
        text = self.get("/metrics").decode()
        label = f'{{camera="{camera}"}}' if camera else ""
        m = re.search(rf"^{re.escape(name + label)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def local_events(self) -> dict[int, float | None]:
        conn = sqlite3.connect(f"file:{self.root / 'events.db'}?mode=ro", uri=True, timeout=5)
        try:
            return dict(conn.execute("SELECT id, ended_at FROM events"))
        finally:
            conn.close()


class Cluster:
    def __init__(self, pg: Postgres, nodes: dict[str, Node], broker: Mosquitto) -> None:
        self.broker = broker
        self.pg = pg
        self.nodes = nodes
        self.violations: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def leases(self) -> dict[str, str]:
        with psycopg.connect(self.pg.dsn, password=self.pg.password, connect_timeout=3) as conn:
            return dict(conn.execute("SELECT camera, holder FROM leases WHERE expires_at > now()").fetchall())

    def _sample(self) -> None:
        """Every 0.3 s: which node runs which fleet camera; a camera run by two nodes at once is a violation."""
        while not self._stop.wait(0.3):
            runners: dict[str, list[str]] = collections.defaultdict(list)
            for node in self.nodes.values():
                if not node.alive:
                    continue
                try:
                    for cam in node.running():
                        runners[cam].append(node.name)
                except OSError:
                    continue
            self.samples += 1
            for cam, who in runners.items():
                if len(who) > 1:
                    self.violations.append(f"{time.strftime('%X')} {cam} run by {who}")

    def availability(self) -> tuple[dict[str, str], dict[str, str]]:
        """(node -> its retained status, fleet camera -> the availability topic of its retained HA label sensor)."""
        kept = retained_now(self.broker.port, ("monitor/node/+/status", "homeassistant/sensor/+/config"))
        status = {t.split("/")[2]: m.text for t, m in kept.items() if t.startswith("monitor/node/")}
        sensors = {}
        for topic, m in kept.items():
            if topic.startswith("homeassistant/") and m.payload:
                doc = m.json()
                if doc["device"]["name"] in FLEET and doc["unique_id"].endswith("_label"):
                    sensors[doc["device"]["name"]] = (doc["availability"][0]["topic"], doc["unique_id"])
        return status, sensors

    def held(self) -> dict[str, set[str]]:
        out = {name: set() for name in self.nodes}
        for cam, holder in self.leases().items():
            out.setdefault(holder, set()).add(cam)
        return out


def watched_class(weights: Path) -> tuple[str, float]:
    """A class of the demo model that comes and goes from frame to frame on the cars video, and that score."""
    clf = Classifier(weights)
    probs = clf.probabilities(read_video_frames("car-detection", 40, stride=3), ["center"] * 40)
    index = collections.Counter(probs.argmax(axis=1).tolist()).most_common(1)[0][0]
    return clf.labels[index], float(np.median(probs[:, index]))


@pytest.fixture(scope="module")
def cluster(postgres: Postgres, demo_weights: Path, broker: Mosquitto,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("fleet")
    rtsp = RtspServer(free_port(), STREAMS).start()
    fleet_file = root / "fleet-cameras.yaml"
    fleet_file.write_text(yaml.safe_dump({"cameras": [
        {"name": name, "source": rtsp.url(STREAMS[i % 3]), "fps": 2, "stale_after": "5s"}
        for i, name in enumerate(FLEET)]}))
    nodes: dict[str, Node] = {}
    for name in NODES:
        port = free_port()
        folder = root / name
        folder.mkdir()
        doc = {
            "server": {"host": "127.0.0.1", "port": port},
            "model": {"weights": str(demo_weights)},
            "cameras": [{"name": f"local-{name}", "source": rtsp.url("car-detection"), "fps": 3}],
            "events": {"database": str(folder / "events.db")},
            "logging": {"level": "info"},
            "mqtt": {"port": broker.port, "client_id": f"monitor-{name}"},
            "node": {"name": name, "public_url": f"http://127.0.0.1:{port}"},
            "fleet": {"database": postgres.dsn, "password_file": str(postgres.password_file),
                      "heartbeat": f"{HEARTBEAT}s", "lease_time": f"{LEASE}s", "max_cameras": 6,
                      "cameras_file": str(fleet_file)},
        }
        (folder / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        nodes[name] = Node(name, folder, folder / "config.yaml", port)
    c = Cluster(postgres, nodes, broker)
    try:
        for node in nodes.values():
            node.start()
        # while the nodes load their model: the class the rule watches, added by SIGHUP (a reload keeps the
        # fleet cameras a node runs)
        label, flicker = watched_class(demo_weights)
        for node in nodes.values():
            node.proc.started(START_TIMEOUT)
        for node in nodes.values():
            doc = yaml.safe_load(node.config.read_text())
            doc["watchlist"] = [{"name": "watch", "classes": [label], "min_score": round(flicker, 4),
                                 "min_frames": 1, "end_after": "1s", "cooldown": 0}]
            node.config.write_text(yaml.safe_dump(doc, sort_keys=False))
            node.proc.send(signal.SIGHUP)
        for node in nodes.values():
            node.proc.wait_line(r"reloaded config: \d+ cameras, 1 rules", 30)
        c._thread.start()
        yield c
    finally:
        c._stop.set()
        running = [n.proc for n in nodes.values() if n.proc is not None and n.proc.proc.poll() is None]
        for proc in running:        # all at once: each hands its leases back while the others stop too
            proc.send(signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(10)
            except TimeoutError:
                proc.kill()
        rtsp.kill()


def test_cameras_spread_over_the_nodes_with_one_holder_each(cluster: Cluster) -> None:
    def spread() -> bool:
        held = cluster.held()
        return sorted(len(held[n]) for n in NODES) == [2, 2, 2]
    wait_until(spread, timeout=40, interval=0.5)
    held = cluster.held()
    for name, node in cluster.nodes.items():      # each runs what it holds, and classifies it
        wait_until(lambda: node.running() == held[name], timeout=10, interval=0.3)
        assert node.metric("monitor_fleet_cameras_held") == 2
        assert node.metric("monitor_node_info", None) is None       # labelled by node, below
        assert f'monitor_node_info{{node="{name}"}} 1.0' in node.get("/metrics").decode()
    status = json.loads(cluster.nodes["n1"].get("/api/fleet"))
    assert {n["name"] for n in status["nodes"]} == set(NODES)
    assert {c["name"]: c["holder"] for c in status["cameras"]} == cluster.leases()
    assert 'id="fleet"' in cluster.nodes["n2"].get("/").decode()
    # MQTT: availability per node; each camera's entity points at the node that runs it, its id has no node
    leases = cluster.leases()
    wait_until(lambda: cluster.availability()[0] == {n: "online" for n in NODES}, timeout=10, interval=0.5)
    wait_until(lambda: {c: a for c, (a, _) in cluster.availability()[1].items()} ==
               {c: f"monitor/node/{h}/status" for c, h in leases.items()}, timeout=10, interval=0.5)
    ids = {c: uid for c, (_, uid) in cluster.availability()[1].items()}
    assert ids == {c: f"monitor_{c}_label" for c in FLEET}
    assert cluster.violations == [], cluster.violations


def test_kill_9_moves_the_cameras_within_the_lease_time(cluster: Cluster) -> None:
    victim = cluster.nodes["n1"]
    moved = cluster.held()["n1"]
    assert len(moved) == 2
    killed_at = time.monotonic()
    victim.proc.kill()
    others = [cluster.nodes[n] for n in ("n2", "n3")]

    def classified_elsewhere(cam: str) -> bool:
        return any((n.metric("monitor_frames_classified_total", cam) or 0) > 0 for n in others)

    # The lease moves within the lease time (plus the taker's next heartbeat and a query's latency). Running the
    # camera then takes an RTSP open and a first sampled frame, which a loaded machine can stretch: that part
    # has a bound of its own, and the log of the node that should run it says why when it is missed.
    claimed: dict[str, float] = {}
    took: dict[str, float] = {}
    deadline = killed_at + LEASE + 30
    while len(took) < len(moved) and time.monotonic() < deadline:
        if len(claimed) < len(moved):
            held = cluster.held()
            for cam in moved - claimed.keys():
                if cam in held["n2"] | held["n3"]:
                    claimed[cam] = time.monotonic() - killed_at
        for cam in moved - took.keys():
            if classified_elsewhere(cam):
                took[cam] = time.monotonic() - killed_at
        time.sleep(0.2)
    holders = {cam: n for n in ("n2", "n3") for cam in cluster.held()[n]}
    logs = "\n".join(f"--- {holders.get(cam)} (holds {cam}):\n" + "\n".join(
        cluster.nodes[holders[cam]].proc.lines[-40:]) for cam in moved - took.keys() if cam in holders)
    assert claimed.keys() == moved, f"leases not taken within {LEASE + 30:g} s: {moved - claimed.keys()}\n{logs}"
    assert max(claimed.values()) <= LEASE + 2 * HEARTBEAT + 1, claimed
    assert took.keys() == moved, f"not classified elsewhere within {LEASE + 30:g} s: {moved - took.keys()}\n{logs}"
    # not before the dead node's lease could have run out (it was renewed at most a heartbeat before the kill)
    assert min(took.values()) >= LEASE - HEARTBEAT - 0.5, took
    held = cluster.held()
    assert held.get("n1", set()) == set() and len(held["n2"] | held["n3"]) == 6
    # the dead node's will says offline; its cameras' entities (same unique ids) now follow their new holder
    wait_until(lambda: cluster.availability()[0]["n1"] == "offline", timeout=10, interval=0.5)
    wait_until(lambda: {c: a for c, (a, _) in cluster.availability()[1].items()} ==
               {c: f"monitor/node/{h}/status" for c, h in cluster.leases().items()}, timeout=10, interval=0.5)
    assert cluster.violations == [], cluster.violations
    print(f"failover after kill -9: leases {sorted(round(t, 1) for t in claimed.values())} s, "
          f"classified {sorted(round(t, 1) for t in took.values())} s")


def test_postgres_outage_loses_and_duplicates_no_event(cluster: Cluster) -> None:
    live = [cluster.nodes[n] for n in ("n2", "n3")]
    before = {n.name: len(n.local_events()) for n in live}
    cluster.pg.stop()
    stopped = time.monotonic()
    try:
        # local cameras keep alerting: events committed locally while the database is away
        wait_until(lambda: all(len(n.local_events()) >= before[n.name] + 2 for n in live), timeout=20, interval=0.5)
        assert all(n.metric("monitor_fleet_db_up") == 0 for n in live)
        # the gauge follows the outbox at the replicator's next attempt (every heartbeat)
        wait_until(lambda: all((n.metric("monitor_fleet_outbox_pending") or 0) > 0 for n in live),
                   timeout=3 * HEARTBEAT + 2, interval=0.3)
        # fenced: no fleet camera runs on a node that cannot renew (before its lease can expire)
        wait_until(lambda: all(n.running() == set() for n in live), timeout=LEASE, interval=0.3)
        time.sleep(max(2.0, OUTAGE - (time.monotonic() - stopped)))
    finally:
        cluster.pg.start()
    wait_until(lambda: all(n.metric("monitor_fleet_outbox_pending") == 0 and n.metric("monitor_fleet_db_up") == 1
                           for n in live), timeout=20, interval=0.5)
    with psycopg.connect(cluster.pg.dsn, password=cluster.pg.password) as conn:
        for node in live + [cluster.nodes["n1"]]:
            local = node.local_events()
            rows = conn.execute("SELECT id, ended_at FROM events WHERE node = %s", (node.name,)).fetchall()
            remote = dict(rows)
            if node.name == "n1":       # killed: what it had replicated is there, no more, no less than once
                assert remote.keys() <= local.keys()
                continue
            lost = set(local) - set(remote)
            # an event that started in the last instant may still be on its way: the outbox said 0 above, so
            # at most what happened since
            recent = {i for i in lost if i > max(remote, default=0)}
            assert lost == recent and len(recent) <= 2, (node.name, sorted(lost))
            assert len(rows) == len(remote)         # (node, id) is the key: one row per event
            assert sum(1 for i, e in local.items() if e is not None and remote.get(i) == e) >= len(local) - 3
    # the events API of any node lists the fleet's events from PostgreSQL, every node's
    listed = json.loads(live[0].get("/api/events?scope=fleet&limit=1000"))["events"]
    assert {e["node"] for e in listed} >= {"n2", "n3"} and all(e["snapshot_url"] is None for e in listed)
    local_only = json.loads(live[0].get("/api/events?limit=1000"))["events"]
    # without scope=fleet: this node's own history, each item naming this node
    assert {e["id"] for e in local_only} <= set(live[0].local_events())
    assert {e["node"] for e in local_only} == {live[0].name}
    assert cluster.violations == [], cluster.violations


def test_restarted_node_rejoins_and_load_is_rebalanced_without_flapping(cluster: Cluster) -> None:
    node = cluster.nodes["n1"]
    node.start()
    node.proc.started(START_TIMEOUT)

    def balanced() -> bool:
        held = cluster.held()
        return sorted(len(held.get(n, ())) for n in NODES) == [2, 2, 2]
    wait_until(balanced, timeout=40, interval=0.5)
    acquired = {n: cluster.nodes[n].metric("monitor_fleet_lease_acquired_total") for n in NODES}
    time.sleep(4 * HEARTBEAT)
    assert balanced()
    assert {n: cluster.nodes[n].metric("monitor_fleet_lease_acquired_total") for n in NODES} == acquired, \
        "leases moved again after the rebalance (flapping)"
    assert cluster.violations == [], cluster.violations
    assert cluster.samples > 50
