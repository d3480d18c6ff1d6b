"""The notify sink (issue 19): events sent through Apprise to real receivers on 127.0.0.1.

- an SMTP server (aiosmtpd, AUTH required) gets the mail with the event's snapshot JPEG attached, the title and
  body templates filled, the link under node.public_url; Apprise's json:// reaches a local HTTP receiver with the
  same JPEG; both through the whole daemon (real footage, demo model, real SQLite);
- a receiver that is down loses nothing up to the queue bound: the queued events arrive once it is back, and the
  drops past the bound are counted in monitor_sink_dropped_total;
- secrets of Apprise URLs (password, token host, path) never reach the formatted log, /api/status or an error;
- config: key-path errors (unknown service, URL Apprise refuses, urls_file and its line, placeholders, rules,
  names), none of which shows the URL.
"""
from __future__ import annotations

import base64
import json
import logging
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from monitor.config.apprise_urls import secret_words, shown_url
from monitor.config.loader import ConfigError, parse_config
from monitor.core.logsetup import TextFormatter
from monitor.core.redact import SECRETS, SecretWords, redact_url
from monitor.daemon import Daemon

from tests.daemon_helpers import daemons  # noqa: F401 (fixture)
from tests.test_daemon_alerts import MIN_SCORE, RULE, Footage, footage  # noqa: F401 (fixture)
from testkit.rtsp import free_port
from testkit.smtp import SmtpReceiver
from testkit.waiting import wait_until
from testkit.webhook import Receiver

MAIL_PASSWORD = "Sm7p-Pa55w0rd-XYZ"
HOOK_PATH = "/n0tify-Hook-9f3k2"
DEAD_PATH = "/d3ad-Path-Qw8e"
PUBLIC = "http://monitor.example:8080"


class Lines(list):
    """Every record of every logger at DEBUG (Apprise's own included), and its line as the daemon's formatter
    wrote it at that moment (the secrets a sink holds are hidden while it lives)."""
    text: list[str]


@pytest.fixture
def log_lines() -> Iterator[Lines]:
    records = Lines()
    records.text = []
    fmt = TextFormatter()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            records.text.append(fmt.format(record))

    root = logging.getLogger()
    handler, level = Keep(logging.DEBUG), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield records
    root.removeHandler(handler)
    root.setLevel(level)


def config(tmp_path: Path, weights: Path, source: Path, notify: list[dict], *, rule: dict | None = None,
           queue_size: int = 64) -> dict:
    return {
        "server": {"port": 0},
        "model": {"weights": str(weights), "threads": 2},
        "cameras": [{"name": "cars", "source": str(source), "loop": True, "fps": 10}],
        "watchlist": [{"name": RULE, **(rule or {})}],
        "alerts": {"snapshots": str(tmp_path / "snapshots"), "notify": notify, "queue_size": queue_size},
        "events": {"database": str(tmp_path / "events.db")},
        "node": {"public_url": PUBLIC},
    }


def sink_count(d: Daemon, metric: str, sink: str) -> float:
    return d.metrics.registry.get_sample_value(metric, {"sink": sink}) or 0.0


# ------------------------------------------------------------------------------------------------ daemon


def test_mail_and_json_receive_the_event_with_its_snapshot_and_no_secret_leaks(
        tmp_path: Path, demo_weights: Path, footage: Footage, daemons: list[Daemon],
        log_lines: Lines) -> None:
    dead_port = free_port()
    urls_file = tmp_path / "apprise-urls"
    with SmtpReceiver("bob", MAIL_PASSWORD) as smtp, Receiver("ok", path=HOOK_PATH) as hook:
        urls_file.write_text(f"# the JSON receiver\n\njson://127.0.0.1:{hook.port}{HOOK_PATH}\n")
        mail = (f"mailto://bob:{MAIL_PASSWORD}@localhost:{smtp.port}?from=monitor@example.com&to=me@example.com"
                "&smtp=127.0.0.1")
        data = config(tmp_path, demo_weights, footage.cars, [
            {"name": "mail", "urls": [mail], "title": "{label} on {camera}",
             "body": "rule {rule} score {score} event {event_id} at {time}\n{link}\n{snapshot_url}"},
            {"name": "hook", "urls_file": str(urls_file), "rules": [RULE]},
            # a receiver that never answers, tried once: its failure is logged and counted, its path never shown
            {"name": "dead", "urls": [f"json://127.0.0.1:{dead_port}{DEAD_PATH}"], "retry_for": 0},
        ], rule={"classes": [footage.label], "min_score": MIN_SCORE, "min_frames": 3, "cooldown": 600})
        d = Daemon(parse_config(data, tmp_path))
        daemons.append(d)
        d.start(web=True)

        rows = wait_until(lambda: d.events.query(), 20)
        assert rows, "no event"
        event = rows[0]
        assert smtp.wait_for(1, 10), f"no mail; logins {smtp.logins}"
        assert hook.wait_for(1, 10), "json:// receiver not called"
        snapshot = Path(wait_until(lambda: getattr(d.events.get(event.id), "snapshot", None), 5))
        jpeg = snapshot.read_bytes()

        # -- the mail: AUTH with the password of the URL, the templates, the very JPEG of the snapshot file
        assert smtp.logins == [("bob", MAIL_PASSWORD)]
        assert smtp.envelopes[0] == ("monitor@example.com", ["me@example.com"])
        message = smtp.messages[0]
        assert message["Subject"] == f"{footage.label} on cars"
        text = message.get_body(("plain",)).get_content()
        assert f"rule {RULE} score {event.score:.2f} event {event.id} at " in text
        assert f"{PUBLIC}/#event-{event.id}" in text and f"{PUBLIC}/api/events/{event.id}/snapshot.jpg" in text
        attachments = list(message.iter_attachments())
        assert [(a.get_content_type(), a.get_filename()) for a in attachments] == [
            ("image/jpeg", f"event-{event.id}.jpg")]
        assert attachments[0].get_content() == jpeg
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (432, 768, 3)

        # -- json://: the default templates, the same JPEG base64-encoded
        doc = hook.requests[0]
        assert doc["title"] == f"{footage.label} on cars"
        assert doc["message"].startswith(f"{footage.label} ({event.score:.2f}) on cars, rule {RULE}, at ")
        assert doc["message"].endswith(f"{PUBLIC}/#event-{event.id}")
        assert [(a["filename"], a["mimetype"]) for a in doc["attachments"]] == [
            (f"event-{event.id}.jpg", "image/jpeg")]
        assert base64.b64decode(doc["attachments"][0]["base64"]) == jpeg

        # -- the dead one: one failure counted, nothing dropped anywhere, one notification per event
        assert wait_until(lambda: sink_count(d, "monitor_sink_failures_total", "dead") == 1, 10)
        time.sleep(0.5)
        for name in ("mail", "hook", "dead"):
            assert sink_count(d, "monitor_sink_dropped_total", name) == 0
        assert sink_count(d, "monitor_sink_failures_total", "mail") == 0
        assert sink_count(d, "monitor_sink_failures_total", "hook") == 0
        assert len(d.events.query()) == 1 and len(smtp.messages) == 1 and hook.hits == 1

        with urllib.request.urlopen(f"{d.web.url}/api/status", timeout=5) as resp:
            status = resp.read().decode()
        with urllib.request.urlopen(f"{d.web.url}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        d.stop()

    log = "\n".join(log_lines.text)
    assert "not delivered to JSON (json://…)" in log, log[-3000:]
    # the raw records do quote the dead URL's path (the HTTP library's error): the formatter hides it
    assert any(DEAD_PATH.strip("/") in r.getMessage() for r in log_lines), "the test no longer sees the path"
    for secret in (MAIL_PASSWORD, HOOK_PATH.strip("/"), DEAD_PATH.strip("/")):
        for where, text in (("log", log), ("/api/status", status), ("/metrics", metrics)):
            assert secret not in text, f"{secret!r} in {where}"
    # the sink set is stopped: its secrets are no longer held
    assert redact_url(f"x {MAIL_PASSWORD} y") == f"x {MAIL_PASSWORD} y"


def test_a_receiver_that_is_down_loses_nothing_up_to_the_queue_bound(
        tmp_path: Path, demo_weights: Path, footage: Footage, daemons: list[Daemon]) -> None:
    """Events every second or so while the json:// receiver is down: the first is retried, the next
    queue_size wait, the rest are dropped and counted. Back up, it gets exactly the first 1 + queue_size."""
    queue_size = 2
    port = free_port()
    data = config(tmp_path, demo_weights, footage.cars, [
        {"name": "phone", "urls": [f"json://127.0.0.1:{port}/hook"], "attach": False, "retry_for": 120}],
        rule={"classes": [footage.label], "min_score": footage.flicker, "min_frames": 1, "end_after": 0.05,
              "cooldown": 0},
        queue_size=queue_size)
    d = Daemon(parse_config(data, tmp_path))
    daemons.append(d)
    d.start(web=False)
    wanted = queue_size + 3
    assert wait_until(lambda: len(d.events.query(limit=1000)) >= wanted, 20), "too few events"
    # no more events: the camera shows the video without the class
    d.reload(parse_config({**data, "cameras": [{"name": "cars", "source": str(footage.bottles), "loop": True,
                                                 "fps": 10}]}, tmp_path))
    time.sleep(1.0)       # an event open at the reload ends (end_after 0.05 s) and nothing new starts
    events = sorted(e.id for e in d.events.query(limit=1000))
    assert all(e.ended_at is not None for e in d.events.query(limit=1000))
    dropped = sink_count(d, "monitor_sink_dropped_total", "phone")
    assert dropped == len(events) - 1 - queue_size, (dropped, events)
    assert sink_count(d, "monitor_sink_failures_total", "phone") == 0      # still retrying, nothing given up

    with Receiver("ok", port=port) as hook:
        assert hook.wait_for(1 + queue_size, 20), f"only {hook.hits} delivered after the receiver came back"
        time.sleep(0.5)
        assert hook.hits == 1 + queue_size
        ids = [i for r in hook.requests for i in events if r["message"].endswith(f"/#event-{i}")]
        assert ids == events[:1 + queue_size], (ids, events)
    assert sink_count(d, "monitor_sink_failures_total", "phone") == 0
    d.stop()


# ------------------------------------------------------------------------------------------------ units


def test_secret_words_hide_the_tokens_of_apprise_urls() -> None:
    cases = {
        "tgram://123456789:AAHsecretTOKENabc/987654321": ["123456789:AAHsecretTOKENabc", "AAHsecretTOKENabc"],
        "ntfys://user:pa55word@ntfy.example.org/my-secret-topic": ["pa55word", "my-secret-topic"],
        "pover://userkey1234@apptoken5678": ["userkey1234", "apptoken5678"],
        "discord://1234567/WEBHOOKTOKEN123": ["WEBHOOKTOKEN123"],
        "mailto://bob:hunter2x@localhost:25?from=a@example.com&to=b@example.com&smtp=127.0.0.1": ["hunter2x"],
        "json://127.0.0.1:8000/hook-path-zz?+X-Token=abcdef123": ["hook-path-zz"],
    }
    for url, secrets in cases.items():
        words = secret_words(url)
        assert set(secrets) <= words, (url, words)
        assert "127.0.0.1" not in words and "example.com" not in words and "localhost" not in words
        shown = shown_url(url)
        assert "://…" in shown and all(s not in shown for s in secrets), shown
    assert shown_url("tgram://123456789:AAHsecretTOKENabc/987654321") == "Telegram (tgram://…)"


def test_secret_registry_counts_holders_and_hides_every_form() -> None:
    reg = SecretWords()
    assert reg.add(["123456789:AAHsecretTOKENabc", "topic-xyz", "tpc-x1", "abc"])
    line = ("POST https://api.telegram.org/bot123456789:AAHsecretTOKENabc/sendPhoto for topic-xyz; "
            "encoded 123456789%3AAAHsecretTOKENabc; json \"123456789:AAHsecretTOKENabc\"; abc stays; "
            "for tpc-x1, mytpc-x1 stays")
    hidden = reg.hide(line)
    assert "AAHsecretTOKENabc" not in hidden and " topic-xyz" not in hidden
    assert "abc stays" in hidden            # shorter than MIN_LENGTH: never taken
    assert "for ***, mytpc-x1 stays" in hidden   # a short word is hidden as a whole word only
    reg.add(["topic-xyz"])                  # a second holder (a reload's new sink)
    reg.discard(["123456789:AAHsecretTOKENabc", "topic-xyz", "tpc-x1", "abc"])
    assert reg.hide("x topic-xyz y") == "x *** y"       # still held once
    assert reg.hide("x 123456789:AAHsecretTOKENabc y") == "x 123456789:AAHsecretTOKENabc y"
    reg.discard(["topic-xyz"])
    assert reg.hide("x topic-xyz y") == "x topic-xyz y"
    # the process-wide one is what redact_url uses
    SECRETS.add(["only-in-this-test-42"])
    try:
        assert redact_url("GET /only-in-this-test-42 failed") == "GET /*** failed"
    finally:
        SECRETS.discard(["only-in-this-test-42"])
    assert redact_url("GET /only-in-this-test-42 failed") == "GET /only-in-this-test-42 failed"


BASE = {"model": {"weights": "w.pt"}, "cameras": [{"name": "door", "source": "sample"}],
        "watchlist": [{"name": "cars", "classes": ["car"]}, {"name": "dogs", "classes": ["dog"]}]}


def config_error(tmp_path: Path, notify: list) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "alerts": {"notify": notify}}, tmp_path)
    return str(info.value)


def test_config_errors_name_the_key_and_never_the_url(tmp_path: Path) -> None:
    token = "123456789:AAHsecretTOKENabc"
    cases = [
        ([{"urls": [f"tgramm://{token}/1"]}],
         "alerts.notify[0].urls[0]: unknown Apprise service 'tgramm'; did you mean 'tgram'?"),
        ([{"urls": [f"mailto://bob:{token}@127.0.0.1:2?from=not-an-address"]}],
         "alerts.notify[0].urls[0]: Apprise cannot use this mailto:// URL"),
        ([{"urls": [f"{token}"]}], "alerts.notify[0].urls[0]: must be an Apprise URL (service://...)"),
        ([{}], "alerts.notify[0].urls: no Apprise URL: give urls or urls_file"),
        ([{"urls_file": "missing.txt"}], f"alerts.notify[0].urls_file: cannot read '{tmp_path / 'missing.txt'}'"),
        ([{"urls": ["ntfys://ntfy.sh/t0pic"], "body": "{camera} {token}"}],
         "alerts.notify[0].body: unknown placeholder {token} (allowed: {camera}"),
        ([{"urls": ["ntfys://ntfy.sh/t0pic"], "rules": ["car"]}],
         "alerts.notify[0].rules[0]: unknown rule 'car' (watchlist: cars, dogs); did you mean 'cars'?"),
        ([{"urls": ["ntfys://ntfy.sh/a1"]}, {"urls": ["ntfys://ntfy.sh/b2"]}],
         "alerts.notify[1].name: duplicate notify name 'notify' (also alerts.notify[0]"),
        ([{"name": "webhook", "urls": ["ntfys://ntfy.sh/a1"]}],
         "alerts.notify[0].name: 'webhook' is the name of another alert sink"),
        ([{"urls": ["ntfys://ntfy.sh/t0pic"], "retry_for": "-1s"}], "alerts.notify[0].retry_for:"),
    ]
    for notify, expected in cases:
        message = config_error(tmp_path, notify)
        assert expected in message, (expected, message)
        assert "AAHsecretTOKENabc" not in message and "t0pic" not in message, message

    urls = tmp_path / "urls.txt"
    urls.write_text("# ok\nntfys://ntfy.sh/t0pic\n\npover://userkey1234SECRET\n")     # line 4: no app token
    message = config_error(tmp_path, [{"urls_file": str(urls)}])
    assert f"alerts.notify[0].urls_file: '{urls}' line 4: Apprise cannot use this pover:// URL" in message, message
    assert "userkey1234SECRET" not in message
    urls.write_text("# nothing\n")
    assert f"alerts.notify[0].urls_file: '{urls}' holds no URL" in config_error(tmp_path, [{"urls_file": str(urls)}])

    urls.write_text(f"ntfys://ntfy.sh/t0pic\ntgram://{token}/42\n")
    cfg = parse_config({**BASE, "alerts": {"notify": [{"name": "phone", "urls_file": str(urls),
                                                       "urls": ["ntfy://127.0.0.1/x1y2"], "rules": ["dogs"]}]}},
                       tmp_path)
    target = cfg.alerts.notify[0]
    assert target.all_urls == ("ntfy://127.0.0.1/x1y2", "ntfys://ntfy.sh/t0pic", f"tgram://{token}/42")
    assert "t0pic" not in repr(cfg) and "AAHsecretTOKENabc" not in repr(cfg) and "x1y2" not in repr(cfg)
    with pytest.raises(ConfigError, match=r"alerts.notify\[0\]: all_urls: unknown key|unknown key"):
        parse_config({**BASE, "alerts": {"notify": [{"urls": ["ntfy://h/x"], "all_urls": ["ntfy://h/y"]}]}},
                     tmp_path)
