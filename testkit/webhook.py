"""A real HTTP receiver on 127.0.0.1 for webhook tests: answers 200, answers 500, accepts and hangs, or redirects
(301/302/307/308 to /moved on the same server, which answers 200 to anything)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """`with Receiver("ok"|"500"|"hang"|"301"|"302"|"307"|"308") as r:` then POST to r.url; r.requests holds the
    decoded JSON bodies of POSTs to r.url, r.calls every request as (method, path). `port`: a given one (a
    receiver that comes back where it was), `path`: the one r.url has (default /hook)."""

    def __init__(self, mode: str = "ok", port: int = 0, path: str = "/hook") -> None:
        if mode not in ("ok", "500", "hang", "301", "302", "307", "308"):
            raise ValueError(mode)
        self.mode = mode
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.calls: list[tuple[str, str]] = []
        self.hits = 0
        self.release = threading.Event()      # set at exit so hung handlers return
        self.received = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, code: int, location: str | None = None) -> None:
                self.send_response(code)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def do_GET(self) -> None:  # noqa: N802
                with receiver.received:
                    receiver.calls.append(("GET", self.path))
                self._answer(200)

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver.received:
                    receiver.calls.append(("POST", self.path))
                if self.path != path:
                    self._answer(200)
                    return
                with receiver.received:
                    receiver.hits += 1
                    receiver.headers.append(dict(self.headers))
                    try:
                        receiver.requests.append(json.loads(body))
                    except ValueError:
                        receiver.requests.append({"_raw": body.decode("latin-1")})
                    receiver.received.notify_all()
                if receiver.mode == "hang":
                    receiver.release.wait(30)
                    return
                if receiver.mode.startswith("3"):
                    self._answer(int(receiver.mode), f"http://127.0.0.1:{self.server.server_address[1]}/moved")
                    return
                self._answer(200 if receiver.mode == "ok" else 500)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def wait_for(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least n requests arrived (True) or timeout (False)."""
        with self.received:
            return self.received.wait_for(lambda: self.hits >= n, timeout)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
