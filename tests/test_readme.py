"""README's set-up commands are what CI runs; the systemd unit verifies."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", setup)


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    run, test = commands
    assert "monitor run" in run and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, "the last step of .ci/run must be the README's test command, verbatim"


def _unit_for_this_machine(tmp_path: Path) -> Path:
    unit = (ROOT / "systemd" / "monitor.service").read_text()
    monitor = Path(sys.executable).with_name("monitor")
    assert monitor.exists(), f"console script missing: {monitor}"
    path = tmp_path / "monitor.service"
    path.write_text(unit.replace("/opt/monitor/bin/monitor", str(monitor)))
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs Debian package systemd")
def test_systemd_unit_verifies_and_is_hardened(tmp_path) -> None:
    unit = _unit_for_this_machine(tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert "monitor.service" not in verify.stderr, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                              text=True, timeout=60)
    score = float(re.search(r"Overall exposure level for monitor.service: ([0-9.]+)", security.stdout).group(1))
    print(f"\nsystemd-analyze security exposure: {score}")
    assert score <= 2.5
    text = unit.read_text()
    for needed in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "RestartPreventExitStatus=2",
                   "SupplementaryGroups=video", "StateDirectory=monitor"):
        assert needed in text


def _syscalls(names: list[str], seen: set[str]) -> set[str]:
    """systemd's syscall groups (@name) expanded, as this systemd defines them."""
    calls: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            calls.add(name)
            continue
        if name in seen:
            continue
        seen.add(name)
        out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                             timeout=60, check=True).stdout.splitlines()[1:]
        calls |= _syscalls([line.strip() for line in out if line.strip() and not line.strip().startswith("#")],
                           seen)
    return calls


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs Debian package systemd")
def test_systemd_unit_lets_capture_threads_lower_their_priority() -> None:
    """The unit's SystemCallFilter lines, combined as systemd.exec(5) says (the first line sets the default,
    later ones add or remove): the two calls of monitor/core/priority.py pass; the rest of @resources does not."""
    unit = (ROOT / "systemd" / "monitor.service").read_text()
    allowed: set[str] | None = None
    for line in unit.splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.split("=", 1)[1]
        calls = _syscalls(value.lstrip("~").split(), set())
        if allowed is None:
            assert not value.startswith("~"), "the unit's filter should start as an allow-list"
            allowed = calls
        elif value.startswith("~"):
            allowed -= calls
        else:
            allowed |= calls
    assert allowed is not None
    assert {"setpriority", "sched_setscheduler"} <= allowed
    assert not {"setrlimit", "sched_setaffinity", "sched_setattr", "nice"} & allowed
