"""Every topic name of the MQTT interface in one place (publisher, control, discovery and tests agree on it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str
    node: str | None = None     # a fleet node: availability of its own (the cameras it runs follow it)

    @property
    def status(self) -> str:
        """Availability (online/offline, the last will): per node in a fleet, where nodes share the prefix and
        a camera's entities point at the node that runs it now."""
        return f"{self.prefix}/node/{self.node}/status" if self.node else f"{self.prefix}/status"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def discovery_index(self) -> str:
        return f"{self.prefix}/discovery_index"

    @property
    def enabled_set_filter(self) -> str:
        return f"{self.prefix}/+/enabled/set"

    def label(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/label"

    def label_attributes(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/label/attributes"

    def custom_label(self, camera: str, custom_set: str) -> str:
        """The top class of a custom class set (custom_classes[].name) on a camera."""
        return f"{self.prefix}/{camera}/{custom_set}/label"

    def custom_label_attributes(self, camera: str, custom_set: str) -> str:
        return f"{self.prefix}/{camera}/{custom_set}/label/attributes"

    def rule(self, camera: str, rule: str) -> str:
        return f"{self.prefix}/{camera}/{rule}"

    def snapshot(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/snapshot"

    def state(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/state"

    def state_attributes(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/state/attributes"

    def enabled_set(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/enabled/set"

    def enabled_state(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/enabled/state"

    def camera_of_enabled_set(self, topic: str) -> str | None:
        """`<prefix>/<camera>/enabled/set` -> camera; None for any other topic."""
        head = f"{self.prefix}/"
        if not topic.startswith(head) or not topic.endswith("/enabled/set"):
            return None
        camera = topic[len(head):-len("/enabled/set")]
        return camera if camera and "/" not in camera else None
