"""Event: one alert event, the one type every consumer reads (engine, store, sinks, MQTT, the HTTP API).

Immutable: the engine makes a new instance as the event learns more (its id after the store insert, its end and
peak when it ends) with dataclasses.replace, so an instance handed to a sink thread never changes under it.
Each field's `doc` metadata is its documentation; the API's response model (monitor.web.models.Event) is built
from these fields and carries it into /openapi.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from monitor.core import groups
from monitor.core.region import Box

# Fields the webhook and MQTT payloads leave out, so they carry what they always did: `note`, which only the history
# has (crash recovery writes it on rows a dead process left open), and `box`, which labelling reads.
# The clip fields too: a clip completes after the event message, so its URL goes out in a follow-up (monitor/clips).
NOT_SENT = frozenset({"note", "box", "clip", "clip_seconds", "clip_state"})
CLIP_STATES = ("none", "recording", "complete", "failed")


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    # None until stored, and for good when the write failed (the alert still goes out)
    id: int | None = field(default=None, metadata={"doc": "row id in the event history"})
    camera: str = field(metadata={"doc": "camera name"})
    rule: str = field(metadata={"doc": "watchlist rule name"})
    label: str = field(metadata={"doc": "the rule entry that matched: an ImageNet class or group, or head:class"})
    score: float = field(metadata={"doc": "the entry's score on the frame that started the event"})
    peak_score: float = field(metadata={"doc": "highest score while the event lasted (so far, while open)"})
    started_at: float = field(metadata={"doc": "Unix time the event started"})
    ended_at: float | None = field(default=None, metadata={"doc": "Unix time it ended (null while open)"})
    snapshot: str | None = field(default=None, metadata={
        "doc": "server path of the snapshot JPEG (null: not written, or no alerts.snapshots)"})
    box: Box | None = field(default=None, metadata={
        "doc": "the frame region [x, y, width, height] in pixels the label was scored on (the camera's crop, or the "
               "custom class's own crop, when the frame was captured); labelling the event files this region"})
    note: str | None = field(default=None, metadata={
        "doc": "set when the event was closed at startup after the process died while it was open"})
    clip: str | None = field(default=None, metadata={
        "doc": "the event's video clip: file name relative to the clips folder (null: none)"})
    clip_seconds: float | None = field(default=None, metadata={"doc": "duration of the clip in seconds"})
    clip_state: str = field(default="none", metadata={
        "doc": "none (no clip) | recording | complete (playable) | failed (nothing kept)"})

    @property
    def custom(self) -> tuple[str, str] | None:
        """(head, class) of an event of a custom-class entry ("porch:package"), None for an ImageNet one."""
        head, sep, cls = self.label.partition(":")
        return (head, cls) if sep else None

    def payload(self, kind: str, language: str = "en", node: str | None = None) -> dict[str, Any]:
        """The event as the webhook POSTs it and the MQTT `events` topic carries it: its fields but NOT_SENT,
        `clip_url` (the server path of its clip once complete, else null), then `kind` ("start" | "end" |
        "clip": the follow-up when the clip completes after the end), `display`, and `node` (node.name: which daemon
        of several sent it) when given."""
        doc = {name: getattr(self, name) for name in SENT_FIELDS}
        # the route of monitor/clips/files.clip_url (a later stage, not importable here)
        doc["clip_url"] = (f"/api/events/{self.id}/clip.mp4" if self.clip_state == "complete"
                           and self.id is not None else None)
        doc["kind"] = kind
        # last: the label in `language` (labels.language), beside the English label, never instead of it
        doc["display"] = groups.display_name(self.label, language)
        if node is not None:
            doc["node"] = node
        return doc


SENT_FIELDS = tuple(f.name for f in fields(Event) if f.name not in NOT_SENT)
