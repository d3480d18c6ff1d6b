"""The daemon's registry exports no `_created` series, whatever prometheus-client's process-wide switch says."""
from __future__ import annotations

import prometheus_client.metrics
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from monitor.core.metrics import Metrics

CAMERAS = ("driveway", "porch", "garden")


def populated() -> Metrics:
    """A Metrics with every collector holding series, each labelled one per camera (or rule, sink, code...)."""
    metrics = Metrics()
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        names = collector._labelnames
        children = [collector.labels(*(f"{c}{i}" for i in range(len(names)))) for c in CAMERAS] if names \
            else [collector]
        for child in children:
            kind = collector._type
            if kind == "counter":
                child.inc()
            elif kind == "gauge":
                child.set(1)
            elif kind == "histogram":
                child.observe(0.01)
            elif kind == "info":
                child.info({"name": "demo"})
    return metrics


def series(text: str) -> list[str]:
    """Sample names of an exposition, one per series."""
    return [s.name for family in text_string_to_metric_families(text) for s in family.samples]


@pytest.mark.parametrize("library_exports_created", [True, False], ids=["library-on", "library-off"])
def test_no_created_series_whatever_the_library_switch(monkeypatch: pytest.MonkeyPatch,
                                                       library_exports_created: bool) -> None:
    # prometheus_client reads this switch at every collection (disable_created_metrics() and the
    # PROMETHEUS_DISABLE_CREATED_SERIES variable set it): set it either way after Metrics was imported and built.
    metrics = populated()
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", library_exports_created)
    exported = series(generate_latest(metrics.registry).decode())
    assert [name for name in exported if name.endswith("_created")] == []
    assert "monitor_frames_captured_total" in exported and "monitor_inference_seconds_count" in exported

    # What a plain registry would have exported from the same collectors, in the same run: the check above can
    # fail, and the figure of the change.
    plain = [s.name for family in CollectorRegistry.collect(metrics.registry) for s in family.samples]
    created = [name for name in plain if name.endswith("_created")]
    assert (len(created) > 0) == library_exports_created
    assert len(exported) == len(plain) - len(created)
    print(f"\nseries exported: {len(plain)} with _created, {len(exported)} without "
          f"({len(created)} _created series dropped, {len(CAMERAS)} of each label)")


def test_get_sample_value_still_reads_the_series() -> None:
    metrics = populated()
    assert metrics.registry.get_sample_value("monitor_frames_captured_total", {"camera": "driveway0"}) == 1.0
    assert metrics.registry.get_sample_value("monitor_frames_captured_created", {"camera": "driveway0"}) is None
