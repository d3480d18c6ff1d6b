"""The benchmarks of this feature run and print their figures (the figures themselves go to README)."""
from __future__ import annotations

from pathlib import Path

from monitor.bench.heads_cost import heads_cost
from monitor.cli import main
from monitor.inference.classifier import Classifier


def test_bench_smoothing_prints_events_without_and_with_smoothing(demo_weights: Path, videos_dir: Path,
                                                                  capsys) -> None:
    assert main(["bench", "smoothing", "--weights", str(demo_weights), "--video", str(videos_dir / "car-detection.mp4"),
                 "--fps", "2", "--min-frames", "1", "--end-after", "2"]) == 0
    out = capsys.readouterr().out
    assert "frames sampled at 2 fps" in out and "events, median-5" in out
    rows = [line for line in out.splitlines() if "(p" in line and "|" in line]
    assert len(rows) == 6
    for line in rows:
        hit_frames, plain, smoothed = (int(c.strip()) for c in line.split("|")[1:])
        assert plain >= 1 and smoothed >= 0 and hit_frames >= plain


def test_heads_cost_is_measured_against_the_plain_step(demo_weights: Path, real_frames) -> None:
    row = heads_cost(Classifier(demo_weights), real_frames[:8], batch=2, repeat=3)
    assert row["plain_ms"] > 0 and 0 < row["added_ms"] < row["plain_ms"]
    assert row["overhead_percent"] == round(100 * row["added_ms"] / row["plain_ms"], 2) or abs(
        row["overhead_percent"] - 100 * row["added_ms"] / row["plain_ms"]) < 0.1
