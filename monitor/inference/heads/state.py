"""CustomState: the heads the worker runs, their example stores and the rules that name their classes, as one
immutable set (swapped under one reference on a reload). Apart from service.py so that the trainer, which reads
the current set, and the service, which owns the trainer, do not import each other."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from monitor.inference.heads.labelling import ExampleStore

if TYPE_CHECKING:
    from monitor.inference.heads.headset import HeadSet


@dataclass(frozen=True)
class CustomState:
    """One consistent set: the heads the worker runs, their example stores, the rules that name their classes."""
    heads: HeadSet
    stores: Mapping[str, ExampleStore]
    rules: tuple[Any, ...]


def build_state(heads: HeadSet, examples: Mapping[str, Path], rules: Sequence[Any] = ()) -> CustomState:
    stores = {}
    for name, path in examples.items():
        entry = heads.get(name)
        stores[name] = ExampleStore(path, key=f"{entry.key}.examples" if entry is not None and entry.key
                                    else f"examples of {name!r}")
    return CustomState(heads, MappingProxyType(stores), tuple(rules))
