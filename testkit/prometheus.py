"""A real Prometheus and a real Alertmanager (Debian's binaries) on 127.0.0.1 in a temp folder, for the tests that
check the shipped monitoring (monitoring/: rules, Alertmanager route, dashboard queries) against real daemons.
Each runs in a session of its own and is killed by kill() whatever happened; its log is kept in the folder."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from testkit.rtsp import free_port

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
AMTOOL = Path("/usr/bin/amtool")


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class _Server:
    """One binary serving HTTP on 127.0.0.1:port; ready once GET /-/ready answers 200."""

    name = "server"

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / f"{self.name}.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.log_path = folder / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def start(self, timeout: float = 20.0) -> "_Server":
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log}")
            try:
                if _get(self.url + "/-/ready", 2)[0] == 200:
                    return self
            except OSError:
                pass                    # not listening yet
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready within {timeout:g} s:\n{self.log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)


class Prometheus(_Server):
    """`Prometheus(folder, config).start()`; query() and alerts() through its HTTP API."""

    name = "prometheus"

    def command(self) -> list[str]:
        return [str(PROMETHEUS), f"--config.file={self.config_path}", f"--storage.tsdb.path={self.folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]

    def _api(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        status, body = _get(url)
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise AssertionError(f"{path} {params}: HTTP {status}: {doc}")
        return doc["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query at now: the vector's samples ({"metric": labels, "value": [time, "text"]})."""
        data = self._api("query", {"query": promql})
        assert data["resultType"] == "vector", data
        return data["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now (labels, state, activeAt)."""
        return self._api("alerts")["alerts"]


class Alertmanager(_Server):
    """`Alertmanager(folder, config).start()`, gossip off (no cluster port opened)."""

    name = "alertmanager"

    def command(self) -> list[str]:
        return [str(ALERTMANAGER), f"--config.file={self.config_path}", f"--storage.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="]
