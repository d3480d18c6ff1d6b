"""ClipManager: the clips stage assembled: a recorder per recording camera, start-up recovery, retention.

It hears of events as a SinkSet listener (`on_event`), on a sink thread of its own, and hands them to the
camera's recorder without blocking. Retention runs on a thread of its own ("clips-retention"): at start, every
RETENTION_EVERY and after each clip, oldest first, by age, per-camera bytes and total bytes.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from monitor.alerts.event import Event
from monitor.alerts.events import EventStore
from monitor.clips.files import CLIP_NAME, PART, PART_NAME, SALVAGE_TMP, resolve, salvage
from monitor.clips.recorder import ClipListener, ClipRecorder, DiskGuard

if TYPE_CHECKING:
    from monitor.config.types import Config
    from monitor.core.metrics import Metrics

log = logging.getLogger(__name__)

RETENTION_EVERY = 600.0     # seconds between retention passes (also after every clip)
STALE_PART = 3600.0         # a .part no recorder writes and no row names, this old, is a leftover


def clips_folder(config: Config) -> Path:
    return Path(config.clips.path) if config.clips.path is not None else \
        Path(config.events.database).parent / "clips"


def recording(config: Config) -> list[str]:
    """Cameras that record clips (clips enabled for them; backend pyav, or OpenCV with clips.encode)."""
    return [c.name for c in config.cameras if c.clips.enabled and (c.backend == "pyav" or c.clips.encode)]


@dataclass(frozen=True)
class Sweep:
    deleted: int = 0
    freed: int = 0
    left: int = 0               # bytes of clips left


class ClipManager:
    def __init__(self, config: Config, store: EventStore, metrics: Metrics,
                 cameras: Callable[[], Mapping[str, Any]]) -> None:
        self.config = config
        self.root = clips_folder(config)
        self._store = store
        self._metrics = metrics
        self._cameras = cameras
        self._listeners: list[ClipListener] = []
        self._recorders: dict[str, ClipRecorder] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread: threading.Thread | None = None
        self.disk = DiskGuard(self.root, config.clips.min_free_bytes, metrics)
        self.recovered = 0

    def add_listener(self, fn: ClipListener) -> None:
        """fn(event) once per event when its clip is complete or failed (on a recorder thread: hand off)."""
        self._listeners.append(fn)

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.recovered = self.recover()
        self.update(self.config)
        self._thread = threading.Thread(target=self._retention_loop, name="clips-retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> bool:
        """After the sinks: the events' ends reached the recorders; their clips are finished now (complete as far
        as they got, or failed). Also a reload turning clips off. False: a thread still runs past `timeout`."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._poke.set()
        with self._lock:
            recorders = list(self._recorders.values())
            self._recorders.clear()
        for rec in recorders:
            rec.request_stop()          # all at once: they finish their clips in parallel
        for rec in recorders:
            rec.stop(max(0.1, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        busy = [r.camera for r in recorders if r.is_alive()]
        if busy or (self._thread is not None and self._thread.is_alive()):
            log.warning("clips: still finishing after %.1f s: %s", timeout, ", ".join(busy) or "retention")
            return False
        return True

    def update(self, config: Config) -> None:
        """Start recorders of cameras that record now, stop those of cameras that no longer do (reload)."""
        self.config = config
        self.disk.min_free = config.clips.min_free_bytes
        wanted = set(recording(config))
        with self._lock:
            gone = [self._recorders.pop(n) for n in list(self._recorders) if n not in wanted]
            for name in wanted - set(self._recorders):
                rec = ClipRecorder(name, lambda n=name: self._ring(n), lambda n=name: self._settings(n), self.root,
                                   self._store, self._metrics, self._listeners, self.disk, self._poke.set)
                self._recorders[name] = rec
                if not self._stop.is_set():
                    rec.start()
        for rec in gone:
            rec.stop(1.0)
        self._poke.set()                # a changed retain applies now, not at the next pass

    def on_event(self, kind: str, event: Event, picture: object = None) -> None:
        """SinkSet listener: an event started or ended."""
        rec = self._recorders.get(event.camera)
        if rec is not None:
            rec.offer(kind, event)

    def _ring(self, name: str) -> Any:
        cam = self._cameras().get(name)
        return getattr(cam, "packets", None)

    def _settings(self, name: str) -> Any:
        for c in self.config.cameras:
            if c.name == name:
                return c.clips
        return self.config.clips

    # -- start-up recovery ----------------------------------------------------------------------------------

    def recover(self) -> int:
        """Rows a killed process left "recording": the clip salvaged from its .part (complete) or nothing (failed);
        rows "complete" whose file is gone: failed. Returns how many rows changed."""
        changed = 0
        for ev in self._store.clips_in_state("recording"):
            assert ev.id is not None
            final = resolve(self.root, ev.clip) if ev.clip else None
            seconds = None
            if final is not None:
                part = final.with_name(final.name + PART)
                if final.is_file():
                    seconds = _duration(final)
                    part.unlink(missing_ok=True)
                elif part.is_file():
                    seconds = salvage(part, final)
            if seconds is not None:
                self._store.set_clip(ev.id, file=ev.clip, seconds=round(seconds, 3), state="complete")
                log.warning("clips: event %d: clip cut by the end of the previous run, kept %.1f s", ev.id, seconds)
            else:
                self._store.set_clip(ev.id, file=None, seconds=None, state="failed")
                log.warning("clips: event %d: clip lost with the previous run (nothing playable)", ev.id)
            changed += 1
        for ev in self._store.clips_in_state("complete"):
            path = resolve(self.root, ev.clip) if ev.clip else None
            if path is None or not path.is_file():
                assert ev.id is not None
                self._store.set_clip(ev.id, file=None, seconds=None, state="failed")
                changed += 1
        return changed

    # -- retention ------------------------------------------------------------------------------------------

    def _retention_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:
                log.exception("clips: retention pass failed")
            self._poke.wait(RETENTION_EVERY)
            self._poke.clear()

    def sweep(self, now: float | None = None) -> Sweep:
        """Delete clips oldest first: older than retain.days, then over per_camera_max_bytes per camera, then
        over max_bytes in all. Rows forget a clip before its file goes (never a row pointing at a missing
        file). Stale .part files no recorder writes go too. A full disk that frees up resumes recording."""
        retain = self.config.clips.retain
        wall = time.time() if now is None else now
        clips, stale = self._scan(wall)
        doomed: list[tuple[str, Path, int]] = []
        cutoff = wall - retain.days * 86400.0
        keep = []
        for mtime, name, path, size in clips:
            (doomed if mtime < cutoff else keep).append((mtime, name, path, size))
        doomed = [(n, p, s) for _, n, p, s in doomed]
        if retain.per_camera_max_bytes is not None:
            per: dict[str, int] = {}
            for _, name, _, size in keep:
                cam = name.split("/", 1)[0]
                per[cam] = per.get(cam, 0) + size
            still = []
            for item in keep:
                cam = item[1].split("/", 1)[0]
                if per[cam] > retain.per_camera_max_bytes:
                    per[cam] -= item[3]
                    doomed.append((item[1], item[2], item[3]))
                else:
                    still.append(item)
            keep = still
        total = sum(item[3] for item in keep)
        if retain.max_bytes is not None:
            still = []
            for item in keep:
                if total > retain.max_bytes:
                    total -= item[3]
                    doomed.append((item[1], item[2], item[3]))
                else:
                    still.append(item)
            keep = still
        deleted = freed = 0
        for name, path, size in doomed:
            if not self._store.forget_clip(name):
                total += size
                continue                # the row cannot be changed: the file stays
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("clips: cannot delete %s: %s", name, e)
                continue
            deleted += 1
            freed += size
        for path in stale:
            try:
                path.unlink()
            except OSError:
                pass
        if deleted:
            log.info("clips: retention deleted %d clips (%.1f MB); %.1f MB left", deleted, freed / 1e6, total / 1e6)
        self._metrics.clips_bytes.set(total)
        self.disk.has_room()            # a full disk that frees up clears the state (recording resumes)
        return Sweep(deleted, freed, total)

    def _scan(self, wall: float) -> tuple[list[tuple[float, str, Path, int]], list[Path]]:
        clips: list[tuple[float, str, Path, int]] = []
        stale: list[Path] = []
        try:
            folders = [d for d in self.root.iterdir() if d.is_dir() and not d.is_symlink()]
        except OSError:
            return clips, stale
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if CLIP_NAME.fullmatch(entry.name):
                    clips.append((st.st_mtime, f"{folder.name}/{entry.name}", Path(entry.path), st.st_size))
                elif (PART_NAME.fullmatch(entry.name) or entry.name.endswith(SALVAGE_TMP)) and \
                        st.st_mtime < wall - STALE_PART:
                    stale.append(Path(entry.path))
        clips.sort()
        return clips, stale


def _duration(path: Path) -> float | None:
    import av

    try:
        with av.open(str(path)) as src:
            return float(src.duration / 1_000_000) if src.duration else None
    except (av.error.FFmpegError, OSError):
        return None
