"""AlertEngine: the per (rule, camera) event state machine fed with every classification result.

    idle --hit--> counting --min_frames consecutive hits, cooldown over--> active --no hit for end_after--> idle
                    ^  miss resets the count                                 (cooldown starts at the end)

A rule entry is a class or a group of classes; its score is the SUM of its classes' probabilities (two dog breeds
at 0.35 each make "dog" 0.70). An entry "head:class" (e.g. "porch:package") scores that custom head's probability
for the class. A frame hits when the best entry reaches min_score; that entry names the event. With smoothing,
each entry's score is first replaced by the median (or mean) of its last `window` scores, so one odd frame
neither starts nor prolongs an event (Frigate smooths its classification scores the same way).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from monitor.alerts.event import Event

if TYPE_CHECKING:
    from monitor.config.types import RuleConfig
    from monitor.alerts.events import EventStore
    from monitor.core.metrics import Metrics
    from monitor.inference.results import Result
    from monitor.alerts.sinks import SinkSet

log = logging.getLogger(__name__)


_IO_QUEUE = 1024          # background mode: decisions waiting for the io thread (each a few hundred bytes) ...
_IO_IMAGES = 8            # ... of which only the first few keep their frame (a frame is ~1-6 MB)


@dataclass(frozen=True)
class _CompiledRule:
    cfg: RuleConfig
    names: tuple[str, ...]
    indices: tuple[np.ndarray | None, ...]            # ImageNet indices, or None for a custom entry
    custom: tuple[tuple[str, str] | None, ...]         # (head, class) of a custom entry
    window: int                                       # 1 = no smoothing
    median: bool


@dataclass
class _Active:
    event: Event                     # replaced (never changed) by the io side: with its id once stored
    peak: float
    last_hit: float
    persisted_at: float


@dataclass
class _State:
    cfg: RuleConfig
    camera: str
    streak: int = 0
    streak_peak: float = 0.0
    cooldown_until: float = float("-inf")
    active: _Active | None = None
    history: deque | None = None     # smoothing: the last `window` per-entry score vectors


@dataclass
class _Pending:
    """Store/sink work decided under the state lock, done after it (active() readers never wait on SQLite)."""
    kind: str                        # start | end | persist
    act: _Active
    image: np.ndarray | None = None
    predictions: list = field(default_factory=list)
    # end: its time and peak, decided under the lock; the io side puts them on the event it has by then (its
    # start, run first, gave it its id)
    ended_at: float | None = None
    peak: float = 0.0


class AlertEngine:
    """Turns results into events: SQLite commits at start and end, emits to the sinks, counts alerts.

    observe() runs on the inference worker thread for every result, so it does numpy sums over a handful of
    indices per rule and nothing else, except the commits at event start/end and, while an event lasts, a
    last_seen/peak refresh every `persist_every` seconds (None disables it) so a crash loses at most that much
    of the event's duration.

    background=True (the daemon) moves those commits and the sink hand-off to a thread of the engine's own: a
    database locked by another process (each write then waits out the store's busy timeout) must not stall
    classification. Decisions are queued in order under the state lock, so an event's end is never written before
    its start. The queue is bounded (_IO_QUEUE decisions; a full queue drops and counts in
    monitor_sink_dropped_total{sink="events"}), and only the first _IO_IMAGES queued starts keep their frame for
    the snapshot, so a long backlog holds no frames. close_all() drains the queue (at most `drain_timeout`
    seconds) and ends the thread; whatever comes after it runs inline. background=False runs everything inline.
    """

    def __init__(self, rules: Sequence[RuleConfig], store: EventStore | None, sinks: SinkSet | None,
                 metrics: Metrics, clock: Callable[[], float] = time.time,
                 persist_every: float | None = 60.0, background: bool = False, drain_timeout: float = 3.0) -> None:
        self._rules = tuple(_compile(r) for r in rules)
        self._store = store
        self._sinks = sinks
        self._metrics = metrics
        self._clock = clock
        self._persist_every = persist_every
        self._lock = threading.Lock()            # guards the state machines
        # Side effects run outside _lock but in decision order: a batch decided without an io thread is appended
        # to _inline under _lock, and whoever holds _io_lock runs _inline from its head, so a close_all() racing
        # an observe() cannot write an event's end before its start. Bounded by the threads that decide (each
        # drains before it returns).
        self._io_lock = threading.Lock()
        self._inline: deque[list[_Pending]] = deque()
        self._states: dict[tuple[str, str], _State] = {}
        self._rules_for: dict[str, tuple[_CompiledRule, ...]] = {}
        self._active_view: dict[str, tuple[str, ...]] = {}   # replaced whole, read without the lock
        self._io_queue: queue.Queue[list[_Pending]] | None = queue.Queue(_IO_QUEUE) if background else None
        self._io_thread: threading.Thread | None = None     # started at the first decision (under _lock)
        self._io_stop = threading.Event()
        self._drain_timeout = drain_timeout
        self._io_dropped = 0                                 # since the last warning
        # Ends of committed events whose write failed (database locked): retried, oldest first, before the next
        # side effects and while the io thread idles, so a transient lock does not leave the row open for good.
        self._unwritten_ends: deque[Event] = deque(maxlen=1024)
        self._io_drop_logged = float("-inf")

    # -- public ---------------------------------------------------------------------------------------------

    def observe(self, result: Result) -> None:
        now = self._clock()
        camera = result.camera
        probs = np.asarray(result.probabilities).reshape(-1)
        pending: list[_Pending] = []
        with self._lock:
            rules = self._rules_for.get(camera)
            if rules is None:
                rules = self._rules_for[camera] = tuple(
                    r for r in self._rules if not r.cfg.cameras or camera in r.cfg.cameras)
            for rule in rules:
                st = self._states.get((rule.cfg.name, camera))
                if st is None:
                    st = self._states[(rule.cfg.name, camera)] = _State(cfg=rule.cfg, camera=camera)
                label, score = _best(rule, _scores(rule, probs, result), st)
                self._step(st, label, score, now, result, pending)
            self._end_stale(now, pending)
            self._hand_off(pending)
        self._run_inline()

    def tick(self) -> None:
        """End events whose camera stopped delivering results (a dead camera never calls observe())."""
        pending: list[_Pending] = []
        with self._lock:
            self._end_stale(self._clock(), pending)
            self._hand_off(pending)
        self._run_inline()

    def _hand_off(self, pending: list[_Pending]) -> None:
        """Under self._lock: queue the transitions for the alert-io thread, or in _inline for the caller's
        _run_inline() once it has released _lock."""
        if not pending:
            return
        self._refresh_view()
        if not self._enqueue(pending):
            self._inline.append(pending)

    def _run_inline(self) -> None:
        """Outside _lock: run the batches decided inline, oldest first (a later decision's batch may be run by
        an earlier decider's thread; either way each caller returns after its own batch ran)."""
        if not self._inline:
            return
        with self._io_lock:
            while self._inline:
                self._run(self._inline.popleft())

    def reconfigure(self, rules: Sequence[RuleConfig], sinks: SinkSet | None = None,
                    removed_cameras: Sequence[str] = ()) -> int:
        """Apply a reloaded watch-list (and sink set) in place; returns how many open events it ended.

        A rule whose definition is unchanged (same name, equal config) keeps its state on every camera: an open
        event stays open and is not alerted again, a streak keeps counting, a cooldown is remembered. A rule
        that changed or was removed ends its open events now and starts afresh. Events of `removed_cameras`
        end now too (no more results will come from them). With `sinks`, every delivery from now on, the ends
        of events started before included, goes to the new set; the caller stops the old one afterwards.
        """
        compiled = tuple(_compile(r) for r in rules)     # may raise: before anything changed
        wanted = {r.cfg.name: r.cfg for r in compiled}
        gone = set(removed_cameras)
        if sinks is not None:
            # Under _io_lock: a side effect running now finishes on the old set, which is drained after this.
            with self._io_lock:
                self._sinks = sinks
        now = self._clock()
        pending: list[_Pending] = []
        with self._lock:
            for key, st in list(self._states.items()):
                if wanted.get(st.cfg.name) == st.cfg and st.camera not in gone:
                    continue
                if st.active is not None:
                    self._end(st, now, pending)
                del self._states[key]
            self._rules = compiled
            self._rules_for = {}
            self._refresh_view()
            self._hand_off(pending)
        self._run_inline()
        return len(pending)

    def active(self, camera: str) -> list[str]:
        """Labels of the events active on `camera`, oldest first (for the overlay banner)."""
        return list(self._active_view.get(camera, ()))

    def close_all(self) -> None:
        """End every open event now (shutdown), so the history shows no event open past the process's life.

        With io_queue, returns once the queued writes are done (at most drain_timeout) and ends the io thread."""
        now = self._clock()
        pending: list[_Pending] = []
        with self._lock:
            for st in self._states.values():
                if st.active is not None:
                    self._end(st, now, pending)
                st.streak = 0
            self._refresh_view()
            q, thread = self._io_queue, self._io_thread
            self._io_queue = None        # decisions made from now on (a reload's last worker round) run inline
            if q is None or thread is None:
                if pending:
                    self._inline.append(pending)
            else:
                try:
                    q.put_nowait(pending)
                    pending = []
                except queue.Full:
                    pass                 # waited for below, outside the lock
        if q is None or thread is None:
            self._run_inline()
            return
        self._drain(q, thread, pending)

    def _drain(self, q: queue.Queue[list[_Pending]], thread: threading.Thread, pending: list[_Pending]) -> None:
        deadline = time.monotonic() + self._drain_timeout
        if pending:
            try:
                q.put(pending, timeout=max(0.01, deadline - time.monotonic()))
            except queue.Full:
                self._drop(pending)
        with q.all_tasks_done:
            while q.unfinished_tasks and deadline - time.monotonic() > 0:
                q.all_tasks_done.wait(deadline - time.monotonic())
            left = q.unfinished_tasks
        self._io_stop.set()
        thread.join(max(0.05, deadline - time.monotonic()))
        if left:
            log.warning("alerts: %d event decisions still not written after %.1f s (event database slow or "
                        "locked); abandoned", left, self._drain_timeout)

    # -- state machine (under the lock) ----------------------------------------------------------------------

    def _step(self, st: _State, label: str, score: float, now: float, result: Result,
              pending: list[_Pending]) -> None:
        cfg = st.cfg
        hit = score >= cfg.min_score
        act = st.active
        if act is not None:
            if hit:
                act.last_hit = now
                if score > act.peak:
                    act.peak = score
                if self._persist_every is not None and now - act.persisted_at >= self._persist_every:
                    act.persisted_at = now
                    pending.append(_Pending("persist", act))
            elif now - act.last_hit >= cfg.end_after:
                self._end(st, now, pending)
            return
        if hit:
            st.streak += 1
            st.streak_peak = max(st.streak_peak, score) if st.streak > 1 else score
        else:
            st.streak = 0
            st.streak_peak = 0.0
        # Hits during the cooldown keep counting, so a class still present when it expires alerts at once.
        if hit and st.streak >= max(1, cfg.min_frames) and now >= st.cooldown_until:
            event = Event(camera=st.camera, rule=cfg.name, label=label, score=float(score),
                          peak_score=float(st.streak_peak), started_at=now, box=result.box_for(label))
            st.active = _Active(event=event, peak=st.streak_peak, last_hit=now, persisted_at=now)
            st.streak = 0
            st.streak_peak = 0.0
            pending.append(_Pending("start", st.active, image=result.frame.image,
                                    predictions=list(result.predictions)))

    def _end_stale(self, now: float, pending: list[_Pending]) -> None:
        for st in self._states.values():
            act = st.active
            if act is not None and now - act.last_hit >= st.cfg.end_after:
                self._end(st, now, pending)

    def _end(self, st: _State, now: float, pending: list[_Pending]) -> None:
        act = st.active
        assert act is not None
        st.active = None
        st.cooldown_until = now + st.cfg.cooldown
        pending.append(_Pending("end", act, ended_at=now, peak=float(act.peak)))

    def _refresh_view(self) -> None:
        view: dict[str, list[tuple[float, str]]] = {}
        for st in self._states.values():
            if st.active is not None:
                view.setdefault(st.camera, []).append((st.active.event.started_at, st.active.event.label))
        self._active_view = {cam: tuple(dict.fromkeys(lbl for _, lbl in sorted(items)))
                             for cam, items in view.items()}

    # -- side effects (outside the lock) ---------------------------------------------------------------------

    def _enqueue(self, pending: list[_Pending]) -> bool:
        """Called under _lock: hand `pending` to the io thread (True), or False to run it inline (no io queue)."""
        q = self._io_queue
        if q is None:
            return False
        if self._io_thread is None:
            self._io_thread = threading.Thread(target=self._io_loop, args=(q,), name="alert-io", daemon=True)
            self._io_thread.start()
        if q.qsize() >= _IO_IMAGES:
            for p in pending:
                p.image = None           # a backlog (database locked): no snapshot rather than frames piling up
        try:
            q.put_nowait(pending)
        except queue.Full:
            self._drop(pending)
        return True

    def _drop(self, pending: list[_Pending]) -> None:
        self._metrics.sink_dropped.labels("events").inc(len(pending))
        self._io_dropped += len(pending)
        now = time.monotonic()
        if now - self._io_drop_logged >= 10.0:
            log.warning("alerts: event write queue full (event database slow or locked): dropped %d decisions "
                        "(%s)", self._io_dropped, ", ".join(p.kind for p in pending))
            self._io_dropped = 0
            self._io_drop_logged = now

    def _io_loop(self, q: queue.Queue[list[_Pending]]) -> None:
        while True:
            try:
                pending = q.get(timeout=0.25)
            except queue.Empty:
                if self._unwritten_ends:
                    with self._io_lock:
                        self._retry_ends()
                if self._io_stop.is_set():
                    return
                continue
            try:
                with self._io_lock:
                    self._run(pending)
            finally:
                q.task_done()

    def _run(self, pending: list[_Pending]) -> None:
        """Called with _io_lock held."""
        self._retry_ends()
        for p in pending:
            try:
                self._do(p)
            except Exception:   # a bug in a side effect must not kill the inference worker
                log.exception("alerts: %s of event %s failed", p.kind, p.act.event.id)

    def _retry_ends(self) -> None:
        """With _io_lock held: write the ends that failed before, oldest first; stop at the first failure (the
        database is still locked: one busy timeout per attempt is enough)."""
        while self._unwritten_ends and self._store is not None:
            ev = self._unwritten_ends[0]
            assert ev.id is not None and ev.ended_at is not None
            try:
                written = self._store.end_event(ev.id, ev.ended_at, ev.peak_score)
            except Exception:
                log.exception("alerts: retrying the end of event %s failed", ev.id)
                written = False
            if not written:
                return
            self._unwritten_ends.popleft()
            log.info("event %s: end written late (the event database was unavailable when it ended)", ev.id)

    def _do(self, p: _Pending) -> None:
        act = p.act
        if p.kind == "start":
            ev = act.event
            if self._store is not None:
                ev = act.event = self._store.insert(ev)
            self._metrics.alerts.labels(ev.rule, ev.label).inc()
            if self._store is not None and ev.id is None:
                # The store logged and counted the failed write; the alert still goes out, without an id.
                log.warning("event started but NOT recorded in the event history (the database write failed; "
                            "its end will not be recorded either): camera=%s rule=%s label=%s score=%.3f",
                            ev.camera, ev.rule, ev.label, ev.score)
            else:
                log.info("event %s started: camera=%s rule=%s label=%s score=%.3f", ev.id, ev.camera, ev.rule,
                         ev.label, ev.score)
            if self._sinks is not None:
                self._sinks.emit("start", ev, p.image, predictions=p.predictions)
        elif p.kind == "end":
            assert p.ended_at is not None
            ev = act.event = replace(act.event, ended_at=p.ended_at, peak_score=p.peak)
            if self._store is not None and ev.id is not None:
                if not self._store.end_event(ev.id, p.ended_at, ev.peak_score):
                    self._unwritten_ends.append(ev)
            what = "unrecorded event" if self._store is not None and ev.id is None else f"event {ev.id}"
            log.info("%s ended: camera=%s rule=%s label=%s peak=%.3f duration=%.1fs", what,
                     ev.camera, ev.rule, ev.label, ev.peak_score, p.ended_at - ev.started_at)
            if self._sinks is not None:
                self._sinks.emit("end", ev, None)
        elif p.kind == "persist":
            ev = act.event
            if self._store is not None and ev.id is not None:
                self._store.update_peak(ev.id, act.peak, seen_at=act.last_hit)


def _compile(rule: RuleConfig) -> _CompiledRule:
    if not rule.indices:
        raise ValueError(f"watchlist rule {rule.name!r}: no classes resolved (classes={list(rule.classes)})")
    names = tuple(name for name, _ in rule.indices)
    idx: list[np.ndarray | None] = []
    custom: list[tuple[str, str] | None] = []
    for name, ix in rule.indices:
        head, sep, cls = name.partition(":")
        if sep:
            idx.append(None)
            custom.append((head, cls))
            continue
        if not ix:
            raise ValueError(f"watchlist rule {rule.name!r}: class {name!r} resolved to no ImageNet index")
        idx.append(np.asarray(ix, dtype=np.intp))
        custom.append(None)
    smoothing = getattr(rule, "smoothing", None)
    window = max(1, int(smoothing.window)) if smoothing is not None else 1
    median = smoothing is None or smoothing.method == "median"
    return _CompiledRule(cfg=rule, names=names, indices=tuple(idx), custom=tuple(custom), window=window,
                         median=median)


def _scores(rule: _CompiledRule, probs: np.ndarray, result: Result) -> np.ndarray:
    """This frame's score of every entry of the rule."""
    out = np.empty(len(rule.names), dtype=np.float64)
    for i, (ix, custom) in enumerate(zip(rule.indices, rule.custom)):
        if ix is not None:
            out[i] = probs[ix].sum()
        else:
            head = result.custom.get(custom[0]) if result.custom else None
            out[i] = head.score(custom[1]) if head is not None else 0.0   # head not run on this camera
    return out


def _best(rule: _CompiledRule, scores: np.ndarray, st: _State) -> tuple[str, float]:
    if rule.window > 1:
        if st.history is None:
            # Starts as `window` frames of nothing seen: a first odd frame is smoothed away like any other,
            # and a lasting presence hits after the same ceil(window/2) frames (median) as in steady state.
            st.history = deque([np.zeros_like(scores)] * rule.window, maxlen=rule.window)
        st.history.append(scores)
        stacked = np.stack(st.history)
        scores = np.median(stacked, axis=0) if rule.median else stacked.mean(axis=0)
    best = int(np.argmax(scores))
    return rule.names[best], float(scores[best])
