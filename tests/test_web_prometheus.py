"""/metrics against the real tools: promtool's linter and a real Prometheus scraping the server (with auth)."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from testkit.rtsp import free_port
from tests.webapp import Served, basic, demo_weights, file_camera, make_config, request

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


def _need(tool: str) -> None:
    if not Path(tool).exists():
        pytest.fail(f"{tool} is not installed (apt-get install prometheus)", pytrace=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp()
    demo_weights(base)
    return base


def promtool_check(body: bytes) -> subprocess.CompletedProcess:
    _need(PROMTOOL)
    return subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=20)


def test_promtool_finds_nothing_to_complain_about(tmp_path: Path, videos_dir: Path, root: Path) -> None:
    cfg = make_config(tmp_path, demo_weights(root), [file_camera(videos_dir, "cam1"),
                                                     {"name": "gone", "source": str(tmp_path / "missing.mp4")}],
                      watchlist=[{"name": "always", "classes": ["dog"], "min_score": 0, "min_frames": 1}])
    with Served(cfg, wait=["cam1"]) as s:
        # touch every web collector: requests of several codes, a viewer, skipped frames
        request(s.port, "GET", "/nope")
        request(s.port, "POST", "/healthz")
        from tests.webapp import MjpegReader
        reader = MjpegReader(s.port, "cam1")
        reader.part()
        body = request(s.port, "GET", "/metrics").body
        reader.close()
    for name in (b"monitor_http_requests_total", b"monitor_stream_viewers", b"monitor_frames_captured_total",
                 b"monitor_alerts_total", b"monitor_inference_seconds_bucket", b"monitor_build_info"):
        assert name in body, name
    assert b"_created" not in body      # prometheus-client's creation-time series are not exported
    result = promtool_check(body)
    assert result.returncode == 0 and result.stdout == b"" and result.stderr == b"", (result.stdout, result.stderr)


def test_promtool_catches_a_bad_exposition() -> None:
    """The check above can fail: promtool does report a broken exposition."""
    result = promtool_check(b"# TYPE monitor_x counter\nmonitor_x 1\nmonitor_x 2\n")
    assert result.returncode != 0 or result.stdout or result.stderr


def _query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def test_prometheus_scrapes_the_server_with_basic_auth(tmp_path: Path, videos_dir: Path, root: Path) -> None:
    _need(PROMETHEUS)
    (tmp_path / "password").write_text("scrape-secret")
    cfg = make_config(tmp_path, demo_weights(root), [file_camera(videos_dir, "cam1")],
                      server={"auth": {"mode": "basic", "username": "prom",
                                       "password_file": str(tmp_path / "password"), "protect_metrics": True}})
    with Served(cfg) as s:
        assert request(s.port, "GET", "/metrics").status == 401
        assert request(s.port, "GET", "/metrics", headers=basic("prom", "scrape-secret")).status == 200
        prom_port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: monitor\n    scrape_interval: 1s\n    scrape_timeout: 1s\n"
            f"    basic_auth:\n      username: prom\n      password_file: {tmp_path / 'password'}\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{s.port}']\n")
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 25
            captured: list[dict[str, Any]] = []
            up: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                try:
                    up = _query(prom_port, 'up{job="monitor"}')
                    captured = _query(prom_port, "monitor_frames_captured_total")
                except OSError:
                    pass                    # not listening yet
                if captured and float(captured[0]["value"][1]) > 0 and up and up[0]["value"][1] == "1":
                    break
                time.sleep(0.5)
            assert up and up[0]["value"][1] == "1", f"target not up: {up}"
            assert captured, "monitor_frames_captured_total never arrived"
            sample = captured[0]
            assert sample["metric"]["camera"] == "cam1" and sample["metric"]["job"] == "monitor"
            frames_now = s.sample("monitor_frames_captured_total", {"camera": "cam1"})
            assert 0 < float(sample["value"][1]) <= frames_now
            # the scrapes themselves were authenticated and counted by code
            assert s.sample("monitor_http_requests_total", {"code": "200"}) >= 2
            series = _query(prom_port, 'monitor_http_requests_total{code="200"}')
            assert series and float(series[0]["value"][1]) >= 1
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()
            shutil.rmtree(tmp_path / "tsdb", ignore_errors=True)
