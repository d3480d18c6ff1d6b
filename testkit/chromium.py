"""Headless Chromium for the page tests: one launch command, two ways to drive it.

- `run(tmp, url, "--dump-dom" | "--screenshot=...")`: one-shot, the page after its scripts ran for a while.
- `Browser` / `Page`: the Chrome DevTools Protocol, to click, choose and upload through the page's own
  JavaScript and read the DOM back while the test watches the daemon.

Why a hand-written protocol client: the maintained drivers bring a browser or a driver of their own (Playwright
downloads its browser builds and a Node runtime, Selenium needs chromedriver matched to the browser), while
the Debian chromium the tests already use speaks the protocol itself. Over --remote-debugging-pipe it is
newline-free JSON messages separated by NUL bytes on two inherited pipes (fd 3 in, fd 4 out): no port to
bind or to leave open to other local processes, no websocket to implement.
"""
from __future__ import annotations

import base64
import collections
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
WINDOW = (1280, 900)
# Flags for a quiet, reproducible headless browser: no GPU, no first-run UI, no calls home while a test runs.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
         f"--window-size={WINDOW[0]},{WINDOW[1]}")


class ChromiumError(RuntimeError):
    """The browser is missing, died, or answered a protocol command with an error."""


def command(profile: Path, *args: str) -> list[str]:
    if not Path(CHROMIUM).exists():
        raise ChromiumError(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]


def run(tmp: Path, url: str, *args: str, timeout: float = 40.0, budget_ms: int = 6000) -> bytes:
    """One-shot run (--dump-dom prints the DOM, --screenshot=PATH writes a PNG) after `budget_ms` of the
    page's virtual time; returns chromium's stdout."""
    profile = tmp / f"profile-{time.monotonic_ns()}"
    cmd = command(profile, f"--virtual-time-budget={budget_ms}", *args, url)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0:
        raise ChromiumError(f"chromium exited with {proc.returncode}")
    return out


def _above_nine(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """A headless Chromium driven over the DevTools protocol; `with Browser(tmp) as b: page = b.page(url)`."""

    # Events kept for the test to inspect (console messages, uncaught exceptions); older ones are dropped
    # and counted so that a chatty page cannot grow the test's memory.
    EVENTS_KEPT = 500

    def __init__(self, tmp: Path, timeout: float = 15.0, flags: tuple[str, ...] = ()) -> None:
        """flags: more command-line switches, e.g. --host-resolver-rules to give 127.0.0.1 other names."""
        self.timeout = timeout
        self.flags = tuple(flags)
        self.profile = tmp / f"profile-{time.monotonic_ns()}"
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=self.EVENTS_KEPT)
        self.events_dropped = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._to_browser = -1
        self._from_browser = -1
        self._next_id = 0
        self._answers: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._reader: threading.Thread | None = None

    def start(self) -> Browser:
        cmd = command(self.profile, *self.flags, "--remote-debugging-pipe", "about:blank")
        # The browser reads commands on its fd 3 and writes answers and events on its fd 4.
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        # The child's ends move above 9 first, so that placing them on 3 and 4 cannot overwrite one another.
        cmd_r, out_w = _above_nine(cmd_r), _above_nine(out_w)
        # bash puts the pipe ends on fds 3 and 4 and execs the browser (subprocess cannot renumber fds; a
        # preexec_fn could, but is unsafe in a process with threads).
        wired = ["/bin/bash", "-c", f'exec "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-', "chromium", *cmd]
        try:
            self._proc = subprocess.Popen(wired, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True,
                                          pass_fds=(cmd_r, out_w))
        finally:
            os.close(cmd_r)
            os.close(out_w)
        self._to_browser, self._from_browser = cmd_w, out_r
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        self.send("Target.setDiscoverTargets", {"discover": False})    # the first answer proves the pipe works
        return self

    def _read(self) -> None:
        partial: list[bytes] = []       # pieces of a message still being received (a screenshot is megabytes)
        try:
            while True:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    break
                *ends, rest = chunk.split(b"\0")
                for end in ends:
                    self._deliver(json.loads(b"".join(partial) + end))
                    partial = []
                if rest:
                    partial.append(rest)
        except OSError:
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _deliver(self, msg: dict[str, Any]) -> None:
        with self._cond:
            if "id" in msg:
                self._answers[msg["id"]] = msg
            else:
                if len(self.events) == self.events.maxlen:
                    self.events_dropped += 1
                self.events.append(msg)
            self._cond.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        """One protocol command; its result, or ChromiumError naming the command and the browser's answer."""
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        msg: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._to_browser, data):]
        except OSError as e:          # BrokenPipeError: the browser is gone
            raise ChromiumError(f"{method}: cannot write to chromium ({e}; exit code "
                                f"{self._proc.poll() if self._proc else None})") from None
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while ident not in self._answers:
                left = deadline - time.monotonic()
                if self._closed:
                    raise ChromiumError(f"{method}: chromium closed the protocol pipe "
                                        f"(exit code {self._proc.poll() if self._proc else None})")
                if left <= 0:
                    raise ChromiumError(f"{method}: no answer from chromium within {timeout or self.timeout} s")
                self._cond.wait(left)
            answer = self._answers.pop(ident)
        if "error" in answer:
            raise ChromiumError(f"{method}: {answer['error'].get('message')} {answer['error'].get('data', '')}")
        return answer.get("result", {})

    def page(self, url: str) -> Page:
        """A new tab attached to this client, with script errors and console output recorded, at `url`."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "DOM"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride", {"width": WINDOW[0], "height": WINDOW[1],
                                                         "deviceScaleFactor": 1, "mobile": False})
        page.navigate(url)
        return page

    def close(self) -> None:
        if self._proc is not None:
            try:
                if self._proc.poll() is None and not self._closed:
                    self.send("Browser.close", timeout=5)
                self._proc.wait(5)
            except (ChromiumError, OSError, subprocess.TimeoutExpired):
                pass
            if self._proc.poll() is None:
                # its own session (start_new_session): the group is the browser and its helper processes
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)        # the browser is gone: its end of the pipe closed, the reader saw EOF
        for fd in (self._to_browser, self._from_browser):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._to_browser = self._from_browser = -1
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab. Interaction goes through the browser's input pipeline (mouse events at the element's place on
    screen, the file chooser's files), so the page's own event handlers do the work, as for a user."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, self.session, timeout)

    def navigate(self, url: str, timeout: float = 15.0) -> None:
        answer = self.send("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise ChromiumError(f"navigating to {url}: {answer['errorText']}")
        if not self.wait("document.readyState === 'complete'", timeout):
            raise ChromiumError(f"{url} did not finish loading within {timeout} s")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited); page errors raise."""
        answer = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise ChromiumError(f"evaluating {expression[:80]!r}: {text}")
        return answer["result"].get("value")

    def wait(self, expression: str, timeout: float = 10.0, interval: float = 0.1) -> Any:
        """Poll `expression` until it is truthy (returned) or `timeout` passes (its last value)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() >= deadline:
                return value
            time.sleep(interval)

    def click(self, selector: str, hold: float = 0.0) -> None:
        """A left click in the middle of the first element matching `selector`, scrolled into view, the button
        held down for `hold` seconds (a page that rebuilds its controls meanwhile loses the click, as a user's
        would be). Refused when the element is not displayed or something else lies on top of it."""
        box = self.evaluate(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            if (!e) return 'missing';
            e.scrollIntoView({{block: 'center'}});
            const r = e.getBoundingClientRect();
            if (!r.width || !r.height) return 'not displayed';
            const x = r.left + r.width / 2, y = r.top + r.height / 2;
            const top = document.elementFromPoint(x, y);
            if (top !== e && !e.contains(top)) return 'covered by ' + (top ? top.outerHTML.slice(0, 80) : 'nothing');
            return [x, y];
        }})()""")
        if not isinstance(box, list):
            raise ChromiumError(f"cannot click {selector!r}: {box}")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            if kind == "mouseReleased" and hold:
                time.sleep(hold)
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                   "buttons": 1 if kind == "mousePressed" else 0,
                                                   "clickCount": 0 if kind == "mouseMoved" else 1})

    def select(self, selector: str, value: str) -> None:
        """Choose `value` in a <select> the way the browser does on a user's choice (selection + input/change
        events); refused when the list has no such option."""
        ok = self.evaluate(f"""(() => {{
            const s = document.querySelector({json.dumps(selector)});
            if (!s || ![...s.options].some((o) => o.value === {json.dumps(value)})) return false;
            s.value = {json.dumps(value)};
            s.dispatchEvent(new Event('input', {{bubbles: true}}));
            s.dispatchEvent(new Event('change', {{bubbles: true}}));
            return true;
        }})()""")
        if not ok:
            raise ChromiumError(f"{selector!r} has no option {value!r}")

    def set_files(self, selector: str, *paths: Path) -> None:
        """Give a file <input> these files, as the file chooser does (its change event fires)."""
        root = self.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise ChromiumError(f"no element {selector!r}")
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(p) for p in paths]})

    def play_and_seek(self, video: str, seek_to: float, watch_ms: int = 1500) -> dict[str, Any]:
        """Play the <video> that the CSS selector names (muted: autoplay), watch it for `watch_ms`, pause, seek
        to `seek_to` seconds. Returns readyState before and after the seek (ready, readyAfterSeek), currentTime at
        the start and end of the watch (t0, t1), seekedTo, duration, videoWidth as width, and error (None, or what
        play() threw with what the server answers a browser's Range request for the source)."""
        return self.evaluate("""(async () => {
            const v = document.querySelector(%s);
            const once = (name) => new Promise((ok) => v.addEventListener(name, ok, { once: true }));
            const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
            v.muted = true;
            try {
                await v.play();
            } catch (e) {
                const r = await fetch(v.currentSrc || v.src, { headers: { Range: 'bytes=0-' } });
                return { error: `${e} (media error ${v.error && v.error.code}; GET Range bytes=0- -> ${r.status} `
                    + `${r.headers.get('content-type')} ${r.headers.get('content-range')})` };
            }
            if (v.readyState < 2) await once('canplay');
            const ready = v.readyState, t0 = v.currentTime;
            await sleep(%d);
            const t1 = v.currentTime;
            v.pause();
            const seek = once('seeked');
            v.currentTime = %f;
            await seek;
            return { ready, t0, t1, seekedTo: v.currentTime, readyAfterSeek: v.readyState, duration: v.duration,
                     width: v.videoWidth, error: v.error && v.error.message };
        })()""" % (json.dumps(video), watch_ms, seek_to))

    def screenshot(self) -> bytes:
        """PNG of the viewport."""
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])

    def errors(self) -> list[str]:
        """Uncaught script exceptions and console errors of this tab so far."""
        out = []
        for ev in list(self.browser.events):
            if ev.get("sessionId") != self.session:
                continue
            params = ev.get("params", {})
            if ev.get("method") == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                out.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
            elif ev.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        return out
