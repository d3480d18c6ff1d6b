"""What the web layer of this tree costs the daemon against another revision, both measured in the same run.

    .venv/bin/python scripts/web_cost.py BEFORE_REV [--rounds 5]

BEFORE_REV is checked out beside (git worktree, removed at the end) and both trees run with the same venv, in
alternating order, round by round: (1) the import of monitor.web.server in a fresh process that has imported
monitor.daemon already (what Daemon.start() adds), median wall time; (2) a real daemon (`python -m monitor run`,
demo weights, one camera on a file of ../shared/data/videos) read at /readyz, then after serving /openapi.json and,
where the tree has it, /docs with its assets: VmRSS. Medians and the differences are printed.
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT.parent / "shared" / "data" / "videos" / "car-detection.mp4"
IMPORT = ("import time, monitor.daemon; t = time.perf_counter(); import monitor.web.server; "
          "print(time.perf_counter() - t)")
DOCS = ("/openapi.json", "/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css")


def _env(tree: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))},
            "PYTHONPATH": str(tree)}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def import_seconds(tree: Path) -> float:
    out = subprocess.run([sys.executable, "-c", IMPORT], cwd=tree, env=_env(tree), capture_output=True, text=True,
                         timeout=120, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def daemon_rss(tree: Path, tmp: Path, weights: Path) -> tuple[float, float, int]:
    """(MB at ready, MB after the docs requests, how many of them were answered 200)."""
    port = _free_port()
    state = Path(tempfile.mkdtemp(dir=tmp))
    config = state / "config.yaml"
    config.write_text(f"server: {{host: 127.0.0.1, port: {port}}}\n"
                      f"model: {{weights: {weights}, threads: 1}}\n"
                      f"cameras: [{{name: cam1, source: {VIDEO}, loop: true, fps: 2}}]\n"
                      f"events: {{database: {state / 'events.db'}}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "-c", str(config)], cwd=tree, env=_env(tree),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(port, "/readyz") == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon of {tree} did not get ready (exit {proc.poll()})")
            time.sleep(0.2)
        time.sleep(2)                     # a few frames through the pipeline
        ready = _rss_mb(proc.pid)
        ok = sum(_get(port, path) == 200 for _ in range(3) for path in DOCS)
        return ready, _rss_mb(proc.pid), ok
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", help="git revision to compare this tree with")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="web-cost-"))
    before = tmp / "before"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before), args.before], cwd=ROOT, check=True)
    try:
        weights = tmp / "demo.pt"
        subprocess.run([sys.executable, "-m", "monitor", "weights", "demo", "--out", str(weights)], cwd=ROOT,
                       env=_env(ROOT), check=True, capture_output=True)
        trees = {"before": before, "after": ROOT}
        imports: dict[str, list[float]] = {name: [] for name in trees}
        rss: dict[str, list[tuple[float, float, int]]] = {name: [] for name in trees}
        for i in range(args.rounds):
            for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
                imports[name].append(import_seconds(trees[name]))
                rss[name].append(daemon_rss(trees[name], tmp, weights))
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
        print(f"{args.before} (before) against this tree (after), {args.rounds} rounds each, alternating")
        med: dict[str, tuple[float, float, float]] = {}
        for name in trees:
            med[name] = (statistics.median(imports[name]) * 1000, statistics.median(r[0] for r in rss[name]),
                         statistics.median(r[1] for r in rss[name]))
            answered = rss[name][0][2]
            print(f"  {name:6}: import monitor.web.server {med[name][0]:6.1f} ms; daemon RSS {med[name][1]:6.1f} MB "
                  f"at ready, {med[name][2]:6.1f} MB after /openapi.json + /docs x3 ({answered}/{3 * len(DOCS)} "
                  f"answered 200)")
        b, a = med["before"], med["after"]
        print(f"  after - before: import {a[0] - b[0]:+.1f} ms, RSS at ready {a[1] - b[1]:+.1f} MB, "
              f"after the docs {a[2] - b[2]:+.1f} MB")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
