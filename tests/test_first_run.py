"""A new user's first run: a fresh copy of the repository with no ../shared beside it, the README's run command
against the example config.yaml. The demo camera plays the clip shipped in the package (`source: sample`), so the
status API shows it up and classified."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.test_readme import _readme_commands

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 60.0     # interpreter + torch import + model load on a busy 2-core machine


def fresh_copy(dest: Path) -> Path:
    """The files a clone has (tracked, plus new files not ignored): no venv, weights, var/ or ../shared."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_readme_run_command_on_a_fresh_clone_shows_a_live_classified_sample_camera(tmp_path: Path,
                                                                                  demo_weights: Path) -> None:
    run = _readme_commands()[0]
    daemon_part = run.rsplit("&&", 1)[1].strip()
    assert daemon_part == ".venv/bin/monitor run -c config.yaml", run
    assert "weights demo --out weights/resnet18-int8.pt" in run       # the offline fallback used below

    clone = fresh_copy(tmp_path / "monitor")
    assert not (clone.parent / "shared").exists()
    (clone / "weights").mkdir(exist_ok=True)
    shutil.copy2(demo_weights, clone / "weights" / "resnet18-int8.pt")   # what `weights demo` wrote
    config = clone / "config.yaml"
    text = config.read_text()
    assert "\n  port: 8080" in text
    config.write_text(text.replace("\n  port: 8080", "\n  port: 0", 1))  # a free port instead of a fixed one

    log = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONPATH"] = str(clone)          # the copy's package (and its data), as `pip install -e .` there gives
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "-c", "config.yaml"], cwd=clone,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                start_new_session=True)
    try:
        port = None
        deadline = time.monotonic() + START_TIMEOUT
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"running: .*http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
            port = int(m.group(1)) if m else None
            time.sleep(0.2)
        assert port, f"no 'running' line (exit code {proc.poll()}):\n{log.read_text(errors='replace')}"

        camera: dict = {}
        status: dict = {}
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as resp:
                status = json.load(resp)
            camera = status["cameras"][0]
            if camera["state"] == "up" and camera["predictions"] and camera["classified_at"]:
                break
            time.sleep(0.2)
        text = log.read_text(errors="replace")
        assert camera.get("state") == "up" and camera["predictions"], (camera, text)
        assert camera["name"] == "driveway"
        assert Path(camera["source"]) == clone / "monitor" / "data" / "sample-cars.mp4", camera["source"]
        assert camera["classified_at"] >= time.time() - 5 and camera["fps_out"] > 0, camera   # live, not one frame
        assert (camera["width"], camera["height"]) == (640, 360)
        assert status["model"]["untrained"] is True and "UNTRAINED demo weights" in text
        assert "file not found" not in text and "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_sample_source_is_the_packaged_clip_wherever_the_config_lives(tmp_path: Path) -> None:
    """A config copied elsewhere (/etc/monitor under systemd) still finds the clip: `source: sample` names the
    package's file, not a path relative to the config. OpenCV reads it and it starts again after a seek to 0."""
    import cv2

    import monitor
    from monitor.config.loader import load_config

    etc = tmp_path / "etc" / "monitor"
    etc.mkdir(parents=True)
    (etc / "config.yaml").write_text("cameras:\n  - name: demo\n    source: sample\n    loop: true\n"
                                     "  - name: local\n    source: ./sample\n")
    config = load_config(etc / "config.yaml")
    clip = Path(config.cameras[0].source)
    assert clip == Path(monitor.__file__).parent / "data" / "sample-cars.mp4" and clip.is_file()
    assert Path(config.cameras[1].source) == etc / "sample"           # a file really named so
    assert clip.stat().st_size < 600_000                               # a few hundred KB in the package
    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    try:
        frames = 0
        while cap.read()[0]:
            frames += 1
        assert frames >= 250, frames                                   # ~24 s at 12.5 fps
        assert cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        ok, image = cap.read()
        assert ok and image.shape == (360, 640, 3)
    finally:
        cap.release()
