"""The `notify` sink: an event's start sent through Apprise (ntfy, Telegram, e-mail, Pushover, ...) with its
snapshot JPEG attached, one sink (thread + bounded queue, monitor.alerts.sinks) per alerts.notify entry.

Why retry for minutes instead of a few attempts like the webhook: a phone's service being down for a while (the
mail server restarting, no uplink) should not cost the notifications of that while. The head of the queue is
retried with backoff for `retry_for`, the next ones wait behind it, and only past the queue's bound are
deliveries dropped (counted in monitor_sink_dropped_total). Each URL of an entry is its own Apprise object, so a
retry resends only to the services that failed, never a duplicate to the ones that got it.

Secrets: the URLs' literal secrets are registered with monitor.core.redact.SECRETS while the sink lives, so every
log line (Apprise's own included) and every error is redacted; the sink names a URL only as shown_url() gives it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

import apprise
from apprise.attachment.memory import AttachMemory

from monitor.alerts.event import Event
from monitor.alerts.sinks import _BACKOFF_CAP, _Delivery, _Sink
from monitor.config.apprise_urls import secret_words, shown_url
from monitor.config.types import NOTIFY_PLACEHOLDERS, NotifyConfig
from monitor.core.redact import SECRETS, redact_url

if TYPE_CHECKING:
    from monitor.alerts.sinks import SinkSet

log = logging.getLogger(__name__)

_REASON_MAX = 300            # characters of Apprise's own explanation kept in our warning


@dataclass(frozen=True)
class _Target:
    shown: str                  # "Telegram (tgram://…)"
    apprise: apprise.Apprise    # this URL alone, so a retry reaches only the services that failed


def event_values(event: Event, public_url: str | None, clips: bool = False) -> dict[str, str]:
    """What the title and body placeholders stand for."""
    base = (public_url or "").rstrip("/")
    has_id = event.id is not None
    return {
        "camera": event.camera, "rule": event.rule, "label": event.label, "score": f"{event.score:.2f}",
        "time": datetime.fromtimestamp(event.started_at).strftime("%Y-%m-%d %H:%M:%S"),
        "event_id": str(event.id) if has_id else "",
        "link": f"{base}/#event-{event.id}" if base and has_id else "",
        "snapshot_url": f"{base}/api/events/{event.id}/snapshot.jpg" if base and has_id else "",
        # where the clip will be: it completes after the event and its post-roll (monitor/clips)
        "clip_url": f"{base}/api/events/{event.id}/clip.mp4" if base and has_id and clips else "",
    }


def fill(template: str, values: dict[str, str]) -> str:
    """`template` with its {placeholders} replaced (the config checked there is no other); other braces stay."""
    for name in NOTIFY_PLACEHOLDERS:
        template = template.replace("{" + name + "}", values.get(name, ""))
    return template


class NotifySink(_Sink):
    kinds = ("start",)

    def __init__(self, owner: SinkSet, queue_size: int, *, cfg: NotifyConfig, public_url: str | None) -> None:
        super().__init__(owner, queue_size)
        self.name = cfg.name
        self.cfg = cfg
        self.public_url = public_url
        self.rules = frozenset(cfg.rules)
        self._secrets = set().union(*(secret_words(u) for u in cfg.all_urls))
        SECRETS.add(self._secrets)      # before the first Apprise object: it may log while loading a URL
        targets = []
        for url in cfg.all_urls:
            one = apprise.Apprise()
            one.add(url)                # Apprise logs the URL here (debug): its secrets are held already
            targets.append(_Target(shown_url(url), one))
        self.targets = tuple(targets)

    def offer(self, d: _Delivery) -> bool:
        if self.rules and d.event.rule not in self.rules:
            return True                 # not this target's rule: nothing to deliver, nothing dropped
        return super().offer(d)

    def close(self) -> None:
        """The sink is gone (stopped, replaced by a reload): its secrets no longer need hiding by it."""
        SECRETS.discard(self._secrets)
        self._secrets = set()           # a second close() must not uncover another holder's copy

    def handle(self, d: _Delivery) -> None:
        started = time.monotonic()
        ev = d.event
        values = event_values(ev, self.public_url, self.owner.clips)
        title = fill(self.cfg.title, values)
        body = fill(self.cfg.body, values).strip() or title
        attach = None
        if self.cfg.attach:
            picture = d.picture.get()
            if picture is not None:
                attach = AttachMemory(content=picture.jpeg, name=f"event-{ev.id if ev.id is not None else 'x'}.jpg",
                                      mimetype="image/jpeg")
        pending = list(self.targets)
        stop = self.owner._stop
        attempt = 0
        reasons: dict[str, str] = {}
        while True:
            failed = []
            for target in pending:
                reason = self._send(target, title, body, attach)
                if reason is not None:
                    failed.append(target)
                    reasons[target.shown] = reason
            if not failed:
                if attempt:
                    log.info("alert sink %s: event %s delivered after %d retries (%.1f s)", self.name, ev.id,
                             attempt, time.monotonic() - started)
                return
            pending = failed
            delay = min(_BACKOFF_CAP, self.owner.retry_backoff * (2 ** attempt))
            if time.monotonic() + delay - started > self.cfg.retry_for:
                break
            if attempt == 0:
                log.warning("alert sink %s: event %s not delivered to %s (%s); retrying for up to %.0f s, %d "
                            "waiting behind it", self.name, ev.id, ", ".join(t.shown for t in failed),
                            "; ".join(reasons[t.shown] for t in failed), self.cfg.retry_for, self.queue.qsize())
            attempt += 1
            if stop.wait(delay):
                reasons = {k: v + " (gave up retrying: stopping)" for k, v in reasons.items()}
                break
        self.fail("event %s (%s) not delivered to %s after %d attempt(s): %s", ev.id, d.kind,
                  ", ".join(t.shown for t in pending), attempt + 1,
                  "; ".join(reasons[t.shown] for t in pending))

    def _send(self, target: _Target, title: str, body: str, attach: Any) -> str | None:
        """One attempt to one URL: None when delivered, else why not (redacted)."""
        said: list[str] = []

        def keep(entry: Any, _service: Any) -> None:
            if len(said) < 8:
                said.append(str(getattr(entry, "message", entry)))
        try:
            result = target.apprise.notify(body=body, title=title, attach=attach, timeout=self.cfg.timeout,
                                           log_callback=keep)
        except Exception as exc:     # Apprise reports per service; this is a bug or a bad attachment
            return redact_url(f"{type(exc).__name__}: {exc}")[:_REASON_MAX]
        if result:
            return None
        reason = " ".join(said) or f"Apprise: {getattr(result, 'status', 'failed')}"
        return redact_url(reason)[:_REASON_MAX]


def notify_sinks(targets: Sequence[NotifyConfig], public_url: str | None) -> list[Callable[[SinkSet, int], NotifySink]]:
    """What SinkSet(extra=...) builds: one NotifySink per alerts.notify entry."""
    return [partial(NotifySink, cfg=target, public_url=public_url) for target in targets]
