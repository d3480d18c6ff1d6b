"""monitor_disk_free_bytes / monitor_disk_size_bytes: the file systems of the folders the daemon writes, read at each
scrape (the "disk nearly full" alert of monitoring/prometheus/rules.yml reads them)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import generate_latest

from monitor.core.metrics import Metrics


def _sample(m: Metrics, name: str, folder: str) -> float | None:
    return m.registry.get_sample_value(name, {"folder": folder})


def test_free_and_size_are_those_of_the_folders_file_system(tmp_path: Path) -> None:
    folders: dict[str, Path | None] = {"events": tmp_path, "snapshots": None}
    m = Metrics()
    m.watch_disk(lambda: folders)
    usage = shutil.disk_usage(tmp_path)
    assert _sample(m, "monitor_disk_size_bytes", "events") == usage.total
    free = _sample(m, "monitor_disk_free_bytes", "events")
    assert free is not None and abs(free - usage.free) < 64 * 2**20      # other writers on the same disk meanwhile
    assert _sample(m, "monitor_disk_size_bytes", "snapshots") is None   # not configured: no series
    # read at each scrape: a folder configured later (a reload) appears, and one not made yet reports the file
    # system it will be made on
    folders["snapshots"] = tmp_path / "not" / "made" / "yet"
    assert _sample(m, "monitor_disk_size_bytes", "snapshots") == usage.total
    assert not (tmp_path / "not").exists()
    body = generate_latest(m.registry).decode()
    assert 'monitor_disk_free_bytes{folder="events"}' in body and "# TYPE monitor_disk_size_bytes gauge" in body


def test_a_different_file_system_is_told_apart(tmp_path: Path) -> None:
    """/dev/shm (tmpfs) and the temp folder are different file systems here: each folder gets its own figures."""
    shm = Path("/dev/shm")
    assert os.stat(shm).st_dev != os.stat(tmp_path).st_dev, "test needs /dev/shm on a file system of its own"
    m = Metrics()
    m.watch_disk(lambda: {"events": tmp_path, "snapshots": shm})
    assert _sample(m, "monitor_disk_size_bytes", "snapshots") == shutil.disk_usage(shm).total
    assert _sample(m, "monitor_disk_size_bytes", "events") == shutil.disk_usage(tmp_path).total
    assert shutil.disk_usage(shm).total != shutil.disk_usage(tmp_path).total
