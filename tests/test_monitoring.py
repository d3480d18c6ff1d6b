"""The monitoring shipped in monitoring/ (issue 20): alert rules (promtool checks and unit tests), the file_sd
example and the Alertmanager route, the generated Grafana dashboard (current, and every query returns data), and
the whole chain with real parts: a real Prometheus scraping two real daemon processes (fleet nodes sharing a real
PostgreSQL, so the fleet panels have data too) through file_sd, one of them killed with SIGKILL, the node-down
alert fired by Prometheus and delivered by a real Alertmanager to a webhook receiver on 127.0.0.1."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest
import yaml

from testkit.postgres import Postgres
from testkit.process import REPO, DaemonProcess
from testkit.prometheus import ALERTMANAGER, AMTOOL, PROMETHEUS, PROMTOOL, Alertmanager, Prometheus
from testkit.waiting import wait_until
from testkit.webhook import Receiver

MONITORING = REPO / "monitoring"
RULES = MONITORING / "prometheus" / "rules.yml"
RULES_TEST = MONITORING / "prometheus" / "rules_test.yml"
PROMETHEUS_YML = MONITORING / "prometheus" / "prometheus.yml"
TARGETS = MONITORING / "prometheus" / "targets" / "monitor.json"
ALERTMANAGER_YML = MONITORING / "alertmanager" / "alertmanager.yml"
DASHBOARD_PY = MONITORING / "grafana" / "dashboard.py"
DASHBOARD_JSON = MONITORING / "grafana" / "monitor-dashboard.json"
START_TIMEOUT = 90.0      # two daemons importing torch and loading the model at once on a busy 2-core machine
NODES = ("box1", "box2")


def _need(*tools: Path) -> None:
    for tool in tools:
        if not tool.exists():
            pytest.fail(f"{tool} is not installed (apt-get install prometheus prometheus-alertmanager)",
                        pytrace=False)


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def _dashboard_module() -> ModuleType:
    """monitoring/grafana/dashboard.py is a script beside the files it writes, not part of the package."""
    spec = importlib.util.spec_from_file_location("monitor_dashboard", DASHBOARD_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _alert_names(rules: dict[str, Any]) -> set[str]:
    return {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


# ---------------------------------------------------------------------------------------------------------
# the files themselves


def test_rules_pass_promtool_check_and_cover_the_issue() -> None:
    _need(PROMTOOL)
    result = _run(PROMTOOL, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    names = _alert_names(yaml.safe_load(RULES.read_text()))
    assert {"MonitorNodeDown", "MonitorCameraNoFrames", "MonitorInferenceSlow", "MonitorFleetOutboxLag",
            "MonitorFleetLeaseFlapping", "MonitorDiskNearlyFull"} <= names, names


def test_rules_unit_tests_pass_and_test_every_alert() -> None:
    _need(PROMTOOL)
    result = _run(PROMTOOL, "test", "rules", RULES_TEST)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    tested = {case["alertname"] for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for case in test["alert_rule_test"]}
    assert tested == _alert_names(yaml.safe_load(RULES.read_text()))


def test_rules_unit_tests_catch_a_changed_rule(tmp_path: Path) -> None:
    """The unit tests can fail: a node-down rule that waits 5 minutes instead of 1, or that also judges other
    jobs' targets, is reported by promtool."""
    _need(PROMTOOL)
    (tmp_path / "rules_test.yml").write_text(RULES_TEST.read_text())
    for old, new in (("for: 1m", "for: 5m"), ('up{job="monitor"} == 0', "up == 0")):
        text = RULES.read_text()
        assert text.count(old) >= 1
        (tmp_path / "rules.yml").write_text(text.replace(old, new, 1))
        result = _run(PROMTOOL, "test", "rules", tmp_path / "rules_test.yml")
        report = result.stdout + result.stderr
        assert result.returncode != 0 and "alertname: MonitorNodeDown" in report, (old, report)


def test_prometheus_example_file_sd_and_alertmanager_route_are_valid() -> None:
    _need(PROMTOOL, AMTOOL)
    result = _run(PROMTOOL, "check", "config", PROMETHEUS_YML)
    assert result.returncode == 0, result.stdout + result.stderr
    targets = json.loads(TARGETS.read_text())
    nodes = [group["labels"]["node"] for group in targets]
    assert all(group["targets"] for group in targets) and len(nodes) == len(set(nodes)), targets
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"][0]
    assert scrape["job_name"] == "monitor"          # what the rules and the dashboard select
    result = _run(AMTOOL, "check-config", ALERTMANAGER_YML)
    assert result.returncode == 0, result.stdout + result.stderr
    # the route sends a node-down alert to the webhook receiver
    result = _run(AMTOOL, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}",
                  "--verify.receivers=monitor-webhook", "alertname=MonitorNodeDown", "severity=critical", "node=box1")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_json_is_generated_from_the_script_and_current() -> None:
    module = _dashboard_module()
    assert DASHBOARD_JSON.read_text() == module.render(), (
        "monitoring/grafana/monitor-dashboard.json is stale: run `.venv/bin/python monitoring/grafana/dashboard.py`")
    doc = json.loads(DASHBOARD_JSON.read_text())
    titles = [p["title"] for p in doc["panels"] if p["type"] != "row"]
    assert titles == ["Node up", "Cameras held", "Disk free", "Frames/s per camera", "Drops", "Inference p99",
                      "Capture to result p99", "Outbox lag", "Lease changes"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(set(ids)) == len(ids)


# ---------------------------------------------------------------------------------------------------------
# real daemons, Prometheus, Alertmanager


LOCAL_VIDEO = {"box1": "car-detection", "box2": "bottle-detection"}
FLEET_CAMERAS = {"yard": "one-by-one-person-detection", "gate": "car-detection"}
DEAD_CAMERA = "box1-dead"
# The shipped rules with shorter `for:` (the expressions and labels are the shipped ones; the shipped durations
# are covered by rules_test.yml).
FAST_FOR = {"MonitorNodeDown": "2s", "MonitorCameraNoFrames": "3s"}


def _camera(name: str, video: str, videos_dir: Path) -> dict[str, Any]:
    return {"name": name, "source": str(videos_dir / f"{video}.mp4"), "loop": True, "fps": 4}


def _daemon_config(folder: Path, weights: Path, videos_dir: Path, pg: Postgres, fleet_file: Path) -> Path:
    """A fleet node: one local camera of its own and a share of the fleet's two cameras (leases in PostgreSQL)."""
    node = folder.name
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "node": {"name": node},
        "server": {"host": "127.0.0.1", "port": 0},
        "model": {"weights": str(weights), "threads": 1},
        "cameras": [_camera(f"{node}-local", LOCAL_VIDEO[node], videos_dir)]
                   # box1 also has a camera that never delivers a frame (its file is missing): MonitorCameraNoFrames
                   + ([{"name": DEAD_CAMERA, "source": str(folder / "missing.mp4")}] if node == "box1" else []),
        "events": {"database": str(folder / "events.db")},
        "fleet": {"database": pg.dsn, "password_file": str(pg.password_file), "heartbeat": "1s",
                  "lease_time": "6s", "max_cameras": 2, "cameras_file": str(fleet_file)},
        "logging": {"level": "info"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _fast_routes(route: dict[str, Any]) -> None:
    """The shipped route tree with its waits cut to 1 s (a test cannot wait 10 s for a group)."""
    for key in ("group_wait", "group_interval"):
        route[key] = "1s"
    for child in route.get("routes", []):
        _fast_routes(child)


class Stack:
    def __init__(self, daemons: dict[str, DaemonProcess], ports: dict[str, int], prometheus: Prometheus,
                 alertmanager: Alertmanager, receiver: Receiver) -> None:
        self.daemons, self.ports = daemons, ports
        self.prometheus, self.alertmanager, self.receiver = prometheus, alertmanager, receiver


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path, videos_dir: Path) -> Iterator[Stack]:
    _need(PROMETHEUS, ALERTMANAGER)
    tmp = tmp_path_factory.mktemp("monitoring")
    t0 = time.monotonic()
    daemons: dict[str, DaemonProcess] = {}
    servers: list[Prometheus | Alertmanager] = []
    pg = Postgres()          # its own temp folder: the postgres user cannot enter pytest's
    with Receiver("ok") as receiver:
        try:
            pg.init()
            fleet_file = tmp / "fleet-cameras.yaml"
            fleet_file.write_text(yaml.safe_dump({"cameras": [_camera(name, video, videos_dir)
                                                              for name, video in FLEET_CAMERAS.items()]}))
            for node in NODES:           # both start at once: their imports and model loads overlap
                daemons[node] = DaemonProcess(_daemon_config(tmp / node, demo_weights, videos_dir, pg, fleet_file))
            ports: dict[str, int] = {}
            for node, proc in daemons.items():
                line = proc.lines[proc.started(START_TIMEOUT)]
                match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
                assert match, line
                ports[node] = int(match.group(1))
            # file_sd: one target group per node, as in monitoring/prometheus/targets/monitor.json
            targets = tmp / "targets.json"
            targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{ports[n]}"], "labels": {"node": n}}
                                           for n in NODES]))
            am_config = yaml.safe_load(ALERTMANAGER_YML.read_text())
            _fast_routes(am_config["route"])
            for rec in am_config["receivers"]:
                for hook in rec.get("webhook_configs", []):
                    hook["url"] = receiver.url
            alertmanager = Alertmanager(tmp / "alertmanager", am_config)
            servers.append(alertmanager)
            alertmanager.start()
            rules = yaml.safe_load(RULES.read_text())
            for group in rules["groups"]:
                for rule in group["rules"]:
                    rule["for"] = FAST_FOR.get(rule.get("alert", ""), rule.get("for", "0s"))
            (tmp / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
            prom_config = yaml.safe_load(PROMETHEUS_YML.read_text())
            prom_config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
            prom_config["rule_files"] = [str(tmp / "rules.yml")]
            prom_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
                f"127.0.0.1:{alertmanager.port}"]
            prom_config["scrape_configs"][0]["file_sd_configs"] = [{"files": [str(targets)]}]
            prometheus = Prometheus(tmp / "prometheus", prom_config)
            servers.append(prometheus)
            prometheus.start()
            print(f"stack ready in {time.monotonic() - t0:.1f} s (PostgreSQL, 2 daemons, Alertmanager, Prometheus)")
            yield Stack(daemons, ports, prometheus, alertmanager, receiver)
        finally:
            for server in servers:
                server.kill()
            for proc in daemons.values():
                proc.kill()
            pg.kill()


def _ready_query(expr: str) -> str:
    """A dashboard query as Grafana sends it: all nodes, and $__rate_interval at 1 s scrapes (4 scrapes, the
    least Grafana uses, plus room for a late one)."""
    return expr.replace("$node", ".*").replace("$__rate_interval", "10s")


def test_every_dashboard_query_returns_data_for_every_node(stack: Stack) -> None:
    doc = json.loads(DASHBOARD_JSON.read_text())
    queries = _dashboard_module().queries(doc)
    assert len(queries) >= 9 and any("monitor_fleet_" in expr for _, expr in queries), queries

    def missing() -> list[str]:
        wrong = []
        for title, expr in queries:
            result = stack.prometheus.query(_ready_query(expr))
            nodes = {s["metric"].get("node") for s in result if math.isfinite(float(s["value"][1]))}
            if nodes != set(NODES):
                wrong.append(f"{title}: {expr} -> {result}")
        return wrong

    # the rates and percentiles need a few scrapes of both daemons classifying
    assert wait_until(lambda: not missing(), timeout=30, interval=0.5), "\n".join(missing())
    # the per-camera panel shows each node's own camera, and each fleet camera on the node that holds it
    frames_expr = _ready_query(dict(queries)["Frames/s per camera"])

    def cameras() -> set[tuple[str, str]]:
        return {(s["metric"]["node"], s["metric"]["camera"]) for s in stack.prometheus.query(frames_expr)
                if float(s["value"][1]) > 0}

    assert wait_until(lambda: {c for _, c in cameras()} == {f"{n}-local" for n in NODES} | set(FLEET_CAMERAS),
                      timeout=20, interval=0.5), cameras()
    assert {(n, f"{n}-local") for n in NODES} <= cameras()

    def held() -> dict[str, float]:
        return {s["metric"]["node"]: float(s["value"][1])
                for s in stack.prometheus.query('monitor_fleet_cameras_held{job="monitor"}')}

    # every fleet camera held by some node (a lease may be moving between them for a heartbeat)
    assert wait_until(lambda: set(held()) == set(NODES) and sum(held().values()) == len(FLEET_CAMERAS),
                      timeout=10, interval=0.5), held()

    def frame_series() -> dict[str, list[str]]:
        by_camera: dict[str, list[str]] = {}
        for sample in stack.prometheus.query('monitor_camera_last_frame_timestamp_seconds{job="monitor"}'):
            by_camera.setdefault(sample["metric"]["camera"], []).append(sample["metric"]["node"])
        return by_camera

    # A camera that moved left no series behind on its former holder: MonitorCameraNoFrames would fire for it.
    everyone = {f"{n}-local" for n in NODES} | set(FLEET_CAMERAS) | {DEAD_CAMERA}
    assert wait_until(lambda: set(frame_series()) == everyone and all(len(v) == 1 for v in frame_series().values()),
                      timeout=10, interval=0.5), frame_series()


def _delivered(stack: Stack, alertname: str) -> list[dict[str, Any]]:
    """Firing alerts of that name the webhook received through Alertmanager so far."""
    with stack.receiver.received:
        return [a for body in stack.receiver.requests for a in body.get("alerts", [])
                if a["labels"].get("alertname") == alertname and a["status"] == "firing"]


def test_camera_without_frames_is_delivered_and_the_others_are_quiet(stack: Stack) -> None:
    def dead() -> list[dict[str, Any]]:
        return [a for a in _delivered(stack, "MonitorCameraNoFrames") if a["labels"]["camera"] == DEAD_CAMERA]

    assert wait_until(dead, timeout=30, interval=0.2), (
        f"no MonitorCameraNoFrames for {DEAD_CAMERA}; Prometheus alerts: {stack.prometheus.alerts()}")
    alert = dead()[0]
    assert alert["labels"]["node"] == "box1" and alert["labels"]["severity"] == "warning", alert
    assert alert["annotations"]["summary"] == f"camera {DEAD_CAMERA} on box1 delivers no frames"
    # the cameras delivering frames (the previous test saw all of them at work) do not fire
    firing = {a["labels"]["camera"] for a in stack.prometheus.alerts()
              if a["labels"]["alertname"] == "MonitorCameraNoFrames" and a["state"] == "firing"}
    assert firing == {DEAD_CAMERA}, firing


def test_killed_node_fires_node_down_and_alertmanager_delivers_it(stack: Stack) -> None:
    prom = stack.prometheus
    assert wait_until(lambda: len([s for s in prom.query('up{job="monitor"}') if s["value"][1] == "1"]) == 2,
                      timeout=20, interval=0.2), prom.query('up{job="monitor"}')
    assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "MonitorNodeDown"]
    t0 = time.monotonic()
    stack.daemons["box2"].kill()                 # SIGKILL: nothing of the daemon runs any more

    def delivered() -> list[dict[str, Any]]:
        return _delivered(stack, "MonitorNodeDown")

    assert wait_until(delivered, timeout=30, interval=0.1), (
        f"no MonitorNodeDown at the webhook; Prometheus alerts: {prom.alerts()}\n{stack.alertmanager.log}")
    elapsed = time.monotonic() - t0
    alerts = delivered()
    assert {a["labels"]["node"] for a in alerts} == {"box2"}, alerts       # the living node is not reported
    alert = alerts[0]
    assert alert["labels"]["instance"] == f"127.0.0.1:{stack.ports['box2']}"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == f"monitor node box2 (127.0.0.1:{stack.ports['box2']}) is down"
    print(f"SIGKILL -> MonitorNodeDown at the webhook: {elapsed:.1f} s (scrape 1 s, for: 2s, group_wait 1s)")
    # box1 is still scraped and up
    up = {s["metric"]["node"]: s["value"][1] for s in prom.query('up{job="monitor"}')}
    assert up == {"box1": "1", "box2": "0"}, up
