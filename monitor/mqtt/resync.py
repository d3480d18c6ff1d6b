"""ResyncLimiter: Home Assistant's `online` answered by at most one re-publish per interval.

Anyone who may write `<discovery_prefix>/status` can send `online` as fast as the broker takes it, and each one
used to make the daemon re-publish every retained value (1,316 messages in 3 s -> 16.6k messages, 26 MB). Now:
the first `online` after a quiet interval is answered at once (Home Assistant just started and wants its
configs); the ones within the interval after it are coalesced into one re-publish at the end of the interval
(the last of them may be a real restart, so it is answered, late by at most the interval); every other one is
counted in monitor_mqtt_resyncs_suppressed_total.

Home Assistant coming back is answered at once, never at the interval's end: its MQTT client leaves a will,
`offline` on the same topic, which the broker sends when HA stops or dies, so an `online` after an `offline` is a
comeback (HA restarted quicker than the interval: its entities would read `unknown` until the interval ends).
At most one such comeback per interval is answered at once, so `offline`/`online` pairs sent as a flood cost at
most two re-publishes per interval.

10 s: a restart of a big Home Assistant takes longer than that, a small one's can not (2024.3 with few
integrations: about 5 s from its stop to its next `online`), hence the comeback above; its retained states are
on the broker meanwhile; a flood of `online` costs at most one re-publish (about 5 messages per camera, no
snapshot, plus the current label and custom class states: 2 messages each) per 10 s instead of one per message.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from prometheus_client import Counter

log = logging.getLogger(__name__)

RESYNC_INTERVAL = 10.0       # seconds between two re-publishes answering Home Assistant's `online`


class ResyncLimiter:
    """request() from paho's network thread for each `online`, offline() for each `offline`; poll() from a thread
    that ticks (the publisher round) fires the coalesced one when its interval is over. `fire` must be quick (it
    sets a flag)."""

    def __init__(self, fire: Callable[[], None], suppressed: Counter, interval: float = RESYNC_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fire = fire
        self._suppressed = suppressed
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last = float("-inf")       # when the last re-publish was asked for
        self._pending = False            # an `online` within the interval waits for its end
        self._coalesced = 0              # `online` messages of this interval answered by the pending one
        self._offline = False            # an `offline` (HA's will) came since the last re-publish
        self._comeback = float("-inf")   # when the last comeback was answered at once within an interval

    def offline(self) -> None:
        """Home Assistant's `offline` (its will: it stopped or died); its next `online` is a comeback."""
        with self._lock:
            self._offline = True

    def request(self, origin: str) -> None:
        now = self._clock()
        with self._lock:
            if not self._pending and now - self._last >= self.interval:
                self._last, self._offline = now, False
                fire = True
            elif self._offline and now - self._comeback >= self.interval:
                # HA came back within the interval: answered now; it also answers any `online` pending
                self._last, self._comeback, self._offline = now, now, False
                self._pending, self._coalesced = False, 0
                fire = True
                origin += ", back after 'offline'"
            else:
                if self._pending:
                    self._suppressed.inc()
                self._pending = True
                self._coalesced += 1
                fire = False
        if fire:
            log.info("mqtt: Home Assistant is online (%s): re-publishing discovery and states", origin)
            self._fire()

    def poll(self) -> None:
        now = self._clock()
        with self._lock:
            if not self._pending or now - self._last < self.interval:
                return
            self._pending, self._last, self._offline = False, now, False
            coalesced, self._coalesced = self._coalesced, 0
        if coalesced > 1:
            log.warning("mqtt: %d 'online' messages on Home Assistant's status topic within %g s answered by one "
                        "re-publish (at most one per %g s; see monitor_mqtt_resyncs_suppressed_total)",
                        coalesced, self.interval, self.interval)
        else:
            log.info("mqtt: Home Assistant is online again within %g s: re-publishing discovery and states",
                     self.interval)
        self._fire()
