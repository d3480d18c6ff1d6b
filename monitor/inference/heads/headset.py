"""The heads the daemon runs: which cameras each applies to, on which crop, swappable while running."""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from monitor.core.region import Region
from monitor.inference.heads.head import Head, HeadError, load_head

if TYPE_CHECKING:
    from monitor.inference.preprocess import Crop


@dataclass(frozen=True)
class HeadEntry:
    name: str                          # custom_classes[].name, the prefix of "porch:package" in rules
    head: Head
    path: Path
    cameras: tuple[str, ...]           # empty = every camera
    crop: Crop | None                  # own region (a Region from the config; an extra crop in the same inference
                                       # call) or None: the frame's own region, whose features the worker has
    key: str = ""                      # "custom_classes[i]": what messages shown to clients name (never a path)
    retrain_interval: float = 0.0      # custom_classes[].retrain_interval (seconds)

    def applies_to(self, camera: str) -> bool:
        return not self.cameras or camera in self.cameras


class HeadSet:
    """Thread-safe: the worker reads `for_camera` on every batch; `swap` (retraining) replaces one head."""

    def __init__(self, entries: Sequence[HeadEntry], backbone_sha256: str) -> None:
        self.backbone_sha256 = backbone_sha256
        self._lock = threading.Lock()
        # entries built in code without a key are named by their position, as the config would name them
        self._entries: dict[str, HeadEntry] = {e.name: e if e.key else replace(e, key=f"custom_classes[{i}]")
                                               for i, e in enumerate(entries)}
        self._by_camera: dict[str, tuple[HeadEntry, ...]] = {}

    @classmethod
    def load(cls, configs: Sequence[Any], backbone_sha256: str) -> "HeadSet":
        """From custom_classes config entries (.name .head .cameras .crop); every bad head reported at once."""
        entries, errors = [], []
        for i, c in enumerate(configs):
            try:
                head = load_head(c.head, backbone_sha256)
            except HeadError as e:
                errors.append(f"custom_classes[{i}] ({c.name}): {e}")
                continue
            entries.append(HeadEntry(c.name, head, Path(c.head), tuple(c.cameras or ()),
                                     Region.of(c.crop) if c.crop is not None else None, key=f"custom_classes[{i}]",
                                     retrain_interval=float(getattr(c, "retrain_interval", 0.0))))
        if errors:
            raise HeadError("\n".join(errors))
        return cls(entries, backbone_sha256)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> HeadEntry | None:
        return self._entries.get(name)

    def entries(self) -> list[HeadEntry]:
        return list(self._entries.values())

    def for_camera(self, camera: str) -> tuple[HeadEntry, ...]:
        cached = self._by_camera.get(camera)
        if cached is None:
            with self._lock:
                cached = tuple(e for e in self._entries.values() if e.applies_to(camera))
                self._by_camera[camera] = cached
        return cached

    def swap(self, name: str, head: Head) -> HeadEntry:
        """Replace the head of entry `name` (a retrain): the next batch uses it; no restart, no lost frame."""
        head.check_backbone(self.backbone_sha256, where=f"custom class {name!r}")
        with self._lock:
            old = self._entries.get(name)
            if old is None:
                raise KeyError(f"no custom class {name!r} (configured: {', '.join(self._entries) or 'none'})")
            new = replace(old, head=head)
            self._entries = {**self._entries, name: new}     # replaced whole: readers see old or new
            self._by_camera = {}
        return new

    def rules_broken_by(self, name: str, classes: Sequence[str], rules: Sequence[Any]) -> list[str]:
        """Messages for every watch-list entry "name:class" whose class is not in `classes` (the classes of a
        head about to replace head `name`): such a rule would score 0 for ever, silently."""
        entry = self._entries.get(name)
        where = f"{entry.key}.examples" if entry is not None and entry.key else "its examples folder"
        out = []
        for i, rule in enumerate(rules):
            for j, (wanted, _) in enumerate(rule.indices):
                head_name, sep, cls = wanted.partition(":")
                if sep and head_name == name and cls not in classes:
                    out.append(f"rule watchlist[{i}] ({rule.name!r}) uses {wanted!r} (watchlist[{i}].classes[{j}]), "
                               f"but the new head has no class {cls!r} (it has: {', '.join(classes) or 'none'}); "
                               f"add examples of {cls!r} under {where} or change the rule")
        return out

    def check_rules(self, rules: Sequence[Any]) -> list[str]:
        """Messages for watch-list entries "head:class" naming an unknown head or a class the head lacks."""
        errors = []
        for i, rule in enumerate(rules):
            for j, (name, _) in enumerate(rule.indices):
                head_name, sep, cls = name.partition(":")
                if not sep:
                    continue
                entry = self._entries.get(head_name)
                if entry is None:
                    errors.append(f"watchlist[{i}].classes[{j}]: {name!r}: no custom class {head_name!r} "
                                  f"(custom_classes: {', '.join(self._entries) or 'none'})")
                elif cls not in entry.head.classes:
                    errors.append(f"watchlist[{i}].classes[{j}]: {name!r}: head {entry.path} has no class {cls!r} "
                                  f"(it has: {', '.join(entry.head.classes)})")
        return errors
