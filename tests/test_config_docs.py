"""The config documents itself: every key of config.schema.json carries a description (editors show it on hover),
and config.yaml, the commented example, shows every key at its place, and no key the schema lacks."""
from __future__ import annotations

import re

import pytest

from monitor.config.loader import json_schema
from tests.test_config import REPO, key_paths, schema_properties

# A key line of config.yaml once its leading `# ` is taken away: `  key: value`, `  - key: value` or `key:`.
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<dash>- +)?(?P<key>[a-z_]+):(?: +(?P<value>.*?))?\s*$")


def example_key_paths(text: str) -> list[str]:
    """Key paths (as in the schema: `cameras[].motion.enabled`) of a YAML document in the style of config.yaml,
    commented-out keys included: a comment line is read as the line without its first `# `. The leading comment
    block is prose, as is any comment line that is no `key:` line; `key: {a: 1}` flow mappings count too."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
    stack: list[tuple[int, str]] = [(-1, "")]     # (column of the key, its path), innermost last
    found = []
    for raw in lines[start:]:
        line = re.sub(r"^( *)# ?", r"\1", raw, count=1)
        match = _KEY_LINE.match(re.sub(r"\s+#.*$", "", line))
        if not match:
            continue
        column = len(match["indent"])
        if match["dash"]:                           # a list item: its keys sit under `<list key>[]`
            while stack[-1][0] >= column:
                stack.pop()
            stack.append((column, stack[-1][1] + "[]"))
            column += len(match["dash"])
        while stack[-1][0] >= column:
            stack.pop()
        path = f"{stack[-1][1]}.{match['key']}".lstrip(".")
        stack.append((column, path))
        found.append(path)
        value = match["value"] or ""
        if value.startswith("{"):
            found += [f"{path}.{key}" for key in re.findall(r"([a-z_]+):", value)]
    return list(dict.fromkeys(found))


def test_every_key_of_the_schema_has_a_description() -> None:
    schema = json_schema()
    paths = list(schema_properties(schema))
    # Every section is used once, so the walk must meet each property of the root and of every $defs model once.
    declared = sum(len(model.get("properties", {})) for model in (schema, *schema["$defs"].values()))
    assert len(paths) == declared, "the walk must reach every section, list item and union branch"
    undocumented = [path for path, prop in paths if not str(prop.get("description", "")).strip()]
    assert undocumented == [], f"keys without Field(description=...): {undocumented}"
    # A description says what the key does, not its name again.
    thin = [path for path, prop in paths
            if len(prop["description"].split()) < 4
            or prop["description"].lower().strip(" .") == path.rsplit(".", 1)[-1].replace("_", " ")]
    assert thin == [], f"descriptions that say next to nothing: {thin}"


def test_descriptions_reach_nested_sections_list_items_and_unions() -> None:
    """The places where a description could be lost on the way to the schema: a section behind $ref, the items
    of a list, a key inside a union branch (mqtt.tls: true | section), a discriminated union's own key (crop)."""
    documented = {path: prop.get("description", "") for path, prop in schema_properties()}
    for path in ("server.auth.mode", "cameras", "cameras[].crop", "cameras[].motion.threshold",
                 "watchlist[].smoothing.window", "custom_classes[].crop", "mqtt.tls", "mqtt.tls.key_file",
                 "alerts.webhook.url", "alerts.command", "cameras[].source", "mqtt.client_id"):
        assert documented.get(path), path


def test_the_walk_finds_a_missing_description() -> None:
    """The checks above can fail: a key without a description, deep inside a union branch of a list item."""
    schema = json_schema()
    del schema["$defs"]["MqttTlsConfig"]["properties"]["key_file"]["description"]
    missing = [path for path, prop in schema_properties(schema) if "description" not in prop]
    assert missing == ["mqtt.tls.key_file"]


def test_config_yaml_shows_every_key_of_the_schema_at_its_place() -> None:
    shown = example_key_paths((REPO / "config.yaml").read_text(encoding="utf-8"))
    schema = key_paths()
    assert [p for p in schema if p not in shown] == [], "keys of the schema that config.yaml does not show"
    assert [p for p in shown if p not in schema] == [], "keys config.yaml shows that the schema does not have"


@pytest.mark.parametrize("text, expected", [
    ("# header: prose\n\nserver:\n  # auth:\n  #   mode: basic   # none | basic\n  port: 1\n",
     ["server", "server.auth", "server.auth.mode", "server.port"]),
    ("cameras:\n  - name: a\n    motion:\n      enabled: true\n  # - name: b\n  #   fps: 5\nwatchlist: []\n",
     ["cameras", "cameras[].name", "cameras[].motion", "cameras[].motion.enabled", "cameras[].fps", "watchlist"]),
    ("watchlist:\n  - name: r\n    smoothing: {window: 5, method: median}\n# A comment: of prose\n",
     ["watchlist", "watchlist[].name", "watchlist[].smoothing", "watchlist[].smoothing.window",
      "watchlist[].smoothing.method"]),
    # a key shown at the wrong level is found at that level, so the check above would report it
    ("server:\n  auth:\n  mode: basic\n", ["server", "server.auth", "server.mode"]),
])
def test_example_key_paths_reads_keys_at_their_level(text: str, expected: list[str]) -> None:
    assert example_key_paths(text) == expected
