"""glibc malloc settings of the long-running process: frame-sized blocks go back to the system when freed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# In a fresh process (the settings are process-wide): free 20 frame-sized blocks while a later one stays in use,
# as a camera does when a frame outlives the ones retrieved before it. glibc's dynamic threshold puts them on
# the heap after the first frame-sized free, where they stay resident; a fixed threshold unmaps each on free.
CHURN = """
import json, sys
from monitor.core import memory
done = memory.tune_malloc(mmap_threshold=int(sys.argv[1]))
import numpy as np

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))

frame = 1080 * 1920 * 3
np.ones(frame, np.uint8)            # one frame allocated and freed (glibc raises its threshold here)
base = rss_mb()
frames = [np.ones(frame, np.uint8) for _ in range(20)]
del frames[:-1]
print(json.dumps({"set": done, "retained_mb": rss_mb() - base}))
"""


def _churn(mmap_threshold: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", CHURN, str(mmap_threshold)], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_tuned_malloc_returns_freed_frames() -> None:
    tuned = _churn(256 * 1024)
    if not tuned["set"]:
        pytest.skip("not glibc: nothing to tune")
    assert tuned["set"] == {"arena_max": 2, "mmap_threshold": 256 * 1024}
    untuned = _churn(0)                 # 0: the threshold left to glibc (arena cap only, as before)
    assert "mmap_threshold" not in untuned["set"]
    # 19 freed frames of 6.2 MB: ~118 MB stay resident without the fixed threshold, ~none with it.
    assert untuned["retained_mb"] > 60, untuned
    assert tuned["retained_mb"] < 20, tuned


def test_exported_malloc_settings_are_left_alone() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "1048576"}
    out = subprocess.run([sys.executable, "-c", "from monitor.core.memory import tune_malloc; print(tune_malloc())"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "{}"
