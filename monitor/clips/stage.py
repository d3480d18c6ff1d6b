"""Clips across a reload: which clip keys apply without restarting a camera, and the INFO lines of a change.

The daemon creates the clip stage (ClipManager) at a reload that turns clips on, and stops it (recorders finish
their clips) at one that turns them off. A camera is restarted by a reload when its config changed; pre, post,
max_length and max_preroll_bytes need no restart (the ring takes new bounds, the recorder reads post and
max_length at every step), so they are left out of that comparison: `restart_view`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional

if TYPE_CHECKING:
    from monitor.config.types import CameraConfig, Config

# Per-camera clip keys a running camera takes without a restart (Camera.retune_clips, ClipRecorder's settings).
LIVE_KEYS = ("pre", "post", "max_length", "max_preroll_bytes")


def restart_view(cfg: Optional[CameraConfig]) -> Optional[CameraConfig]:
    """`cfg` as far as restarting its camera is concerned: the live clip keys blanked (None stays None)."""
    if cfg is None:
        return None
    return cfg.model_copy(update={"clips": cfg.clips.model_copy(update={k: None for k in LIVE_KEYS})})


def on_off_line(before: Iterable[str], after: Iterable[str]) -> Optional[str]:
    """The INFO line of a reload that changed which cameras record; None when it did not."""
    was, now = list(before), list(after)
    if set(was) == set(now):
        return None
    if not now:
        return "clips: off"
    off = [n for n in was if n not in now]
    return f"clips: on for cameras {', '.join(now)}" + (f"; off for {', '.join(off)}" if off else "")


def settings_line(old: Config, new: Config, recording: Iterable[str]) -> Optional[str]:
    """The INFO line of the clip settings a reload changed live for cameras that record before and after."""
    olds = {c.name: c.clips for c in old.cameras}
    news = {c.name: c.clips for c in new.cameras}
    parts: list[str] = []
    for name in recording:
        a, b = olds.get(name), news.get(name)
        if a is None or b is None:
            continue
        diffs = [f"{k} {getattr(a, k)} -> {getattr(b, k)}" for k in LIVE_KEYS if getattr(a, k) != getattr(b, k)]
        if diffs:
            parts.append(f"{name} {', '.join(diffs)}")
    ra, rb = old.clips.retain, new.clips.retain
    for key in type(ra).model_fields:
        if getattr(ra, key) != getattr(rb, key):
            parts.append(f"retain.{key} {getattr(ra, key)} -> {getattr(rb, key)}")
    if old.clips.min_free_bytes != new.clips.min_free_bytes:
        parts.append(f"min_free_bytes {old.clips.min_free_bytes} -> {new.clips.min_free_bytes}")
    return "clips: applied live: " + "; ".join(parts) if parts else None
