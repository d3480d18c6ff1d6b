"""Log lines as text or JSON, credentials redacted in both."""
from __future__ import annotations

import json
import logging

from monitor.core.logsetup import JsonFormatter, TextFormatter


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("monitor.test", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_lines_carry_fields_and_hide_credentials() -> None:
    line = JsonFormatter().format(_record("cannot open %s", "rtsp://admin:hunter2@10.0.0.5/live", camera="door",
                                          latency=0.0123))
    doc = json.loads(line)
    assert doc["level"] == "info" and doc["logger"] == "monitor.test"
    assert doc["camera"] == "door" and doc["latency"] == 0.0123
    assert doc["msg"] == "cannot open rtsp://***@10.0.0.5/live"
    assert "hunter2" not in line


def test_text_lines_hide_credentials() -> None:
    line = TextFormatter().format(_record("source %s down", "http://u:p@cam/video.mjpg"))
    assert "INFO" in line and "http://***@cam/video.mjpg" in line and "u:p@" not in line
