"""The daemon: assembles the components, starts and stops them in dependency order, handles signals."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2

from monitor import __version__
from monitor.alerts.engine import AlertEngine
from monitor.inference.artifact import ArtifactError
from monitor.capture.camera import Camera
from monitor.inference.classifier import Classifier
from monitor.inference.heads import HeadError
from monitor.inference.heads.headset import HeadSet
from monitor.inference.heads.service import CustomClasses
from monitor.config.loader import ConfigError, format_errors, load_config
from monitor.config.types import Config
from monitor.alerts.events import EventStore, EventStoreError
from monitor.core.logsetup import setup_logging
from monitor.core.memory import TRIM_EVERY, trim, tune_malloc
from monitor.core.metrics import Metrics
from monitor.inference.results import ResultBoard
from monitor.core.sdnotify import SystemdNotifier, watchdog_interval
from monitor.core.versions import package_version
from monitor.alerts.sinks import SinkSet
from monitor.inference.worker import InferenceWorker
from monitor.fleet.database import FleetError
from monitor.clips.manager import recording
from monitor.clips.stage import on_off_line, restart_view, settings_line

if TYPE_CHECKING:
    from monitor.web.server import WebServer
    from monitor.web.services import WebServices

log = logging.getLogger("monitor")

EXIT_CONFIG = 2
HEARTBEAT_FRESH = 15.0   # seconds: a component loop older than this is hung (the watchdog stops pinging)
PRUNE_EVERY = 3600.0     # seconds between retention passes
RELOAD_CAMERAS_STOP = 2.0   # seconds shared by all cameras a reload stops (a hung one is left to finish alone)
RELOAD_SINKS_STOP = 2.0     # seconds a replaced sink set may spend delivering what it had queued
RELOAD_JOIN = 3.0           # seconds a stop waits for a reload still running
RELOAD_CLIPS_STOP = 2.0     # seconds a reload turning clips off gives the recorders to finish their clips


class Daemon:
    """Every component of one running monitor; the HTTP port gets the part it uses as web_services()."""

    def __init__(self, config: Config, weights: Path | None = None, pace: bool = True,
                 metrics: Metrics | None = None) -> None:
        tune_malloc()       # before any capture thread: see monitor/core/memory.py
        if weights is not None:
            config = config.model_copy(update={"model": config.model.model_copy(update={"weights": Path(weights)})})
        self.config = config
        self.pace = pace
        self.metrics = metrics or Metrics()
        self.classifier = Classifier(config.model.weights, threads=config.model.threads, runtime=config.model.runtime)
        meta = self.classifier.meta
        self.metrics.model_info.info({"name": meta.name, "precision": meta.precision, "engine": meta.engine or "none",
                                      "runtime": self.classifier.runtime,
                                      "untrained": str(meta.untrained).lower(), "sha256": self.classifier.sha256[:16]})
        self.heads = load_heads(config, self.classifier.backbone_id)
        self.custom = CustomClasses(self.classifier, self.heads, examples_dirs(config), config.watchlist)
        self.heatmaps: set[str] = set()     # cameras whose live view shows the class activation map (web toggle)
        self.events = EventStore(config.events.database, self.metrics)
        # read at each scrape through self.config: a reload that moves the snapshot folder is followed
        self.metrics.watch_disk(lambda: {"events": Path(self.config.events.database).parent,
                                         "snapshots": self.config.alerts.snapshots})
        self.results = ResultBoard()
        self.mqtt: Any = self._mqtt(config)
        self._had_clips = False     # a clip stage ran in this process: an event's end may find its clip
        self.clips: Any = self._clips(config)
        self.sinks = self._sinks(config)
        # background: event commits off the inference thread (a locked database must not stall classification)
        self.alerts = AlertEngine(config.watchlist, self.events, self.sinks, self.metrics, background=True)
        self.worker = InferenceWorker(self.classifier, self.results, self.alerts, self.metrics,
                                      top_k=config.model.top_k, batch_max=config.model.batch_max,
                                      heads=self.heads)
        self.cameras: dict[str, Camera] = {c.name: self._camera(c) for c in config.cameras}
        self.worker.set_cameras(list(self.cameras.values()))
        self.metrics.node_info.labels(node=config.node.name).set(1)
        # the fleet's lease changes and a reload replace cameras one at a time
        self._cameras_lock = threading.RLock()
        self._fleet_cams: dict[str, Any] = {}       # the fleet cameras this node holds a lease on (and runs)
        self.fleet: Any = self._fleet(config)
        self.web: WebServer | None = None
        self.started_at = time.time()
        self._started = False
        self._stopping = False

    def _mqtt(self, config: Config) -> Any:
        if config.mqtt is None:
            return None
        from monitor.mqtt.bridge import MqttBridge, paused_state_path
        return MqttBridge(config.mqtt, self.metrics, self.results, lambda: self.cameras, self.worker_pause,
                          paused_state_path(config.events.database),
                          node=config.node.name if config.fleet is not None else None,
                          language=config.labels.language, node_name=config.node.name)

    def _clips(self, config: Config) -> Any:
        """The clip recorders (monitor/clips), only when a camera records: clips.enabled, and backend pyav or
        clips.encode."""
        from monitor.clips.manager import ClipManager
        if not recording(config):
            return None
        clips = ClipManager(config, self.events, self.metrics, lambda: self.cameras)
        self._had_clips = True
        # a clip done after its event's end: a follow-up to the current sinks
        clips.add_listener(lambda event: self.sinks.emit_clip(event))
        return clips

    def _fleet(self, config: Config) -> Any:
        """The fleet stage (monitor/fleet): the database checked now (FleetError: one line), its outbox triggers
        on the events database; without fleet the triggers go (nobody would drain the outbox)."""
        from monitor.fleet import outbox
        if config.fleet is None:
            outbox.uninstall(Path(config.events.database))
            return None
        from monitor.fleet.service import Fleet
        fleet = Fleet(config, self.metrics, self.set_fleet_cameras)
        fleet.open()
        return fleet

    def set_fleet_cameras(self, configs: Any) -> None:
        """Run exactly these fleet cameras (the lease keeper's decision): the ones that went stop first, through
        the reload's path (the worker lets go, they stop, their open events end, their series go)."""
        with self._cameras_lock:
            old = self._fleet_cams
            self._fleet_cams = dict(configs)
            changed = [name for name in {**old, **configs} if old.get(name) != configs.get(name)]
            if not changed:
                return
            removed = [name for name in changed if name not in configs]
            self.worker.set_cameras([c for name, c in self.cameras.items() if name not in changed])
            _stop_cameras([self.cameras[name] for name in changed if name in self.cameras], RELOAD_CAMERAS_STOP)
            if removed:
                self.alerts.reconfigure(self.config.watchlist, removed_cameras=removed)
            new_cams = {c.name: c for c in self.config.cameras} | self._fleet_cams
            self._replace_cameras(new_cams, changed, removed)
            if self.mqtt is not None:
                self.mqtt.update(list(self.cameras), self.config.watchlist, self.heads)
            log.info("fleet: running %d fleet cameras: %s", len(self._fleet_cams),
                     ", ".join(self._fleet_cams) or "none")

    def worker_pause(self, names: frozenset[str]) -> None:
        self.worker.set_paused(names)

    @property
    def paused(self) -> frozenset[str]:
        """Cameras whose classification is paused (MQTT enabled/set OFF); shown by /api/status."""
        return self.worker.paused

    def _sinks(self, config: Config) -> SinkSet:
        listeners = [("mqtt", self.mqtt.on_event)] if self.mqtt is not None else []
        if self.clips is not None:
            listeners.append(("clips", self.clips.on_event))
        extra = []
        if config.alerts.notify:
            from monitor.alerts.notify import notify_sinks    # Apprise loads ~190 plugins (0.2 s): only when used
            extra = notify_sinks(config.alerts.notify, getattr(getattr(config, "node", None), "public_url", None))
        return SinkSet(config.alerts, self.metrics, self.events, untrained=self.classifier.untrained,
                       language=config.labels.language, node=config.node.name,
                       # after clips went off by a reload, the ends of events still open carry their clip
                       listeners=listeners, extra=extra, clips=self._had_clips,
                       clip_followers=("mqtt",))

    def _camera(self, cfg: Any) -> Camera:
        return Camera(cfg, self.metrics, on_due=self.worker.wake, pace=self.pace)

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self, web: bool = True) -> None:
        """Start consumers before producers: sinks, MQTT, worker, cameras, then the HTTP port."""
        if self.clips is not None:
            self.clips.start()
        self.sinks.start()
        if self.mqtt is not None:
            self.mqtt.start(list(self.cameras), self.config.watchlist, self.heads)
        self.worker.start()
        self.custom.start()
        for cam in self.cameras.values():
            cam.start()
        if web:
            from monitor.web.server import WebServer
            self.web = WebServer(self.web_services(), self.config.server.host, self.config.server.port)
            self.web.start()
        if self.fleet is not None:      # claims cameras: the worker, the sinks and MQTT run already
            self.fleet.start()
        self.started_at = time.time()
        self._started = True
        log.info("monitor %s running: %d cameras, %d rules, model %s%s%s", __version__, len(self.cameras),
                 len(self.config.watchlist), self.classifier.meta.name,
                 " (UNTRAINED demo weights: predictions are meaningless)" if self.classifier.untrained else "",
                 f", http://{self.config.server.host}:{self.web.port}/" if self.web else "")

    def stop(self, timeout: float = 4.0) -> None:
        """Stop producers first (HTTP, cameras), then the worker, close open events, drain sinks, close SQLite."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        if self.fleet is not None:      # its cameras stop, then their leases go back (others take them at once)
            self.fleet.stop(timeout=min(2.0, left()))
        self._stopping = True      # a reload still running starts nothing new from now on
        if self.web is not None:
            self.web.stop(timeout=min(1.0, left()))
        _stop_cameras(list(self.cameras.values()), min(1.0, left()))
        self.custom.stop(timeout=min(0.5, left()))
        self.worker.stop(timeout=min(1.5, left()))
        self.alerts.close_all()
        self.sinks.stop(timeout=min(1.5, left()))
        if self.mqtt is not None:      # after the sinks: the events' ends still go out
            self.mqtt.stop(timeout=min(1.0, left()))
        if self.clips is not None:     # after the sinks: the events' ends reached the recorders
            self.clips.stop(timeout=min(1.5, left()))
        self.events.close()
        self._started = False
        log.info("monitor stopped")

    def web_services(self) -> WebServices:
        """What the HTTP port reads and drives (monitor.web.services). The config, the cameras, the paused set and
        the start time are read through functions: a reload or start() replaces them."""
        from monitor.web.services import WebServices
        return WebServices(results=self.results, alerts=self.alerts, events=self.events, classifier=self.classifier,
                           custom=self.custom, metrics=self.metrics, heatmaps=self.heatmaps, ready=self.ready,
                           current_config=lambda: self.config, current_cameras=lambda: self.cameras,
                           current_paused=lambda: self.paused, current_started_at=lambda: self.started_at,
                           fleet=self.fleet)

    def ready(self) -> bool:
        return self._started and time.monotonic() - self.worker.heartbeat < HEARTBEAT_FRESH

    def healthy(self) -> bool:
        """Heartbeats of the worker and every capture loop are fresh (the systemd watchdog condition)."""
        now = time.monotonic()
        if not self._started or now - self.worker.heartbeat >= HEARTBEAT_FRESH:
            return False
        # A capture loop legitimately sits inside OpenCV's open/read for up to its timeout.
        return all(now - c.heartbeat < HEARTBEAT_FRESH + max(c.cfg.open_timeout, c.cfg.read_timeout)
                   for c in self.cameras.values())

    def status_line(self) -> str:
        up = sum(1 for c in self.cameras.values() if c.status()["state"] == "up")
        return f"{up}/{len(self.cameras)} cameras up, {self.worker.classified} frames classified"

    # -- reload ---------------------------------------------------------------------------------------------

    def reload(self, new: Config) -> None:
        """reload_config() one at a time with the fleet's lease changes; the fleet file is read again first."""
        with self._cameras_lock:
            if self.fleet is not None:
                new = _keep_fleet(self.config, new)
                self.fleet.reload(new)      # ConfigError (fleet file): nothing changed yet
            self.reload_config(new)

    def reload_config(self, new: Config) -> None:
        """Apply a validated config: cameras, watch-list, alert sinks and logging change in place.

        Runs on a thread of its own (the main thread keeps pinging the watchdog meanwhile) and is bounded: the
        changed cameras stop in parallel under one deadline, the replaced sink set drains for at most
        RELOAD_SINKS_STOP. Rules that did not change keep their open events, streaks and cooldowns."""
        t0 = time.monotonic()
        old = self.config
        # server.auth applies at once: the credentials files were read again, and a rotated password must stop
        # working now, not at the next restart.
        server = old.server.model_copy(update={"auth": new.server.auth})
        if new.server.auth != old.server.auth:
            if self.web is not None:
                self.web.auth.update(new.server.auth)       # raises (nothing changed) for one it cannot serve
            log.info("reload: server.auth applied (credentials read again from their file)")
        for key, running in (("server", server), ("model", old.model), ("events", old.events), ("mqtt", old.mqtt)):
            if running != getattr(new, key):
                log.warning("reload: changes under %r need a restart; keeping the running %s settings", key, key)
        new = new.model_copy(update={"server": server, "model": old.model, "events": old.events,
                                     "mqtt": old.mqtt})
        if self.clips is not None and new.clips.path != old.clips.path:
            # the running recorders write there and the web serves the rows' clips from there
            log.warning("reload: a change of clips.path needs a restart; keeping %s", self.clips.root)
            new = new.model_copy(update={"clips": new.clips.model_copy(update={"path": old.clips.path})})
        setup_logging(new.logging.level, new.logging.format)
        if (new.custom_classes, new.watchlist) != (old.custom_classes, old.watchlist):
            heads = load_heads(new, self.classifier.backbone_id)     # raises before anything changed
            self.heads = heads
            self.worker.heads = heads
            # one reference: a label request meanwhile sees the old heads and folders or the new, never a mix
            self.custom.replace_heads(heads, examples_dirs(new), new.watchlist)
        old_cams = {c.name: c for c in old.cameras} | self._fleet_cams     # the fleet's stay as they are
        new_cams = {c.name: c for c in new.cameras} | self._fleet_cams
        # clip keys that apply live (pre, post, max_length, pre-roll bytes) restart no camera: clips/stage.py
        changed = [name for name in self.cameras
                   if restart_view(new_cams.get(name)) != restart_view(old_cams.get(name))]
        retuned = [name for name in self.cameras if name not in changed and new_cams.get(name) != old_cams.get(name)]
        removed = [name for name in changed if name not in new_cams]
        # The worker lets go of them first: after set_cameras() none of their results is published any more.
        self.worker.set_cameras([c for name, c in self.cameras.items() if name not in changed])
        _stop_cameras([self.cameras[name] for name in changed], RELOAD_CAMERAS_STOP)
        for name in retuned:
            self.cameras[name].retune_clips(new_cams[name])
        was_recording = recording(old) if self.clips is not None else []
        started, retiring = self._switch_clips(new)
        try:
            came_or_went = started is not None or retiring is not None
            if (new.alerts, new.watchlist) != (old.alerts, old.watchlist) or removed or came_or_went:
                self._reload_alerts(old, new, removed, rebuild=came_or_went)
        finally:    # whatever happened to the alerts, the cameras the worker let go of are replaced
            if not self._stopping:
                self._replace_cameras(new_cams, changed, removed)
            if retiring is not None:
                retiring.stop(timeout=RELOAD_CLIPS_STOP)
        line = on_off_line(was_recording, recording(new) if self.clips is not None else [])
        if line:
            log.info("%s", line)
        if not self._stopping:
            self.config = new
            if self.clips is not None:
                self.clips.update(new)
                if started is None:
                    line = settings_line(old, new, [n for n in was_recording if n in recording(new)])
                    if line:
                        log.info("%s", line)
            if self.mqtt is not None:
                self.mqtt.update(list(self.cameras), new.watchlist, self.heads)
            log.info("reloaded config: %d cameras, %d rules (%.1f s)", len(self.cameras), len(new.watchlist),
                     time.monotonic() - t0)

    def _switch_clips(self, new: Config) -> tuple[Any, Any]:
        """Clips turned on: the stage (started, returned first) starts before the sink set that feeds it is built.
        Turned off: it leaves self.clips (returned second); the sink set built without it replaces the old one,
        which drains into it, and then the caller stops it (its recorders finish their clips)."""
        if self._stopping:
            return None, None
        if self.clips is None and recording(new):
            try:
                started = self._clips(new)
                started.start()
            except OSError as e:    # e.g. the clips folder cannot be made: the rest of the reload goes on
                log.error("reload: clips not started: %s", e)
                return None, None
            self.clips = started
            return started, None
        if self.clips is not None and not recording(new):
            retiring, self.clips = self.clips, None
            return None, retiring
        return None, None

    def _replace_cameras(self, new_cams: dict[str, Any], changed: list[str], removed: list[str]) -> None:
        cameras = {name: self.cameras[name] if name in self.cameras and name not in changed else self._camera(cfg)
                   for name, cfg in new_cams.items()}   # the config's order: the status page lists them in it
        for name, cam in cameras.items():
            if self.cameras.get(name) is not cam:
                cam.start()
        self.cameras = cameras      # replaced whole: web handlers and healthy() iterate it meanwhile
        self.worker.set_cameras(list(cameras.values()))
        for name in removed:
            self.results.drop(name)
            self.metrics.remove_camera(name)

    def _reload_alerts(self, old: Config, new: Config, removed: list[str], rebuild: bool = False) -> None:
        """rebuild: the clip stage came or went, so the sink set's listeners change even if alerts did not."""
        old_sinks = self.sinks if (new.alerts != old.alerts or rebuild) and not self._stopping else None
        if old_sinks is not None:
            self.sinks = self._sinks(new)
            self.sinks.take_over(old_sinks)
            self.sinks.start()
        ended = self.alerts.reconfigure(new.watchlist, sinks=self.sinks if old_sinks else None,
                                        removed_cameras=removed)
        if ended:
            log.info("reload: ended %d open events of changed or removed rules and cameras", ended)
        if old_sinks is not None:
            old_sinks.stop(timeout=RELOAD_SINKS_STOP)


def _keep_fleet(old: Config, new: Config) -> Config:
    """A reload of a fleet node: node and fleet need a restart (the database, the name others know), except
    fleet.cameras_file, which is read again; the running settings stay."""
    fleet = old.fleet
    if new.fleet is not None and fleet is not None:
        fleet = fleet.model_copy(update={"cameras_file": new.fleet.cameras_file})
    if (new.node, new.fleet) != (old.node, fleet):
        log.warning("reload: changes under 'node' or 'fleet' (other than fleet.cameras_file) need a restart; "
                    "keeping the running ones")
    return new.model_copy(update={"node": old.node, "fleet": fleet})


def _stop_cameras(cameras: list[Camera], timeout: float) -> None:
    """Stop cameras in parallel within one shared deadline.

    Cameras blocked in OpenCV's open/read cannot wind down, and a join of `timeout` each in turn would spend
    n times the budget on them (four hung cameras: four times) and starve what comes after."""
    for cam in cameras:
        cam.request_stop()  # all first, so they wind down in parallel
    deadline = time.monotonic() + timeout
    for cam in cameras:
        cam.stop(timeout=max(0.0, deadline - time.monotonic()))


def load_heads(config: Config, backbone_sha256: str) -> HeadSet:
    """The custom_classes heads, checked against the backbone and the watch-list's "head:class" names."""
    heads = HeadSet.load(config.custom_classes, backbone_sha256)
    errors = heads.check_rules(config.watchlist)
    if errors:
        raise HeadError("\n".join(errors))
    return heads


def examples_dirs(config: Config) -> dict[str, Path]:
    """Each custom class's example folder: as configured, else next to the event database (state, not repo)."""
    state = Path(config.events.database).parent
    return {c.name: Path(c.examples) if c.examples is not None else state / "examples" / c.name
            for c in config.custom_classes}


class _Signals:
    """Handlers only set flags (uvicorn style); a second SIGTERM/SIGINT forces exit."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.wake = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: object) -> None:
        if self.stop.is_set():
            os.write(2, b"monitor: second signal, forcing exit\n")
            os._exit(128 + signum)
        self.stop.set()
        self.wake.set()

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload.set()
        self.wake.set()


def run_main(config_path: str, weights: str | None = None) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(format_errors(e, config_path), file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging.level, config.logging.format)
    signals = _Signals()
    signals.install()
    try:
        daemon = Daemon(config, Path(weights) if weights else None)
    except (ArtifactError, EventStoreError, HeadError, FleetError) as e:
        log.error("%s", e)
        return EXIT_CONFIG
    except ConfigError as e:        # the fleet cameras file
        print(format_errors(e, e.path or config_path), file=sys.stderr)
        return EXIT_CONFIG
    try:
        daemon.start()
    except OSError as e:  # e.g. the HTTP port is taken
        log.error("cannot start: %s", e)
        daemon.stop()
        return 1
    log.info("versions: monitor %s, python %s, %s runtime %s, opencv %s", __version__, sys.version.split()[0],
             daemon.classifier.runtime, package_version(daemon.classifier.runtime) or "?", cv2.__version__)
    notifier = SystemdNotifier()
    notifier.notify("READY=1", f"STATUS={daemon.status_line()}")
    _supervise(daemon, signals, notifier, config_path)
    notifier.notify("STOPPING=1", "STATUS=stopping")
    daemon.stop()
    notifier.close()
    blocked = [t.name for t in threading.enumerate() if t.name.startswith("camera-") and t.is_alive()]
    if blocked:
        # A capture still blocked inside OpenCV (its open/read timeout not yet run out) would abort the
        # process if it returned during interpreter finalization; everything of ours is stopped and flushed.
        log.info("not waiting for capture threads still blocked in OpenCV: %s", ", ".join(blocked))
        logging.shutdown()
        os._exit(0)
    return 0


BATCH_CLASSIFIER_IDLE = 120.0      # seconds without a batch before its throughput-compiled copy is released


def _supervise(daemon: Daemon, signals: _Signals, notifier: SystemdNotifier, config_path: str) -> None:
    """The main thread: watchdog pings while heartbeats are fresh, status, retention, reloads."""
    interval = watchdog_interval()
    tick = min(1.0, interval) if interval else 1.0
    next_prune = 0.0
    next_trim = time.monotonic() + TRIM_EVERY
    last_status = ""
    reloading: threading.Thread | None = None
    while not signals.stop.is_set():
        signals.wake.wait(tick)
        signals.wake.clear()
        if signals.stop.is_set():
            break
        if signals.reload.is_set() and (reloading is None or not reloading.is_alive()):
            signals.reload.clear()     # a SIGHUP during a reload stays set: one more reload after this one
            # Off the main thread: stopping hung cameras and draining sinks takes seconds, and this thread must
            # keep pinging the watchdog meanwhile.
            reloading = threading.Thread(target=_reload, args=(daemon, config_path), name="reload", daemon=True)
            reloading.start()
        now = time.monotonic()
        if now >= next_prune:
            next_prune = now + PRUNE_EVERY
            alerts = daemon.config.alerts
            pruned = daemon.events.prune(daemon.config.events.retention, snapshots=alerts.snapshots,
                                         max_bytes=alerts.snapshots_max_bytes)
            if pruned:
                log.info("retention: removed %d events older than %.0f days", pruned,
                         daemon.config.events.retention / 86400)
        if now >= next_trim:
            next_trim = now + TRIM_EVERY
            daemon.classifier.drop_idle_pipelined(BATCH_CLASSIFIER_IDLE)
            trim()      # free heap pages back to the system: see monitor/core/memory.py (issue 24)
        status = daemon.status_line()
        if daemon.healthy():
            notifier.notify("WATCHDOG=1", *([f"STATUS={status}"] if status != last_status else []))
        elif interval:
            log.warning("heartbeat stale: not pinging the systemd watchdog")
        last_status = status
    if reloading is not None and reloading.is_alive():
        daemon._stopping = True
        reloading.join(RELOAD_JOIN)


def _reload(daemon: Daemon, config_path: str) -> None:
    try:
        new = load_config(config_path)
    except ConfigError as e:
        log.error("reload refused, keeping the running config:\n%s", format_errors(e, config_path))
        return
    try:
        daemon.reload(new)
    except Exception:
        log.exception("reload failed part-way; the daemon keeps running")
