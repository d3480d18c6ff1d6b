"""Retrain heads in the background and swap them into the running worker (no restart, no lost frame).

Guards, because retraining is reachable from the HTTP port:
  - at most one retrain of a head per `custom_classes[].retrain_interval`, counted from the end of the previous
    one that trained (a loop of requests cannot keep a core busy; refused with RetrainRefused "too_soon");
  - the trainer thread runs at the idle CPU priority (SCHED_IDLE) with 2 frames per inference call, so the live
    worker's frames go first (figures at TRAINER_PRIORITY);
  - the head file being replaced is kept as `<head>.prev` (restore() swaps it back, itself undoable);
  - a head lacking a class that a watch-list rule uses ("head:class") is never swapped in: that rule would score
    0 for ever, silently. The job ends failed naming the rule and the class; the running head and its file stay.
Messages name config keys (custom_classes[0].head), never paths: the web layer shows them to clients.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from monitor.core.priority import lower_this_thread
from monitor.inference.heads import examples as ex
from monitor.inference.heads.examples import ExamplesError
from monitor.inference.heads.head import Head, HeadError, head_bytes, load_head
from monitor.inference.heads.storage import StorageError, prev_path, storage_error, write_files
from monitor.inference.heads.training import train_head

if TYPE_CHECKING:
    from monitor.inference.classifier import Classifier
    from monitor.inference.heads.headset import HeadEntry
    from monitor.inference.heads.state import CustomState

log = logging.getLogger(__name__)

# The trainer shares the classifier (one inference at a time) with the live worker. Measured with two 5 fps cameras
# and a retrain always running (scripts/retrain_load.py, one run, windows alternating, a busy shared machine): mean
# capture-to-result 25 ms without retraining; 186 ms (7.3x) at normal priority with 8 frames per inference call
# (the old trainer); 104 ms at nice 19; 33.5 ms (1.3x) at nice 19 with 2 frames per call; 28 ms (1.1x) at
# SCHED_IDLE with 2 frames per call, retrains as fast (3.4-3.9 s each). Short calls bound how long the worker can
# wait for the lock (including while the idle-class trainer holding it is preempted); the idle class leaves the
# worker every cycle it wants, and shares only the rest with the (also idle-class) capture threads.
TRAINER_PRIORITY = "idle"
FRAMES_PER_CALL = 2


class RetrainRefused(Exception):
    """A retrain or restore that cannot be done now. `reason`: "too_soon" (retry after `retry_after` seconds),
    "busy" (a job of this head is queued or running), "missing" (no previous head), "rules" (the head would
    break a watch-list rule), "storage" (the disk refused)."""

    def __init__(self, reason: str, message: str, retry_after: float = 0.0, no_space: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
        self.no_space = no_space


def with_keys(text: str, paths: dict[Path, str]) -> str:
    """`text` with every path of `paths` (as given and resolved) replaced by its config key, longest first."""
    pairs: dict[str, str] = {}
    for path, key in paths.items():
        for form in {str(path), str(Path(path).resolve())}:
            if form and form != "/":
                pairs[form] = key
    for form in sorted(pairs, key=len, reverse=True):
        text = text.replace(form, pairs[form])
    return text


def entry_paths(entry: HeadEntry, examples: Path | None) -> dict[Path, str]:
    out = {entry.path: f"{entry.key}.head", prev_path(entry.path): f"{entry.key}.head.prev"}
    if examples is not None:
        out[examples] = f"{entry.key}.examples"
    return out


class HeadTrainer:
    """One thread; at most one queued or running job per head (asking again while one waits is a no-op).

    Training shares the classifier with the live worker, two frames per inference call, so the worker's
    batches interleave with it instead of waiting for the whole training. `current` returns the service's
    snapshot (heads, example stores, rules) at the moment of asking: a reload may replace it mid-job."""

    def __init__(self, classifier: Classifier, current: Callable[[], CustomState],
                 frames_per_call: int = FRAMES_PER_CALL,
                 priority: str = TRAINER_PRIORITY, clock: Callable[[], float] = time.monotonic) -> None:
        self.classifier = classifier
        self.current = current
        self.frames_per_call = frames_per_call
        self.priority = priority
        self.clock = clock
        self._jobs: queue.Queue[str] = queue.Queue(maxsize=64)
        self._lock = threading.Lock()
        self._files = threading.Lock()      # writing head files + swapping: a retrain's end vs a restore
        self._state: dict[str, dict[str, Any]] = {}
        self._last_end: dict[str, float] = {}   # head -> clock() at the end of its last job that trained
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

    def _entry(self, name: str) -> tuple[CustomState, HeadEntry]:
        state = self.current()
        entry = state.heads.get(name)
        if entry is None:
            raise KeyError(f"no custom class {name!r} (configured: {', '.join(state.heads.names()) or 'none'})")
        return state, entry

    def request(self, name: str) -> dict[str, Any]:
        """Queue a retrain of head `name`; returns its state. KeyError for an unknown head, RetrainRefused
        ("too_soon") within custom_classes[].retrain_interval of the end of its previous retrain."""
        _, entry = self._entry(name)
        with self._lock:
            st = self._state.get(name, {})
            if st.get("state") in ("queued", "training"):
                return dict(st)
            wait = self._last_end.get(name, -math.inf) + entry.retrain_interval - self.clock()
            if wait > 0:
                raise RetrainRefused(
                    "too_soon", f"custom class {name!r} was retrained "
                    f"{entry.retrain_interval - wait:.0f} s ago; {entry.key}.retrain_interval allows one retrain "
                    f"every {entry.retrain_interval:g} s: try again in {math.ceil(wait)} s", retry_after=wait)
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
        got = lower_this_thread(self.priority)
        log.debug("head trainer runs at CPU priority %s", got)
        while not self._stop.is_set():
            try:
                name = self._jobs.get(timeout=0.25)
            except queue.Empty:
                continue
            self._train(name)

    def _fail(self, name: str, message: str) -> None:
        log.warning("retraining head %r failed: %s", name, message)
        self._set(name, state="failed", message=message, finished_at=time.time())

    def _train(self, name: str) -> None:
        try:
            state, entry = self._entry(name)
        except KeyError as e:
            self._fail(name, str(e).strip("'\""))
            return
        store = state.stores.get(name)
        folder = store.root if store is not None else None
        keys = entry_paths(entry, folder)
        if folder is None:
            self._fail(name, f"no examples folder for custom class {name!r}")
            return
        # Refused before any work: the classes a retrain would learn are the example folder's sub-folders.
        try:
            classes = tuple(s.name for s in ex.scan(folder))
        except ExamplesError as e:
            self._fail(name, with_keys(str(e), keys))
            return
        except OSError as e:
            self._fail(name, str(storage_error(e, "read the examples", f"{entry.key}.examples")))
            return
        broken = state.heads.rules_broken_by(name, classes, state.rules)
        if broken:
            self._fail(name, "not retrained, the running head is unchanged: " + "; ".join(broken))
            return
        started = time.time()
        self._set(name, state="training", started_at=started, message="")
        try:
            head, report = train_head(self.classifier, entry.head.name, folder, crop="full",
                                      progress=False, frames_per_call=self.frames_per_call)
            self._swap_in(name, head)
        except RetrainRefused as e:
            self._fail(name, str(e))
            return
        except (ExamplesError, HeadError, OSError, ValueError) as e:
            self._fail(name, with_keys(str(e), keys))
            return
        except Exception as e:  # a bug in training must not kill the thread that serves later requests
            log.exception("retraining head %r failed", name)
            self._set(name, state="failed", message=with_keys(f"{type(e).__name__}: {e}", keys),
                      finished_at=time.time())
            return
        finally:
            with self._lock:
                self._last_end[name] = self.clock()
        self._set(name, state="done", finished_at=time.time(), seconds=round(time.time() - started, 2),
                  classes=list(head.classes), examples=report.examples, accuracy=report.accuracy, message="")
        log.info("retrained head %r in %.1f s: %s examples, held-out accuracy %s; swapped in (the previous head "
                 "is kept as %s.prev)", name, time.time() - started, sum(report.examples),
                 f"{report.accuracy * 100:.1f} %" if report.accuracy is not None else "n/a", entry.path.name)

    def _swap_in(self, name: str, head: Head) -> None:
        """Check the trained head against the rules as they are now (a reload may have changed them), keep the
        file it replaces as .prev, write it, swap it into the running HeadSet. Nothing changes on refusal."""
        with self._files:
            state, entry = self._entry(name)
            broken = state.heads.rules_broken_by(name, head.classes, state.rules)
            if broken:
                raise RetrainRefused("rules", "not swapped in, the running head is unchanged: " + "; ".join(broken))
            _install(entry, head_bytes(head))
            state.heads.swap(name, replace(head, path=entry.path))

    def restore(self, name: str) -> dict[str, Any]:
        """Swap `<head>.prev` back in (the current file becomes the new .prev, so a restore is undoable)."""
        _, entry = self._entry(name)
        with self._lock:
            if self._state.get(name, {}).get("state") in ("queued", "training"):
                raise RetrainRefused("busy", f"a retrain of custom class {name!r} is "
                                     f"{self._state[name]['state']}; restore once it has ended")
        with self._files:
            state, entry = self._entry(name)
            prev = prev_path(entry.path)
            key = f"{entry.key}.head"
            if not prev.is_file():
                raise RetrainRefused("missing", f"no previous head of custom class {name!r} to restore ({key}.prev "
                                     f"is kept by a retrain or a restore)")
            try:
                head = load_head(prev, state.heads.backbone_sha256)
            except HeadError as e:
                raise RetrainRefused("missing", with_keys(str(e), {prev: f"{key}.prev"})) from None
            broken = state.heads.rules_broken_by(name, head.classes, state.rules)
            if broken:
                raise RetrainRefused("rules", "not restored, the running head is unchanged: "
                                     + "; ".join(b.replace("the new head", "the previous head") for b in broken))
            try:
                data = prev.read_bytes()
            except OSError as e:
                raise _refused(storage_error(e, "read the previous head", f"{key}.prev")) from None
            _install(entry, data)
            state.heads.swap(name, replace(head, path=entry.path))
        self._set(name, state="restored", finished_at=time.time(), classes=list(head.classes), message="")
        log.info("custom class %r: the previous head is restored (the replaced one is kept as %s)", name, prev.name)
        return self.status(name)


def _refused(err: StorageError) -> RetrainRefused:
    return RetrainRefused("storage", str(err), no_space=err.no_space)


def _install(entry: HeadEntry, data: bytes) -> None:
    """Write `data` as the head file of `entry`, its current content as `.prev`: both to temporary files first,
    so a full or read-only disk leaves both as they were. RetrainRefused("storage") then."""
    key = f"{entry.key}.head"
    try:
        old = entry.path.read_bytes()
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise _refused(storage_error(e, "read the running head to keep it as .prev", key)) from None
    files = ([(prev_path(entry.path), old)] if old is not None else []) + [(entry.path, data)]
    try:
        write_files(files)
    except OSError as e:
        raise _refused(storage_error(e, "write the head and keep the one it replaces as .prev", key)) from None
