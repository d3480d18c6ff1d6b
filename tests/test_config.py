"""Config loading and validation, and the ImageNet groups rules are written with.

The corpus in tests/configs/bad/ holds one broken config per kind of check (plus one with several faults);
each file says in its header what it must produce:
    # fault: what is wrong
    # expect: <key path> :: <fragment of the message>      (one line per expected error)
`<file>` stands for the config's own path and `<dir>` for its directory.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import jsonschema

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.core import groups
from monitor.config.loader import (
    ConfigError, check_config_main, format_errors, json_schema, load_config, parse_config, parse_duration,
    parse_size, schema_text, source_kind,
)
from monitor.config.types import CameraConfig, Config, RuleConfig
from monitor.core.labels import imagenet_classes

HERE = Path(__file__).parent
REPO = HERE.parent
BAD = sorted((HERE / "configs" / "bad").glob("*.yaml"))
GOOD = sorted((HERE / "configs" / "good").glob("*.yaml"))
SECRET = "hunter2"      # the password used in every credential-bearing URL of the bad corpus


def expectations(path: Path) -> list[tuple[str, str]]:
    """(key path, message fragment) pairs from the `# expect:` header lines of a corpus file."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# expect: "):
            key_path, fragment = line[len("# expect: "):].split(" :: ", 1)
            subst = {"<file>": str(path), "<dir>": str(path.parent.absolute())}
            for marker, value in subst.items():
                key_path, fragment = key_path.replace(marker, value), fragment.replace(marker, value)
            found.append((key_path, fragment))
    return found


def match_errors(errors: list[str], expected: list[tuple[str, str]]) -> list[str]:
    """Pair each expectation with a distinct error; returns the problems (empty when all match exactly)."""
    unmatched = list(errors)
    problems = []
    for key_path, fragment in expected:
        hit = next((e for e in unmatched if e.startswith(key_path + ": ") and fragment in e), None)
        if hit is None:
            problems.append(f"no error {key_path}: ...{fragment}...")
        else:
            unmatched.remove(hit)
    problems += [f"unexpected error: {e}" for e in unmatched]
    return problems


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(data: object, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir)
    return info.value.errors


CAM = {"name": "cam", "source": 0}


def schema_properties(schema: dict | None = None) -> Iterator[tuple[str, dict]]:
    """(key path, property schema) for every property of every object the schema describes, whatever holds it
    ($ref to $defs, anyOf/oneOf/allOf branches, array items and prefixItems); paths look like `server.auth.mode`
    or `cameras[].motion.enabled`. A key reachable twice (e.g. a section referenced from two places) is listed
    once per path."""
    root = json_schema() if schema is None else schema

    def walk(node: object, prefix: str, seen: frozenset[str]) -> Iterator[tuple[str, dict]]:
        if not isinstance(node, dict):
            return
        if "$ref" in node:
            name = node["$ref"].removeprefix("#/$defs/")
            if name not in seen:    # a recursive schema would loop; ours has none, but never hang on one
                yield from walk(root["$defs"][name], prefix, seen | {name})
        for key, sub in node.get("properties", {}).items():
            path = f"{prefix}.{key}" if prefix else key
            yield path, sub
            yield from walk(sub, path, seen)
        for branch in (*node.get("anyOf", ()), *node.get("oneOf", ()), *node.get("allOf", ())):
            yield from walk(branch, prefix, seen)
        for item in (node.get("items"), *node.get("prefixItems", ())):
            yield from walk(item, prefix + "[]", seen)
    return walk(root, "", frozenset())


def key_paths() -> list[str]:
    """Every key the schema accepts, as paths like `server.auth.mode` or `cameras[].motion.enabled`."""
    return list(dict.fromkeys(path for path, _ in schema_properties()))


# ---------------------------------------------------------------------------------------------------------
# The example config at the repository root


def test_example_config_is_valid_and_works_in_this_checkout() -> None:
    config = load_config(REPO / "config.yaml")
    assert config.path == (REPO / "config.yaml").absolute()
    assert [c.name for c in config.cameras] == ["driveway"]
    camera = config.cameras[0]
    assert camera.loop and source_kind(camera.source) == "file"
    assert Path(camera.source).is_file(), "the demo camera's video must exist in the dev checkout"
    assert config.server.host == "127.0.0.1" and config.server.port == 8080
    # relative paths are resolved against the config file's directory, so no root is needed to run
    assert config.events.database == REPO / "var" / "events.db"
    assert config.alerts.snapshots == REPO / "var" / "snapshots"
    assert config.model.weights == REPO / "weights" / "resnet18-int8.pt"
    rules = {r.name: r for r in config.watchlist}
    assert rules["dog-in-yard"].indices == (("dog", tuple(range(151, 269))),)
    assert rules["vehicle-in-driveway"].cameras == ("driveway",)


def test_example_config_check_config_main_says_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(str(REPO / "config.yaml")) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "config OK: 1 cameras, 2 rules"
    assert err == ""


# ---------------------------------------------------------------------------------------------------------
# The corpus of broken configs


def test_bad_corpus_covers_every_kind_of_check() -> None:
    assert len(BAD) >= 30
    for path in BAD:
        header = path.read_text(encoding="utf-8")
        assert header.startswith("# fault: "), path.name
        assert expectations(path), f"{path.name} has no '# expect:' line"
    assert sum(len(expectations(p)) > 1 for p in BAD) >= 1, "a file with several faults"


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_config_reports_exactly_the_expected_errors(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    assert match_errors(errors, expectations(path)) == [], "\n".join(errors)
    assert str(info.value) == "\n".join(errors)
    for error in errors:
        assert_line_points_at_the_key(path, error)


def assert_line_points_at_the_key(path: Path, error: str) -> None:
    """A key-path error ends with '(line N)' and line N holds the last key of the path (for a missing key:
    of its section; for a list item: the item)."""
    if error.startswith(str(path)):
        return      # a file-level error (YAML syntax, duplicate key, empty file) names file:line itself
    match = re.fullmatch(r"([^:]+): (.*) \(line (\d+)\)", error)
    assert match, f"no line number in {error!r}"
    keys = re.findall(r"[^.\[\]]+|\[\d+\]", match.group(1))
    if match.group(2) == "required key is missing":
        keys.pop()
    text = path.read_text(encoding="utf-8").splitlines()[int(match.group(3)) - 1]
    last = keys[-1] if keys else ""     # a missing top-level key: the document's first line
    item = last.startswith("[") and (text.lstrip().startswith("-") or "[" in text)   # block or flow list
    assert item or last in text, (error, text)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_check_config_main_prints_every_error_and_exits_2(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(str(path)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    assert SECRET not in err
    lines = err.splitlines()
    assert lines[0].startswith(f"error: {path} is not a valid config (")
    assert match_errors([line.strip() for line in lines[1:]], expectations(path)) == []


def test_corpus_really_contains_credentials_that_must_not_leak() -> None:
    assert sum(SECRET in p.read_text(encoding="utf-8") for p in BAD) >= 4


def test_errors_name_key_path_and_line_in_document_order(tmp_path: Path) -> None:
    path = write(tmp_path, "cameras:\n  - name: a\n    source: 0\n  - name: b\n    source: 1\n"
                           "    fps: -3\n    motion:\n      keepalive: 0s\nservr: {}\nlogging: {level: loud}\n"
                           "watchlist:\n  - name: r\n    classes: [dog]\n    indices: [[dog, [1]]]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        "cameras[1].fps: must be >= 0 (got -3) (line 6)",
        "cameras[1].motion.keepalive: must be > 0 (got '0s') (line 8)",
        "servr: unknown key (allowed: server, model, cameras, watchlist, custom_classes, alerts, events, "
        "logging, labels, mqtt, clips, node, fleet); "
        "did you mean 'server'? (line 9)",
        "logging.level: must be one of debug, info, warning, error (got 'loud') (line 10)",
        "watchlist[0].indices: unknown key (allowed: name, classes, cameras, min_score, min_frames, end_after, "
        "cooldown, smoothing) (line 14)",
    ]


def test_derived_fields_cannot_be_written_in_a_file_but_code_may_pass_them() -> None:
    errors = errors_of({"cameras": [CAM], "server": {"auth": {"secret": "x"}}})
    assert errors == ["server.auth.secret: unknown key (allowed: mode, username, password_file, token_file, "
                      "protect_metrics, max_failures)"]
    rule = RuleConfig(name="r", classes=("dog",), indices=(("dog", (1, 2)),))
    assert rule.indices == (("dog", (1, 2)),)
    assert RuleConfig(name="r", classes=("dog",)).indices == (("dog", tuple(range(151, 269))),)


def test_models_are_frozen_and_copied_with_changes() -> None:
    camera = CameraConfig(name="c", source="v.mp4", fps=2)
    with pytest.raises(Exception):
        camera.fps = 3      # type: ignore[misc]
    assert camera.model_copy(update={"fps": 3.0}).fps == 3.0 and camera.fps == 2.0
    assert camera == CameraConfig(name="c", source="v.mp4", fps=2.0) and hash(camera)


def test_several_faults_are_reported_together() -> None:
    path = HERE / "configs" / "bad" / "several_faults.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.errors) == 6
    text = format_errors(info.value, path)
    assert text.splitlines()[0] == f"error: {path} is not a valid config (6 errors):"
    assert all(f"  {e}" in text for e in info.value.errors)


# ---------------------------------------------------------------------------------------------------------
# Good configs


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_config_loads(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(path)
    assert isinstance(config, Config) and config.cameras
    assert check_config_main(str(path)) == 0
    assert capsys.readouterr().out.startswith(f"config OK: {len(config.cameras)} cameras, ")


def test_full_config_values() -> None:
    good = HERE / "configs" / "good"
    c = load_config(good / "full.yaml")
    assert (c.server.host, c.server.port, c.server.upload_max_bytes) == ("0.0.0.0", 9090, 2 * 1024 * 1024)
    assert c.server.auth.mode == "none" and c.server.auth.protect_metrics is False
    s = c.server.stream
    assert (s.fps, s.width, s.quality, s.max_viewers) == (2.5, 640, 70, 3)
    assert c.model.weights == HERE / "configs" / "weights" / "model.pt"
    assert (c.model.threads, c.model.top_k, c.model.batch_max) == (4, 5, 16)
    door, garage = c.cameras
    assert door.source == "rtsp://user:pass@192.168.1.20:554/stream1"    # kept intact for the capture
    assert door.fps == 0.0 and door.crop == (10, 20, 300, 200)
    assert (door.open_timeout, door.read_timeout, door.stale_after, door.backoff_max) == (1.5, 2.0, 60.0, 5400.0)
    assert (door.motion.enabled, door.motion.threshold, door.motion.keepalive) == (True, 0.05, 120.0)
    assert garage.source == str(good / "clips" / "garage.mp4") and garage.loop and garage.crop == "full"
    pets, anything = c.watchlist
    assert pets.classes == ("dog", "Tabby", "golden_retriever", "big cat")
    assert [name for name, _ in pets.indices] == ["dog", "tabby", "golden retriever", "big cat"]
    assert pets.indices[1][1] == (281,) and pets.indices[2][1] == (207,)
    assert (pets.cameras, pets.min_score, pets.min_frames, pets.end_after, pets.cooldown) == (
        ("front-door",), 0.25, 1, 45.0, 0.0)
    assert anything.cameras == () and anything.min_frames == 3
    assert c.alerts.snapshots == Path.home() / "snapshots"
    assert c.alerts.webhook is not None and c.alerts.webhook.url == "https://hooks.example:8443/monitor"
    assert (c.alerts.webhook.timeout, c.alerts.webhook.retries) == (2.5, 0)
    assert c.alerts.command[1] == "--camera={camera}" and c.alerts.command[-1] == "{{literal}}"
    assert (c.alerts.command_timeout, c.alerts.queue_size) == (3.0, 8)
    assert c.events.database == Path("/var/lib/monitor/events.db") and c.events.retention == 7 * 86400
    assert (c.logging.level, c.logging.format) == ("debug", "json")


def test_sources_of_every_kind() -> None:
    good = HERE / "configs" / "good"
    sources = {c.name: c.source for c in load_config(good / "sources.yaml").cameras}
    assert sources["webcam"] == "0" and sources["webcam-quoted"] == "2"
    assert sources["device"] == "/dev/video7"
    assert sources["absent-file"] == "/nonexistent/clip.mp4"        # missing file: camera down, not an error
    assert sources["relative-file"] == str(good / "clips" / "clip.mp4")
    kinds = {name: source_kind(s) for name, s in sources.items()}
    assert kinds == {"webcam": "webcam", "webcam-quoted": "webcam", "device": "device", "rtsp": "url",
                     "rtsps": "url", "mjpeg": "url", "https": "url", "absent-file": "file",
                     "relative-file": "file"}


def test_defaults_and_null_sections() -> None:
    c = load_config(HERE / "configs" / "good" / "null_sections.yaml")
    d = HERE / "configs" / "good"
    assert c.server.port == 8080 and c.watchlist == () and c.alerts.webhook is None
    # default paths resolve against the config's directory too
    assert c.model.weights == d / "weights" / "resnet18-int8.pt" and c.events.database == d / "events.db"


def test_relative_paths_follow_the_config_file_not_the_cwd(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "model: {weights: w/m.pt}\ncameras: [{name: c, source: ../v.mp4}]\n"
                           "events: {database: db/e.db}\nalerts: {snapshots: snaps}\n", "etc/config.yaml")
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/config.yaml")
    assert config.model.weights == tmp_path / "etc" / "w" / "m.pt"
    assert config.cameras[0].source == str(tmp_path / "v.mp4")
    assert config.events.database == tmp_path / "etc" / "db" / "e.db"
    assert config.alerts.snapshots == tmp_path / "etc" / "snaps"
    assert config.path == path


def test_parse_config_without_base_dir_keeps_relative_paths() -> None:
    config = parse_config({"cameras": [{"name": "c", "source": "v.mp4"}], "events": {"database": "e.db"}})
    assert config.cameras[0].source == "v.mp4" and config.events.database == Path("e.db")
    assert config.path is None


def test_yaml_anchors_and_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path, "cameras:\n  - &base {name: a, source: 0, fps: 2}\n  - <<: *base\n    name: b\n")
    assert [(c.name, c.fps) for c in load_config(path).cameras] == [("a", 2.0), ("b", 2.0)]


# ---------------------------------------------------------------------------------------------------------
# The JSON Schema


def test_schema_file_is_current_and_config_yaml_points_at_it() -> None:
    assert (REPO / "config.schema.json").read_text(encoding="utf-8") == schema_text(), \
        "regenerate it: python -m monitor config schema > config.schema.json"
    first = (REPO / "config.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=config.schema.json"


@pytest.mark.parametrize("path", [REPO / "config.yaml", *GOOD], ids=lambda p: p.stem)
def test_valid_configs_pass_the_schema(path: Path) -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema())
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert [e.message for e in jsonschema.Draft202012Validator(json_schema()).iter_errors(document)] == []


@pytest.mark.parametrize("stem", ["unknown_camera_key", "unknown_top_level_key", "port_out_of_range",
                                  "duration_words", "upload_size_words", "crop_three_numbers", "cameras_empty",
                                  "log_level_yaml_off", "webhook_missing_url", "min_score_above_one"])
def test_schema_rejects_what_the_loader_rejects(stem: str) -> None:
    document = yaml.safe_load((HERE / "configs" / "bad" / f"{stem}.yaml").read_text(encoding="utf-8"))
    assert not jsonschema.Draft202012Validator(json_schema()).is_valid(document)


def test_cli_prints_the_schema_and_refuses_bad_configs_with_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "monitor", "config", "schema"], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout
    assert json.loads(out) == json_schema()
    bad = write(tmp_path, "cameras:\n  - {name: c, source: 'rtmp://u:hunter2@h/x', fsp: 5}\n")
    for command in (["check-config"], ["run"]):
        done = subprocess.run([sys.executable, "-m", "monitor", *command, "-c", str(bad)], capture_output=True,
                              text=True, env=env, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr and SECRET not in done.stderr
        assert "cameras[0].fsp: unknown key (allowed: name, source, fps, " in done.stderr
        assert "did you mean 'fps'? (line 2)" in done.stderr


def test_a_checker_bug_is_an_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")
    monkeypatch.setattr(Config, "model_validate", broken)
    assert check_config_main(str(REPO / "config.yaml")) == 2
    err = capsys.readouterr().err
    assert "internal error while checking the config: RuntimeError: boom" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------
# Auth secrets read from files


def test_basic_auth_reads_password_file_relative_to_config(tmp_path: Path) -> None:
    write(tmp_path, "  s3cret-pass\n", "secrets/password")
    path = write(tmp_path, "server:\n  auth: {mode: basic, username: admin, password_file: secrets/password}\n"
                           "cameras: [{name: c, source: 0}]\n")
    auth = load_config(path).server.auth
    assert (auth.mode, auth.username, auth.secret) == ("basic", "admin", "s3cret-pass")
    assert auth.password_file == tmp_path / "secrets" / "password"


def test_bearer_auth_reads_token_file(tmp_path: Path) -> None:
    token = write(tmp_path, "tok-123\n", "token")
    config = parse_config({"server": {"auth": {"mode": "bearer", "token_file": str(token)}}, "cameras": [CAM]})
    assert config.server.auth.secret == "tok-123" and config.server.auth.token_file == token


def test_secret_file_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "pw"
    bad.write_bytes(b"\xff\xfe\x00")
    errors = errors_of({"server": {"auth": {"mode": "basic", "username": "u", "password_file": str(bad)}},
                        "cameras": [CAM]})
    assert errors == [f"server.auth.password_file: cannot read '{bad}': not UTF-8 text"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_secret_file_unreadable(tmp_path: Path) -> None:
    secret = write(tmp_path, "x", "pw")
    secret.chmod(0)
    errors = errors_of({"server": {"auth": {"mode": "basic", "username": "u", "password_file": str(secret)}},
                        "cameras": [CAM]})
    assert errors == [f"server.auth.password_file: cannot read '{secret}': permission denied"]


def test_basic_username_with_colon_or_empty_gives_one_error_each(tmp_path: Path) -> None:
    secret = write(tmp_path, "pw", "pw")
    for username, message in [("a:b", "must not contain ':' (HTTP basic auth) (got 'a:b')"),
                              ("", "must be a non-empty string (got '')")]:
        errors = errors_of({"server": {"auth": {"mode": "basic", "username": username,
                                                "password_file": str(secret)}}, "cameras": [CAM]})
        assert errors == [f"server.auth.username: {message}"]


def test_bearer_with_username_and_without_token() -> None:
    errors = errors_of({"server": {"auth": {"mode": "bearer", "username": "a"}}, "cameras": [CAM]})
    assert errors == ["server.auth.username: not used with mode 'bearer' (got 'a')",
                      "server.auth.token_file: required with mode 'bearer'"]


# ---------------------------------------------------------------------------------------------------------
# The file itself


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}: no such file"]
    assert check_config_main(str(path)) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_zero_byte_file(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}: the file is empty (a config needs at least a 'cameras' list)"]


def test_not_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"cameras: [\xff]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}: not UTF-8 text (bad byte at offset 10)"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.errors == [f"{tmp_path}: is a directory, not a config file"]


def test_python_tags_are_refused_with_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cameras:\n  - !!python/object/apply:os.system [true]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (error,) = info.value.errors
    assert error.startswith(f"{path}:2:") and "YAML syntax error" in error


def test_duplicate_keys_are_reported_with_schema_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {port: 1, port: 2}\ncameras: [{name: c, source: 0, fps: -1}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        f"{path}:1: duplicate key 'port' (first at line 1; YAML would keep only the last)",
        "cameras[0].fps: must be >= 0 (got -1) (line 2)",
    ]


# ---------------------------------------------------------------------------------------------------------
# Credentials never appear in errors


@pytest.mark.parametrize("source", [
    "rtmp://admin:hunter2@cam.local/live",            # unknown scheme
    "rtmp://admin:hun@ter2@cam.local/live",           # a raw '@' in the password
    "rtmp://admin:hun/ter2@cam.local/live",           # a raw '/' in the password
    "rtsp:/admin:hunter2@cam.local/live",             # malformed: one slash
    "rtsp:admin:hunter2@cam.local/live",              # malformed: no slash
])
def test_credentials_in_a_bad_source_are_redacted(source: str, capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    errors = errors_of({"cameras": [{"name": "c", "source": source}]})
    assert len(errors) == 1 and errors[0].startswith("cameras[0].source: ")
    assert "ter2" not in errors[0] and "***@" in errors[0] and "cam.local" in errors[0]
    path = write(tmp_path, yaml.safe_dump({"cameras": [{"name": "c", "source": source}]}))
    assert check_config_main(str(path)) == 2
    err = capsys.readouterr().err
    assert "ter2" not in err and "cameras[0].source" in err


def test_credentials_redacted_before_long_values_are_cut() -> None:
    source = "rtmp://admin:" + "x" * 100 + "hunter2@cam.local/live"
    (error,) = errors_of({"cameras": [{"name": "c", "source": source}]})
    assert "xxx" not in error and SECRET not in error and "***@cam.local" in error


def test_credentials_redacted_everywhere_a_value_is_quoted() -> None:
    errors = errors_of({
        "cameras": ["rtsp://admin:hunter2@cam/live", {"name": "x y", "source": "rtsp://u:hunter2@h/s"}],
        "alerts": {"webhook": {"url": "gopher://u:hunter2@hooks/x"}, "command": "curl https://u:hunter2@h/"},
        "server": {"host": 5},
    })
    assert len(errors) == 5
    assert not any(SECRET in e for e in errors), errors


# ---------------------------------------------------------------------------------------------------------
# Smaller checks not worth a corpus file each


@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("30s", 30), ("5m", 300), ("2h", 7200), ("30d", 2592000), ("1h30m", 5400),
    ("1.5s", 1.5), (" 10s ", 10), ("90", 90), (45, 45), (0.25, 0.25), (0, 0),
])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 minutes", "-5s", "s", "", "1.2.3s", "5mm", "5M", True, None, [], math.inf,
                                  "1e3"])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(0, 10**6), st.sampled_from([("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]))
def test_parse_duration_units(number: int, unit: tuple[str, float]) -> None:
    assert parse_duration(f"{number}{unit[0]}") == pytest.approx(number * unit[1])


@pytest.mark.parametrize("text, size", [(1000, 1000), ("512KB", 512 * 1024), ("10MB", 10 * 2**20),
                                        ("10 MiB", 10 * 2**20), ("1g", 2**30), ("2048", 2048), ("1.5k", 1536)])
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "10 TB", "-1", True, None, "1kbb"])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_port_zero_means_any_free_port() -> None:
    assert parse_config({"server": {"port": 0}, "cameras": [CAM]}).server.port == 0


def test_crop_negative_origin_and_bool_items() -> None:
    errors = errors_of({"cameras": [{"name": "c", "source": 0, "crop": [-1, True, 10, 10]}]})
    assert errors == ["cameras[0].crop[0]: must be >= 0 (got -1)", "cameras[0].crop[1]: must be an integer (got True)"]


def test_camera_name_dot_dot_and_too_long() -> None:
    errors = errors_of({"cameras": [{"name": "..", "source": 0}, {"name": "a" * 65, "source": 1}]})
    assert [e.split(":")[0] for e in errors] == ["cameras[0].name", "cameras[1].name"]


def test_misspelled_class_suggests_dog_first() -> None:
    (error,) = errors_of({"cameras": [CAM], "watchlist": [{"name": "r", "classes": ["dgo"]}]})
    assert error.startswith("watchlist[0].classes[0]: unknown class 'dgo'; did you mean: dog, ")


def test_misspelled_person_still_explains_no_person_class() -> None:
    (error,) = errors_of({"cameras": [CAM], "watchlist": [{"name": "r", "classes": ["persn"]}]})
    assert "unknown class 'persn'" in error and "ImageNet-1k has no person class" in error


def test_nonsense_class_lists_the_groups() -> None:
    (error,) = errors_of({"cameras": [CAM], "watchlist": [{"name": "r", "classes": ["xqzzkv"]}]})
    assert "not an ImageNet class or a group; groups: dog, " in error


def test_rule_classes_accept_class_names_in_any_case_and_groups() -> None:
    config = parse_config({"cameras": [CAM], "watchlist": [
        {"name": "r", "classes": ["Beagle", "sports car", "Cardigan", "cardigan", "Big_Cat"]}]})
    assert config.watchlist[0].indices == (
        ("beagle", (162,)), ("sports car", (817,)), ("Cardigan", (264,)), ("cardigan", (474,)),
        ("big cat", tuple(range(286, 294))))


def test_bad_camera_name_does_not_also_fail_the_rules_naming_it() -> None:
    errors = errors_of({"cameras": [{"name": "front door", "source": 0}],
                        "watchlist": [{"name": "r", "classes": ["dog"], "cameras": ["front door"]}]})
    assert len(errors) == 1 and errors[0].startswith("cameras[0].name: ")


def test_non_string_keys_and_values_do_not_crash() -> None:
    errors = errors_of({1: 2, "cameras": [{"name": "c", "source": 0, None: 1}], "logging": [1]})
    assert [e.split(": ")[0] for e in errors] == ["1", "cameras[0].None", "logging"]


# A document made of schema keys and junk, nested a few levels: the validator must only ever return a
# Config or raise ConfigError.
_KEYS = sorted({part.removesuffix("[]") for path in key_paths() for part in path.split(".")} | {"bogus"})
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True),
                    st.sampled_from(["", "dog", "dgo", "person", "30s", "rtsp://u:p@h/s", "ftp://x", "center",
                                     "info", "basic", "{camera}", "{x", ".", "0", "/dev/video0"]),
                    st.text(max_size=8))
_DOCS = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5)), max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_KEYS), _DOCS, max_size=6))
def test_fuzzed_documents_give_config_or_config_error(data: dict) -> None:
    try:
        config = parse_config(data, Path("/tmp"))
    except ConfigError as err:
        assert err.errors and all(isinstance(e, str) and ": " in e for e in err.errors)
    else:
        assert config.cameras


# ---------------------------------------------------------------------------------------------------------
# Groups


def test_groups_named_in_the_brief_exist() -> None:
    for name in ["dog", "cat", "big cat", "bird", "car", "truck", "bus", "bicycle", "motorcycle", "vehicle",
                 "boat", "airplane", "train", "fish", "snake", "monkey", "primate", "bear", "horse"]:
        assert groups.group_indices(name), name


def test_every_group_is_valid_and_never_shadows_a_class() -> None:
    classes = {c.lower() for c in imagenet_classes()}
    for name in groups.group_names():
        indices = groups.group_indices(name)
        assert indices and list(indices) == sorted(set(indices))
        assert all(0 <= i < 1000 for i in indices)
        assert name.lower() not in classes
        assert groups.resolve(name) == indices


def test_group_contents() -> None:
    names = imagenet_classes()

    def members(group: str) -> set[str]:
        return {names[i] for i in groups.group_indices(group) or ()}

    assert groups.group_indices("dog") == tuple(range(151, 269))
    assert groups.group_indices("cat") == tuple(range(281, 286)) and "tabby" in members("cat")
    assert set(groups.group_indices("bird")) == {*range(7, 25), *range(80, 101), *range(127, 147)}
    assert "sorrel" in members("horse") and "lion" in members("big cat") and "lion" not in members("cat")
    assert {"sports car", "cab", "minivan"} <= members("car") and "passenger car" not in members("car")
    assert "passenger car" in members("train") and "plane" not in members("airplane")
    assert "Madagascar cat" not in members("cat") and "Madagascar cat" in members("primate")
    assert "crane" not in members("bird") and "crane bird" in members("bird")
    assert "mouse" not in members("rodent")
    vehicle = set(groups.group_indices("vehicle") or ())
    for part in ["car", "truck", "bus", "motorcycle", "van"]:
        assert set(groups.group_indices(part) or ()) <= vehicle, part
    assert not set(groups.group_indices("bicycle") or ()) & vehicle


def test_resolve_lookup_and_aliases() -> None:
    assert groups.resolve("beagle") == (162,)
    assert groups.resolve("BEAGLE") == (162,)
    assert groups.resolve("golden_retriever") == (207,)
    assert groups.resolve("Cardigan") == (264,) and groups.resolve("cardigan") == (474,)
    assert groups.resolve("Dogs") == groups.group_indices("dog")
    assert groups.lookup("kitten") == ("cat", groups.group_indices("cat"))
    assert groups.group_indices("nope") is None
    with pytest.raises(KeyError, match="ambiguous"):
        groups.resolve("CARDIGAN")
    with pytest.raises(KeyError, match="unknown class 'dgo'"):
        groups.resolve("dgo")


@pytest.mark.parametrize("word", ["person", "people", "Person", "humans", "pedestrian"])
def test_person_explains_there_is_no_person_class(word: str) -> None:
    with pytest.raises(KeyError, match="ImageNet-1k has no person class"):
        groups.resolve(word)
    assert "no person class" in (groups.explain_missing(word) or "")


def test_suggest() -> None:
    assert groups.suggest("dgo")[0] == "dog"
    assert groups.suggest("tabbby")[0] == "tabby"
    assert groups.suggest("golden retreiver")[0] == "golden retriever"
    assert groups.suggest("trukc")[0] == "truck"
    assert groups.suggest("sorel")[0] == "sorrel"
    assert len(groups.suggest("dgo", n=2)) == 2
    assert groups.suggest("xqzzkv") == []
    assert groups.near_missing("persn") is not None and groups.near_missing("dog") is None


_CLASSES = imagenet_classes()


@pytest.mark.parametrize("data, message", [
    ({"groups": {"g": {"classes": ["no such class"]}}}, "not an ImageNet class name"),
    ({"groups": {"g": {"ranges": [[990, 1000]]}}}, "bad range"),
    ({"groups": {"a": {"include": ["b"]}, "b": {"include": ["a"]}}}, "include each other"),
    ({"groups": {"g": {"include": ["missing"]}}}, "unknown group"),
    ({"groups": {"beagle": {"classes": ["beagle"]}}}, "also an ImageNet class name"),
    ({"groups": {"a": {"classes": ["hen"], "aliases": ["x"]}, "b": {"classes": ["cock"], "aliases": ["X"]}}},
     "names both"),
    ({"groups": {"g": {"classes": []}}}, "covers no class"),
    ({"groups": {"g": {"clases": ["hen"]}}}, "must be a mapping with keys"),
    ({"groups": {"g": {"classes": ["hen"]}}, "not_in_imagenet": [{"words": ["g"], "why": "x"}]}, "listed as missing"),
    ({}, "non-empty mapping"),
])
def test_groups_data_is_checked_when_loaded(data: dict, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        groups.build_tables(data, _CLASSES)
