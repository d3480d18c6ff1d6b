"""Shared set-up of the long-run scripts: the repository on sys.path (they run the scenarios of testkit/ that the
test suites run), the sample videos, and demo weights built on demand."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VIDEOS = REPO.parent / "shared" / "data" / "videos"


def weights(given: str | None, workdir: Path) -> Path:
    """--weights, else a deterministic untrained demo artifact built into `workdir` (as the tests do)."""
    if given:
        return Path(given)
    from monitor import weights as w
    path = workdir / "demo-int8.pt"
    print(f"building demo weights into {path} ...", file=sys.stderr, flush=True)
    w.demo(path)
    return path


def quiet_logging() -> None:
    """Warnings and errors of the daemon on stderr; its INFO lines (counted by the runs) stay out of the figures."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
