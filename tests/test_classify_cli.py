"""`monitor classify` end to end: real frames in every image format, bad and missing files."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", "classify", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_classify_real_frames_and_bad_files(tmp_path, real_frames, demo_weights) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, ext in enumerate(("jpg", "png", "bmp", "webp")):
        assert cv2.imwrite(str(folder / f"frame{i}.{ext}"), real_frames[i * 5])
    gif = folder / "frame9.gif"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(folder / "frame1.png"), str(gif)], check=True)
    (folder / "notes.txt").write_text("not an image, and not picked from a folder")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    missing = tmp_path / "missing.png"

    result = _run(str(folder), str(broken), str(missing), "--weights", str(demo_weights), cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert str(broken) in errors[0] and "not a readable image" in errors[0]
    assert str(missing) in errors[1]
    assert "Traceback" not in result.stderr
    assert "untrained" in result.stderr  # the demo model says so
    blocks = re.findall(r"^(\S+):\n((?:  \d\. .+\n){3})", result.stdout, re.M)
    assert sorted(Path(f).name for f, _ in blocks) == ["frame0.jpg", "frame1.png", "frame2.bmp", "frame3.webp",
                                                      "frame9.gif"]
    for _, lines in blocks:
        ranks = re.findall(r"  (\d)\. (.+?)\s+(\d+\.\d\d)%", lines)
        assert [r for r, _, _ in ranks] == ["1", "2", "3"]
        probs = [float(p) for _, _, p in ranks]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.01


def test_classify_json_matches_library(tmp_path, real_frames, demo_weights) -> None:
    from monitor.inference.classifier import Classifier

    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), real_frames[0])
    result = _run(str(path), "--json", "--top-k", "5", "--weights", str(demo_weights), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"]["untrained"] is True and doc["errors"] == []
    preds = doc["results"][0]["predictions"]
    assert [p["rank"] for p in preds] == [1, 2, 3, 4, 5]
    expected = Classifier(demo_weights).classify([cv2.imread(str(path))], top_k=5)[0]
    assert [p["index"] for p in preds] == [p.index for p in expected]
    assert abs(preds[0]["probability"] - expected[0].probability) < 1e-4
