"""Retrain heads in the background and swap them into the running worker (no restart, no lost frame)."""
from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.inference.heads.examples import ExamplesError
from monitor.inference.heads.head import HeadError, save_head
from monitor.inference.heads.training import train_head

if TYPE_CHECKING:
    from monitor.inference.classifier import Classifier
    from monitor.inference.heads.headset import HeadSet

log = logging.getLogger(__name__)


class HeadTrainer:
    """One thread; at most one queued or running job per head (asking again while one waits is a no-op).

    Training shares the classifier with the live worker, a few frames per inference call, so the worker's
    batches interleave with it instead of waiting for the whole training."""

    def __init__(self, classifier: Classifier, heads: HeadSet, examples: dict[str, Path],
                 frames_per_call: int = 8) -> None:
        self.classifier = classifier
        self.heads = heads
        self.examples = dict(examples)
        self.frames_per_call = frames_per_call
        self._jobs: queue.Queue[str] = queue.Queue(maxsize=64)
        self._lock = threading.Lock()
        self._state: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="head-trainer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("head trainer still training after %.1f s; abandoned", timeout)
            self._thread = None

    def request(self, name: str) -> dict[str, Any]:
        """Queue a retrain of head `name`; returns its state. KeyError for an unknown head."""
        if self.heads.get(name) is None:
            raise KeyError(f"no custom class {name!r}")
        with self._lock:
            st = self._state.get(name, {})
            if st.get("state") in ("queued", "training"):
                return dict(st)
            st = {"state": "queued", "queued_at": time.time()}
            self._state[name] = st
        try:
            self._jobs.put_nowait(name)
        except queue.Full:       # 64 distinct heads queued: cannot happen with the per-head rule; be safe
            with self._lock:
                self._state[name] = {"state": "failed", "message": "too many retrain requests queued"}
        return self.status(name)

    def status(self, name: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._state.get(name, {"state": "idle"}))

    def _set(self, name: str, **values: Any) -> None:
        with self._lock:
            self._state[name] = {**self._state.get(name, {}), **values}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                name = self._jobs.get(timeout=0.25)
            except queue.Empty:
                continue
            self._train(name)

    def _train(self, name: str) -> None:
        entry = self.heads.get(name)
        if entry is None:
            self._set(name, state="failed", message=f"no custom class {name!r}")
            return
        started = time.time()
        self._set(name, state="training", started_at=started)
        try:
            head, report = train_head(self.classifier, entry.head.name, self.examples[name], crop="full",
                                      progress=False, batch=max(1, self.frames_per_call // 4))
            save_head(head, entry.path)
            self.heads.swap(name, head)
        except (ExamplesError, HeadError, OSError, ValueError) as e:
            log.warning("retraining head %r failed: %s", name, e)
            self._set(name, state="failed", message=str(e), finished_at=time.time())
            return
        except Exception as e:  # a bug in training must not kill the thread that serves later requests
            log.exception("retraining head %r failed", name)
            self._set(name, state="failed", message=f"{type(e).__name__}: {e}", finished_at=time.time())
            return
        self._set(name, state="done", finished_at=time.time(), seconds=round(time.time() - started, 2),
                  classes=list(head.classes), examples=report.examples, accuracy=report.accuracy, message="")
        log.info("retrained head %r in %.1f s: %s examples, held-out accuracy %s; swapped in", name,
                 time.time() - started, sum(report.examples),
                 f"{report.accuracy * 100:.1f} %" if report.accuracy is not None else "n/a")
