"""Words users mean ("dog", "car", ...) -> the ImageNet-1k indices they cover (data: monitor/data/groups.yaml).

Names are matched case-insensitively, with `_` read as a space and runs of spaces collapsed ("Golden_Retriever"
finds "golden retriever"). An exact-case class name always wins: ImageNet has both "Cardigan" (the corgi) and
"cardigan" (the sweater).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from monitor.core.labels import imagenet_classes, imagenet_classes_zh

# Groups are what users usually mean, so a group gets this much on top of its similarity when ranking
# suggestions ("dgo" is closer to "dingo" than to "dog" by difflib's measure alone).
_GROUP_BONUS = 0.1
_SUGGEST_CUTOFF = 0.6
# CJK ideographs (basic block and extension A): a name holding one is compared with the Chinese names
# Chinese names are 2-4 characters: one wrong character of two is a ratio of 0.5 ("金鲨" for 金鱼)
_SUGGEST_CUTOFF_ZH = 0.5
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def normalize(name: str) -> str:
    """The form names are compared in: lower case, `_` as space, single spaces, no outer spaces."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().lower()


@dataclass(frozen=True)
class _Tables:
    exact: dict[str, int]                       # class name as written in imagenet_classes.txt -> index
    groups: dict[str, tuple[int, ...]]          # canonical group name -> sorted indices
    group_keys: dict[str, str]                  # normalized group name or alias -> canonical group name
    class_keys: dict[str, tuple[int, ...]]      # normalized class name -> its indices (2 when ambiguous)
    missing: dict[str, str]                     # normalized word with no ImageNet class -> why
    zh: _ZhTables | None = None                 # Chinese names (None: tables built from a test document)


@dataclass(frozen=True)
class _ZhTables:
    classes: dict[str, int]                     # normalized Chinese class name -> index
    groups: dict[str, str]                      # canonical group name -> its Chinese name
    group_keys: dict[str, str]                  # normalized Chinese group name or alias -> canonical group name
    missing: dict[str, str]                     # normalized Chinese word with no ImageNet class -> why


def group_names() -> list[str]:
    """Canonical group names, in file order."""
    return list(_tables().groups)


def group_indices(name: str) -> tuple[int, ...] | None:
    """The indices of group `name` (or of an alias, English or Chinese), None if no such group."""
    tables = _tables()
    canonical = tables.group_keys.get(normalize(name))
    if canonical is None and tables.zh is not None:
        canonical = tables.zh.group_keys.get(normalize(name))
    return None if canonical is None else tables.groups[canonical]


def group_display_name(name: str, language: str) -> str:
    """A canonical group's name in `language` ("en": itself, "zh": its Chinese name)."""
    zh = _tables().zh
    if language == "zh" and zh is not None:
        return zh.groups.get(name, name)
    return name


def display_name(canonical: str, language: str) -> str:
    """The display name of a canonical class or group name (as lookup() returns it) in `language`."""
    tables = _tables()
    if language != "zh" or tables.zh is None:
        return canonical
    if canonical in tables.zh.groups:
        return tables.zh.groups[canonical]
    if canonical in tables.exact:
        return imagenet_classes_zh()[tables.exact[canonical]]
    return canonical


def lookup(name: str) -> tuple[str, tuple[int, ...]]:
    """(canonical class or group name, indices) for a class name or group name; KeyError otherwise.

    The KeyError's message says why: no such name, an ambiguous spelling, or a word ImageNet has no class for.
    """
    tables = _tables()
    if name in tables.exact:
        return name, (tables.exact[name],)
    key = normalize(name)
    if key in tables.group_keys:
        canonical = tables.group_keys[key]
        return canonical, tables.groups[canonical]
    if key in tables.class_keys:
        indices = tables.class_keys[key]
        classes = imagenet_classes()
        if len(indices) == 1:
            return classes[indices[0]], indices
        spelled = " or ".join(repr(classes[i]) for i in indices)
        raise KeyError(f"{name!r} is ambiguous: write it exactly as {spelled}")
    if key in tables.missing:
        raise KeyError(tables.missing[key])
    zh = tables.zh
    if zh is not None:
        if key in zh.classes:
            return imagenet_classes()[zh.classes[key]], (zh.classes[key],)
        if key in zh.group_keys:
            canonical = zh.group_keys[key]
            return canonical, tables.groups[canonical]
        if key in zh.missing:
            raise KeyError(zh.missing[key])
    raise KeyError(f"unknown class {name!r}")


def resolve(name: str) -> tuple[int, ...]:
    """Indices for an ImageNet class name (exact or case-insensitive) or a group name; KeyError otherwise."""
    return lookup(name)[1]


def explain_missing(name: str) -> str | None:
    """Why ImageNet-1k has no class for `name` ("person", "deer", 行人, ...), None if it is not such a word."""
    tables = _tables()
    key = normalize(name)
    why = tables.missing.get(key)
    if why is None and tables.zh is not None:
        why = tables.zh.missing.get(key)
    return why


def near_missing(name: str) -> tuple[str, str] | None:
    """(word, why) when `name` looks like a misspelling of a word ImageNet has no class for ("persn")."""
    missing = _tables().missing
    close = difflib.get_close_matches(normalize(name), list(missing), n=1, cutoff=0.8)
    return (close[0], missing[close[0]]) if close else None


def suggest(name: str, n: int = 3) -> list[str]:
    """Up to `n` class or group names closest to `name`, best first (groups slightly preferred).

    A name written in Chinese is compared with the Chinese names and gets Chinese suggestions.
    """
    key = normalize(name)
    candidates: dict[str, tuple[float, str]] = {}   # normalized -> (rank, display name)
    pools: tuple[tuple[Any, float], ...] = ((group_names(), _GROUP_BONUS), (imagenet_classes(), 0.0))
    cutoff = _SUGGEST_CUTOFF
    zh = _tables().zh
    if zh is not None and _CJK.search(name):
        pools = ((list(zh.groups.values()), _GROUP_BONUS), (imagenet_classes_zh(), 0.0))
        cutoff = _SUGGEST_CUTOFF_ZH
    for names, bonus in pools:
        for display in names:
            similarity = _similarity(key, normalize(display))
            if similarity >= cutoff:
                candidates.setdefault(normalize(display), (similarity + bonus, display))
    ranked = sorted(candidates.values(), key=lambda c: (-c[0], c[1]))
    return [display for _, display in ranked[:n]]


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


# ---------------------------------------------------------------------------------------------------------
# Loading and checking the package data. A mistake in groups.yaml is a bug, reported as RuntimeError.


@lru_cache(maxsize=1)
def _tables() -> _Tables:
    text = resources.files("monitor").joinpath("data/groups.yaml").read_text(encoding="utf-8")
    tables = build_tables(yaml.safe_load(text), imagenet_classes())
    zh_text = resources.files("monitor").joinpath("data/groups_zh.yaml").read_text(encoding="utf-8")
    zh = build_zh_tables(yaml.safe_load(zh_text), tables, imagenet_classes_zh())
    return _Tables(exact=tables.exact, groups=tables.groups, group_keys=tables.group_keys,
                   class_keys=tables.class_keys, missing=tables.missing, zh=zh)


def build_zh_tables(data: Any, tables: _Tables, zh_classes: tuple[str, ...]) -> _ZhTables:
    """Check and index the groups_zh.yaml document `data`: every group named, no name meaning two things."""
    specs = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(specs, dict):
        raise RuntimeError("groups_zh.yaml: 'groups' must be a mapping")
    if set(specs) != set(tables.groups):
        unnamed, unknown = set(tables.groups) - set(specs), set(specs) - set(tables.groups)
        raise RuntimeError(f"groups_zh.yaml: groups without a Chinese name: {sorted(unnamed)}; "
                           f"not in groups.yaml: {sorted(unknown)}")
    classes = {normalize(cls): i for i, cls in enumerate(zh_classes)}
    english = {**tables.class_keys, **{k: () for k in tables.group_keys}}
    names: dict[str, str] = {}
    keys: dict[str, str] = {}
    for group, spec in specs.items():
        if not isinstance(spec, dict) or not str(spec.get("name") or "").strip():
            raise RuntimeError(f"groups_zh.yaml: group {group!r} needs a non-empty name")
        names[group] = str(spec["name"]).strip()
        for word in (spec["name"], *(spec.get("aliases") or [])):
            key = normalize(str(word))
            if key in classes or key in english:
                raise RuntimeError(f"groups_zh.yaml: {word!r} ({group}) is also a class or English name")
            if key in keys:
                raise RuntimeError(f"groups_zh.yaml: {word!r} names both {keys[key]!r} and {group!r}")
            keys[key] = group
    missing: dict[str, str] = {}
    for english_word, words in (data.get("not_in_imagenet") or {}).items():
        why = tables.missing.get(normalize(english_word))
        if why is None:
            raise RuntimeError(f"groups_zh.yaml: not_in_imagenet: {english_word!r} is not in groups.yaml's list")
        for word in words:
            key = normalize(str(word))
            if key in classes or key in keys:
                raise RuntimeError(f"groups_zh.yaml: {word!r} is listed as missing but is a class or group")
            missing[key] = why
    return _ZhTables(classes=classes, groups=names, group_keys=keys, missing=missing)


def build_tables(data: Any, classes: tuple[str, ...]) -> _Tables:
    """Check and index the groups.yaml document `data` against the class list."""
    class_keys: dict[str, tuple[int, ...]] = {}
    for index, cls in enumerate(classes):
        key = normalize(cls)
        class_keys[key] = class_keys.get(key, ()) + (index,)

    specs = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(specs, dict) or not specs:
        raise RuntimeError("groups.yaml: 'groups' must be a non-empty mapping")
    exact = {cls: i for i, cls in enumerate(classes)}
    groups: dict[str, tuple[int, ...]] = {}
    for name in specs:
        _group_indices(name, specs, exact, groups, ())
    group_keys = _group_keys(specs, class_keys)
    missing = _missing_words(data.get("not_in_imagenet", []), class_keys, group_keys)
    return _Tables(exact=exact, groups={name: groups[name] for name in specs}, group_keys=group_keys,
                   class_keys=class_keys, missing=missing)


def _group_indices(name: str, specs: dict, exact: dict[str, int], done: dict[str, tuple[int, ...]],
                   stack: tuple[str, ...]) -> tuple[int, ...]:
    if name in done:
        return done[name]
    if name in stack:
        raise RuntimeError(f"groups.yaml: groups include each other: {' -> '.join(stack + (name,))}")
    spec = specs[name]
    allowed = {"about", "classes", "ranges", "include", "aliases"}
    if not isinstance(spec, dict) or set(spec) - allowed:
        raise RuntimeError(f"groups.yaml: group {name!r} must be a mapping with keys {sorted(allowed)}")
    indices: set[int] = set()
    for cls in spec.get("classes", []):
        if cls not in exact:
            raise RuntimeError(f"groups.yaml: group {name!r}: {cls!r} is not an ImageNet class name")
        indices.add(exact[cls])
    for first, last in spec.get("ranges", []):
        if not 0 <= first <= last < len(exact):
            raise RuntimeError(f"groups.yaml: group {name!r}: bad range [{first}, {last}]")
        indices.update(range(first, last + 1))
    for other in spec.get("include", []):
        if other not in specs:
            raise RuntimeError(f"groups.yaml: group {name!r} includes unknown group {other!r}")
        indices.update(_group_indices(other, specs, exact, done, stack + (name,)))
    if not indices:
        raise RuntimeError(f"groups.yaml: group {name!r} covers no class")
    done[name] = tuple(sorted(indices))
    return done[name]


def _group_keys(specs: dict, class_keys: dict[str, tuple[int, ...]]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for name, spec in specs.items():
        for word in (name, *spec.get("aliases", [])):
            key = normalize(word)
            if key in class_keys:
                raise RuntimeError(f"groups.yaml: group name or alias {word!r} is also an ImageNet class name")
            if key in keys:
                raise RuntimeError(f"groups.yaml: {word!r} names both {keys[key]!r} and {name!r}")
            keys[key] = name
    return keys


def _missing_words(entries: Any, class_keys: dict, group_keys: dict) -> dict[str, str]:
    missing: dict[str, str] = {}
    for entry in entries:
        for word in entry["words"]:
            key = normalize(word)
            if key in class_keys or key in group_keys:
                raise RuntimeError(f"groups.yaml: {word!r} is listed as missing but is a class or group")
            missing[key] = str(entry["why"]).strip()
    return missing
