"""Smoothed rule scores and rules on custom classes ("porch:package"), on the real engine and SQLite store."""
from __future__ import annotations

import numpy as np
import pytest

from monitor.alerts.engine import AlertEngine
from monitor.config.types import RuleConfig, SmoothingConfig
from monitor.inference.results import CustomResult, Result
from tests.test_alerts import GOLDEN, LABRADOR, FakeFrame, IMAGE, env, result, step  # noqa: F401 (fixture)


def dog_rule(**kw: object) -> RuleConfig:
    args = dict(name="dogs", classes=("dog",), indices=(("dog", (GOLDEN, LABRADOR)),), min_score=0.6,
                min_frames=1, end_after=3.0, cooldown=0.0)
    args.update(kw)
    return RuleConfig(**args)  # type: ignore[arg-type]


FLICKER = [0.9, 0.1, 0.1, 0.1, 0.1] * 4      # one-frame spikes, each an end_after apart


def run(engine: AlertEngine, clock, scores) -> None:
    for s in scores:
        step(engine, clock, "cam1", {GOLDEN: s})


def test_median_ignores_single_frame_spikes(env) -> None:
    metrics, store, clock = env
    plain = AlertEngine([dog_rule()], store, None, metrics, clock=clock)
    run(plain, clock, FLICKER)
    assert len(store.query()) == 4          # every spike is an event without smoothing
    plain.close_all()
    smoothed = AlertEngine([dog_rule(name="smooth", smoothing=SmoothingConfig(window=5, method="median"))], store, None,
                           metrics, clock=clock)
    run(smoothed, clock, FLICKER)
    assert [e for e in store.query() if e.rule == "smooth"] == []
    run(smoothed, clock, [0.9] * 3)         # a real, lasting presence: the median follows within 3 frames
    events = [e for e in store.query() if e.rule == "smooth"]
    assert len(events) == 1 and events[0].score == pytest.approx(0.9)


def test_mean_over_window(env) -> None:
    metrics, store, clock = env
    engine = AlertEngine([dog_rule(min_score=0.5, smoothing=SmoothingConfig(window=4, method="mean"))], store, None,
                         metrics, clock=clock)
    run(engine, clock, [0.25] * 4 + [0.75])             # mean of the last 4: 0.375, no hit
    assert store.query() == []
    run(engine, clock, [0.75])                          # mean 0.5: hits
    events = store.query()
    assert len(events) == 1 and events[0].score == pytest.approx(0.5)
    assert events[0].started_at == clock.t


def custom_result(t: float, package: float, seq: int = 1, head: str = "porch") -> Result:
    p = np.zeros(1000, np.float32)
    p[5] = 1.0
    return Result(camera="cam1", frame=FakeFrame(IMAGE, seq, t, t), predictions=[], probabilities=p,
                  classified_at=t, latency=0.01,
                  custom={head: CustomResult(head, ("none", "package"),
                                             np.array([1 - package, package], np.float32))})


def test_rule_on_a_custom_class_and_imagenet_side_by_side(env) -> None:
    metrics, store, clock = env
    rule = RuleConfig(name="parcel", classes=("porch:package", "dog"),
                      indices=(("porch:package", ()), ("dog", (GOLDEN, LABRADOR))), min_score=0.7, min_frames=2,
                      end_after=3.0, cooldown=0.0)
    engine = AlertEngine([rule], store, None, metrics, clock=clock)
    for s in (0.2, 0.95, 0.3, 0.95, 0.3):   # never two hits in a row
        clock.t += 1
        engine.observe(custom_result(clock.t, s))
    assert store.query() == []
    for s in (0.8, 0.9):
        clock.t += 1
        engine.observe(custom_result(clock.t, s))
    events = store.query()
    assert len(events) == 1 and events[0].label == "porch:package" and events[0].score == pytest.approx(0.9)
    assert engine.active("cam1") == ["porch:package"]
    # a frame from a camera the head does not run on (no custom result) scores 0 for the custom entry
    clock.t += 10
    engine.observe(result("cam1", {}, clock.t))
    assert store.query()[0].ended_at is not None
    # a head that lost the class (retrained without it) cannot hit, and nothing breaks
    assert CustomResult("porch", ("none", "person"), np.array([0.1, 0.9], np.float32)).score("package") == 0.0
