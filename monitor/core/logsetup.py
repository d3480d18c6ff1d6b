"""Logging as text lines or JSON objects (journald, ELK); one handler on stderr."""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

from monitor.core.redact import redact_url

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact_url(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = redact_url(self.formatException(record.exc_info))
        # The whole line once more: `extra=` fields (any type) are written as they are. JSON puts a space after
        # every separator, so a redaction never spans two values and the line stays valid JSON.
        return redact_url(json.dumps(doc, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


def _log_uncaught(args: threading.ExceptHookArgs) -> None:
    # Python's default hook prints the traceback to stderr past our formatter: a URL in the exception text
    # would reach the journal unredacted (and break JSON logs).
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("monitor").critical("uncaught exception in thread %s", name,
                                          exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _log_uncaught_main(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("monitor").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """One redacting handler on stderr; uncaught exceptions (main thread and others) go through it too, unless
    someone (a test watching for crashes) installed a hook of its own."""
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _log_uncaught
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _log_uncaught_main
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_monitor", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._monitor = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
