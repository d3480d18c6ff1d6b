"""Prometheus metrics of one daemon instance, on a registry of its own (tests get a fresh one each)."""
from __future__ import annotations

import copy
import os
import platform
import shutil
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from monitor import __version__

# Inference of a batch on 2 cores: ~2 ms (INT8) to ~100 ms (FP32, batch 4).
_INFERENCE_BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0)
# Capture-to-result: dominated by waiting for the worker; alerts matter within a second.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class NoCreatedRegistry(CollectorRegistry):
    """A registry that exports no `<name>_created` samples. prometheus-client adds one beside every counter,
    histogram and summary series (the series' creation time): they double the series count and no dashboard
    reads them. Dropped at collection rather than with prometheus_client.disable_created_metrics() or
    PROMETHEUS_DISABLE_CREATED_SERIES, which are process-wide switches: this holds whatever another import
    sets them to, and whenever it does."""

    def collect(self) -> Iterator[Metric]:
        for metric in super().collect():
            created = metric.name + "_created"
            if any(sample.name == created for sample in metric.samples):
                metric = copy.copy(metric)      # a collector may hand out a Metric it keeps
                metric.samples = [sample for sample in metric.samples if sample.name != created]
            yield metric


DiskFolders = Callable[[], Mapping[str, Optional[Path]]]


def _existing(path: Path) -> Path:
    """The folder itself or, not made yet (no snapshot so far), its nearest existing parent: the file system it will
    be made on is the one that fills up."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


class DiskCollector:
    """monitor_disk_free_bytes / monitor_disk_size_bytes of the folders the daemon writes (label `folder`), read
    with statvfs at each scrape: always current, no thread, and a reload that moves a folder is followed because
    the folders are asked for each time. Free = what an unprivileged process may still use (f_bavail)."""

    def __init__(self, folders: DiskFolders) -> None:
        self.folders = folders

    def collect(self) -> Iterator[Metric]:
        free = GaugeMetricFamily("monitor_disk_free_bytes", "Bytes still writable on the file system of a folder "
                                 "the daemon writes", labels=["folder"])
        size = GaugeMetricFamily("monitor_disk_size_bytes", "Size of the file system of a folder the daemon writes",
                                 labels=["folder"])
        for name, path in self.folders().items():
            if path is None:
                continue                    # not configured (e.g. no snapshot folder)
            try:
                usage = shutil.disk_usage(_existing(path))
            except OSError:
                continue                    # unreadable now: no sample rather than a wrong one
            free.add_metric([name], float(usage.free))
            size.add_metric([name], float(usage.total))
        yield free
        yield size


class Metrics:
    """Every collector the daemon exports. Components receive this object and touch only their part."""

    def __init__(self) -> None:
        self.registry: CollectorRegistry = NoCreatedRegistry()
        r = self.registry
        # capture
        self.frames_captured = Counter("monitor_frames_captured", "Frames read from the camera", ["camera"], registry=r)
        self.frames_classified = Counter("monitor_frames_classified", "Frames classified", ["camera"], registry=r)
        self.frames_failed = Counter("monitor_frames_failed", "Due frames that could not be classified (bad frame)",
                                     ["camera"], registry=r)
        self.frames_dropped = Counter(
            "monitor_frames_dropped", "Due frames replaced by a newer one before the worker took them", ["camera"],
            registry=r)
        self.frames_skipped_still = Counter(
            "monitor_frames_skipped_still", "Due frames skipped by the motion gate (scene still)", ["camera"], registry=r)
        self.camera_connected = Gauge("monitor_camera_connected", "1 while the camera delivers frames", ["camera"],
                                      registry=r)
        self.camera_reconnects = Counter("monitor_camera_reconnects", "Reopen attempts after a failure", ["camera"],
                                         registry=r)
        self.camera_last_frame = Gauge("monitor_camera_last_frame_timestamp_seconds",
                                       "Unix time of the newest frame read", ["camera"], registry=r)
        # inference
        self.inference_seconds = Histogram("monitor_inference_seconds", "Time to classify one batch",
                                           buckets=_INFERENCE_BUCKETS, registry=r)
        self.capture_to_result_seconds = Histogram(
            "monitor_capture_to_result_seconds", "From frame capture to its classification result",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("monitor_batch_size", "Frames per inference batch",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16), registry=r)
        # Where the worker's batch time goes (monitor/core/threadclock.py): on_cpu, runnable (waiting for a core)
        # or blocked (waiting for the GIL or a lock). A busy box shows runnable; capture threads holding the
        # GIL show blocked.
        self.inference_thread_seconds = Counter(
            "monitor_inference_thread_seconds", "Wall time of the inference worker's batches by where it went: "
            "on_cpu, runnable (waiting for a core), blocked (waiting for the GIL or a lock)", ["state"], registry=r)
        self.custom_class_probability = Gauge(
            "monitor_custom_class_probability", "Probability of each class of a custom head on the newest frame",
            ["camera", "head", "class"], registry=r)
        # alerts and sinks
        self.alerts = Counter("monitor_alerts", "Events started", ["rule", "label"], registry=r)
        self.sink_failures = Counter("monitor_sink_failures", "Alert deliveries that failed", ["sink"], registry=r)
        self.sink_dropped = Counter("monitor_sink_dropped", "Alert deliveries dropped because the sink queue was full",
                                    ["sink"], registry=r)
        self.events_db_errors = Counter("monitor_events_db_errors", "Event history writes that failed", registry=r)
        # clips
        self.clips_written = Counter("monitor_clips_written", "Event clips completed", ["camera"], registry=r)
        self.clips_failed = Counter("monitor_clips_failed", "Event clips that failed (nothing kept)", ["camera"],
                                    registry=r)
        self.clips_bytes = Gauge("monitor_clips_bytes", "Bytes of clip files on disk (at the last retention pass)",
                                 registry=r)
        self.clips_disk_full = Gauge("monitor_clips_disk_full", "1 while recording is stopped for lack of disk space",
                                     registry=r)
        self.clip_preroll_bytes = Gauge("monitor_clip_preroll_bytes", "Bytes of packets held for the pre-roll",
                                        ["camera"], registry=r)
        self.clip_preroll_dropped = Counter(
            "monitor_clip_preroll_dropped_bytes", "Pre-roll packets dropped over max_preroll_bytes", ["camera"],
            registry=r)
        self.clip_frames_encoded = Counter(
            "monitor_clip_frames_encoded", "Frames encoded to H.264 for clips (clips.encode, cameras read by OpenCV)",
            ["camera"], registry=r)
        self.clip_encode_dropped = Counter(
            "monitor_clip_encode_dropped", "Frames the clip encoder could not keep up with (queue full), not encoded",
            ["camera"], registry=r)
        # web
        self.stream_viewers = Gauge("monitor_stream_viewers", "Clients watching the MJPEG stream", ["camera"],
                                    registry=r)
        self.stream_frames_skipped = Counter(
            "monitor_stream_frames_skipped", "MJPEG frames a slow viewer skipped", ["camera"], registry=r)
        self.http_requests = Counter("monitor_http_requests", "HTTP requests answered", ["code"], registry=r)
        # mqtt
        self.mqtt_connected = Gauge("monitor_mqtt_connected", "1 while connected to the MQTT broker", registry=r)
        self.mqtt_published = Counter("monitor_mqtt_published", "MQTT messages handed to the broker", registry=r)
        self.mqtt_dropped = Counter("monitor_mqtt_dropped",
                                    "MQTT messages dropped because the outgoing queue was full", registry=r)
        self.mqtt_resyncs_suppressed = Counter(
            "monitor_mqtt_resyncs_suppressed",
            "Home Assistant 'online' messages answered by no re-publish of their own (one per interval)", registry=r)
        self.camera_paused = Gauge("monitor_camera_paused", "1 while classifying the camera is paused over MQTT",
                                   ["camera"], registry=r)
        # info
        self.build_info = Info("monitor_build", "Version of the daemon and its runtime", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.model_info = Info("monitor_model", "The loaded model artifact", registry=r)
        self.node_info = Gauge("monitor_node_info", "1, labelled with this daemon's node name (node.name)", ["node"],
                               registry=r)

    def enable_fleet(self) -> None:
        """The monitor_fleet_* collectors, registered only on a fleet node (monitoring/ alerts read them)."""
        r = self.registry
        self.fleet_db_up = Gauge("monitor_fleet_db_up", "1 while the fleet's PostgreSQL answers", registry=r)
        self.fleet_outbox_pending = Gauge("monitor_fleet_outbox_pending", "Events not yet replicated to PostgreSQL",
                                          registry=r)
        self.fleet_outbox_lag = Gauge("monitor_fleet_outbox_lag_seconds",
                                      "Age of the oldest event change not yet in PostgreSQL (0: none waiting)",
                                      registry=r)
        self.fleet_outbox_replicated = Counter("monitor_fleet_outbox_replicated",
                                               "Event rows written to PostgreSQL", registry=r)
        self.fleet_cameras_held = Gauge("monitor_fleet_cameras_held", "Fleet cameras this node holds and runs",
                                        registry=r)
        self.fleet_lease_acquired = Counter("monitor_fleet_lease_acquired", "Camera leases claimed", registry=r)
        self.fleet_lease_lost = Counter("monitor_fleet_lease_lost",
                                        "Camera leases given up (rebalance) or lost (renewal failed: fenced)",
                                        registry=r)

    def watch_disk(self, folders: DiskFolders) -> None:
        """Export free and total bytes of the file systems of `folders()` ({label: folder or None}); once per
        registry (the "disk nearly full" alert of monitoring/prometheus/rules.yml reads them)."""
        self.registry.register(DiskCollector(folders))

    def remove_camera(self, camera: str) -> None:
        """Drop every series labelled with `camera` (it was removed by a reload): a zeroed series would be exported
        for ever and look like a camera that is down."""
        for collector in (self.frames_captured, self.frames_classified, self.frames_dropped,
                          self.frames_skipped_still, self.camera_connected, self.camera_reconnects,
                          self.camera_last_frame, self.stream_viewers, self.stream_frames_skipped,
                          self.camera_paused, self.clips_written, self.clips_failed, self.clip_preroll_bytes,
                          self.clip_preroll_dropped, self.clip_frames_encoded, self.clip_encode_dropped):
            try:
                collector.remove(camera)
            except KeyError:
                pass             # never labelled (e.g. nobody watched its stream)
