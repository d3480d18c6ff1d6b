"""Root fixtures: model weights and real frames, built once per test session."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from testkit.footage import read_video_frames

# The `daemons` fixture (stops every daemon a test started) for the daemon and fault suites.
pytest_plugins = ["tests.daemon_helpers"]


@pytest.fixture(scope="session")
def demo_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained demo artifact (`monitor weights demo`), deterministic, built once."""
    from monitor import weights

    path = tmp_path_factory.mktemp("weights") / "demo-int8.pt"
    weights.demo(path)
    return path


@pytest.fixture(scope="session")
def real_frames() -> list[np.ndarray]:
    """24 real frames, 8 from each sample video, spread over each."""
    return (read_video_frames("car-detection", 8, stride=40) + read_video_frames("bottle-detection", 8, stride=140)
            + read_video_frames("one-by-one-person-detection", 8, stride=170))
