"""A real HTTP receiver on 127.0.0.1 for webhook tests: answers 200, answers 500, or accepts and hangs."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """`with Receiver("ok"|"500"|"hang") as r:` then POST to r.url; r.requests holds the decoded JSON bodies."""

    def __init__(self, mode: str = "ok") -> None:
        if mode not in ("ok", "500", "hang"):
            raise ValueError(mode)
        self.mode = mode
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.hits = 0
        self.release = threading.Event()      # set at exit so hung handlers return
        self.received = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
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
                code = 200 if receiver.mode == "ok" else 500
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
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
