"""POST /api/classify/batch on a real daemon: multipart and zip batches of real frames, one NDJSON line per file in
order, a bad file's own line, every limit named in its refusal, zip bombs, the guard, and real headless Chromium
posting a FormData and reading the stream."""
from __future__ import annotations

import base64
import io
import json
import socket
import stat
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pytest

from monitor.web.server import UPLOADS_AT_ONCE
from testkit.chromium import Browser
from testkit.waiting import wait_until
from tests.test_upload_bombs import flat, scan_bomb
from tests.webapp import Served, make_config, request

PATH = "/api/classify/batch"
MAX_FILES, MAX_BYTES, FILE_BYTES, PIXELS = 8, 3 * 2**20, 2**20, 8_000_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("batch")
    cfg = make_config(tmp, demo_weights, [{"name": "cam", "source": str(tmp / "missing.mp4")}],
                      server={"batch_max_files": MAX_FILES, "batch_max_bytes": MAX_BYTES,
                              "upload_max_bytes": FILE_BYTES, "upload_max_pixels": PIXELS})
    # The daemon is built, not started: no camera competes with the batches.
    with Served(cfg, start_daemon=False) as s:
        yield s


@pytest.fixture(scope="module")
def jpegs(real_frames: list[np.ndarray]) -> list[bytes]:
    return [cv2.imencode(".jpg", f)[1].tobytes() for f in real_frames[::3]]


def multipart(files: list[tuple[str, bytes]], field: str = "files", boundary: str = "b4tch-XyZ") -> tuple[bytes, str]:
    out = b""
    for name, data in files:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(served: Served, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """(status, the lines (NDJSON) or the error document, response headers)."""
    r = request(served.port, "POST", PATH, body, {"Content-Type": ctype, **(headers or {})}, timeout=60)
    if r.status != 200:
        return r.status, r.json(), r.headers
    lines = r.body.decode().splitlines()
    assert r.body.endswith(b"\n") and all(lines), r.body[-200:]
    return r.status, [json.loads(line) for line in lines], r.headers


def zipped(entries: list[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def expected(served: Served, data: bytes) -> list[tuple[str, int]]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return [(p.label, p.index) for p in served.app.classifier.classify([image], 3)[0]]


def results(lines: list[dict]) -> list[dict]:
    assert lines[-1]["done"] is True, lines[-1]
    body = lines[:-1]
    assert [line["index"] for line in body] == list(range(len(body)))
    return body


# ---------------------------------------------------------------------------------------------- batches


def test_multipart_batch_one_line_per_file_in_order_with_a_bad_files_line(served: Served, jpegs: list[bytes]) -> None:
    png = cv2.imencode(".png", cv2.imdecode(np.frombuffer(jpegs[3], np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
    files = [("a.jpg", jpegs[0]), ("b.jpg", jpegs[1]), ("notes.txt", b"not an image"), ("c.png", png),
             ("d.jpg", jpegs[2]), ("broken.jpg", jpegs[4][:300])]
    status, lines, headers = post(served, *multipart(files))
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson", lines
    body = results(lines)
    assert [line["file"] for line in body] == [n for n, _ in files]
    assert body[2]["status"] == 415 and "'notes.txt'" in body[2]["error"] and "not a readable image" in body[2]["error"]
    assert body[5]["status"] in (415, 422) and "broken.jpg" in body[5]["error"]
    for line, (_, data) in zip(body, files):
        if "error" not in line:
            assert [(p["label"], p["index"]) for p in line["predictions"]] == expected(served, data), line
            assert (line["width"], line["height"]) == cv2.imdecode(np.frombuffer(data, np.uint8), 1).shape[1::-1]
    summary = lines[-1]
    assert (summary["files"], summary["classified"], summary["errors"]) == (6, 4, 2)
    assert summary["model"]["name"] == served.app.classifier.meta.name


def test_zip_of_a_folder_keeps_the_paths(served: Served, jpegs: list[bytes]) -> None:
    archive = zipped([("cars/", b""), ("cars/a.jpg", jpegs[0]), ("cars/b.jpg", jpegs[1]),
                      ("bottles/c.jpg", jpegs[5]), ("README.txt", b"frames of the sample videos"),
                      ("__MACOSX/cars/._a.jpg", b"resource fork")], zipfile.ZIP_STORED)
    for body, ctype in ((archive, "application/zip"), multipart([("folder.zip", archive)], field="file")):
        status, lines, _ = post(served, body, ctype)
        assert status == 200, lines
        got = results(lines)
        assert [line["file"] for line in got] == ["cars/a.jpg", "cars/b.jpg", "bottles/c.jpg", "README.txt"]
        assert got[3]["status"] == 415 and "README.txt" in got[3]["error"]
        assert [(p["label"], p["index"]) for p in got[2]["predictions"]] == expected(served, jpegs[5])


# ---------------------------------------------------------------------------------------------- limits


def test_request_wide_limits_are_named_before_the_stream(served: Served, jpegs: list[bytes]) -> None:
    many = [(f"f{i}.jpg", jpegs[0]) for i in range(MAX_FILES + 1)]
    status, doc, _ = post(served, *multipart(many))
    assert status == 413 and "server.batch_max_files" in doc["error"], doc
    status, doc, _ = post(served, zipped(many), "application/zip")
    assert status == 413 and "server.batch_max_files" in doc["error"], doc
    status, doc, _ = post(served, *multipart([("big.bin", b"\0" * (MAX_BYTES + 10))]))
    assert status == 413 and "server.batch_max_bytes" in doc["error"], doc
    status, doc, _ = post(served, b"\xff\xd8\xff" + b"\0" * 100, "image/jpeg")
    assert status == 415 and "application/zip" in doc["error"], doc
    status, doc, _ = post(served, b"PK\x03\x04 no directory", "application/zip")
    assert status == 400 and "not a zip archive" in doc["error"], doc
    # the slot and memory of every refused batch were given back: a batch still goes through
    status, lines, _ = post(served, *multipart([("ok.jpg", jpegs[0])]))
    assert status == 200 and results(lines)[0]["predictions"], lines
    # given back on the event loop once the stream has ended, which may be just after the client read it all
    assert wait_until(lambda: served.web.body_budget.used == 0, timeout=5), served.web.body_budget.used


def test_per_file_limits_are_the_single_uploads(served: Served, jpegs: list[bytes]) -> None:
    big = jpegs[0] + b"\0" * (FILE_BYTES + 1 - len(jpegs[0]))
    huge = cv2.imencode(".png", flat(3000, 3000))[1].tobytes()          # 9 MP > upload_max_pixels
    files = [("big.jpg", big), ("huge.png", huge), ("scans.jpg", scan_bomb(2000, 2000)), ("ok.jpg", jpegs[1])]
    status, lines, _ = post(served, *multipart(files))
    assert status == 200, lines
    big_line, huge_line, scans_line, ok_line = results(lines)
    assert big_line["status"] == 413 and "server.upload_max_bytes" in big_line["error"]
    assert huge_line["status"] == 413 and "server.upload_max_pixels" in huge_line["error"]
    assert scans_line["status"] == 422 and "scans" in scans_line["error"]          # decoding cost, from the header
    assert ok_line["predictions"]


def test_a_decode_past_its_cpu_time_is_that_files_error(served: Served, jpegs: list[bytes]) -> None:
    png = cv2.imencode(".png", flat(2600, 2600))[1].tobytes()
    pool = served.web.decoders
    cpu = pool.cpu_seconds
    pool.cpu_seconds = 0.0            # any tick of decoding CPU is over the budget
    try:
        status, lines, _ = post(served, *multipart([("slow.png", png)]))
    finally:
        pool.cpu_seconds = cpu
    assert status == 200, lines
    line = results(lines)[0]
    assert line["status"] == 422 and "s of CPU" in line["error"], line
    status, lines, _ = post(served, *multipart([("after.jpg", jpegs[0])]))
    assert results(lines)[0]["predictions"]


# ---------------------------------------------------------------------------------------------- zip bombs


def _patch_central(archive: bytes, entry: int, offset: int, value: int) -> bytes:
    """Overwrite a 4-byte field of the `entry`-th central directory header."""
    at = -1
    for _ in range(entry + 1):
        at = archive.index(b"PK\x01\x02", at + 1)
    return archive[:at + offset] + struct.pack("<L", value) + archive[at + offset + 4:]


def test_zip_bombs_and_tricks_get_their_own_lines(served: Served, jpegs: list[bytes]) -> None:
    inner = zipped([("x.jpg", jpegs[0])])
    link = zipfile.ZipInfo("link.jpg")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    entries: list[tuple[str | zipfile.ZipInfo, bytes]] = [
        ("ok.jpg", jpegs[0]), ("zeros.bmp", b"\0" * 900_000), ("inner.zip", inner), ("disguised.jpg", inner),
        ("/etc/abs.jpg", jpegs[1]), ("../up.jpg", jpegs[1]), ("a/../../b.jpg", jpegs[1]), (link, b"ok.jpg")]
    status, lines, _ = post(served, zipped(entries), "application/zip")
    assert status == 200, lines
    got = {line["file"]: line for line in results(lines)}
    assert got["ok.jpg"]["predictions"]
    assert got["zeros.bmp"]["status"] == 413 and "compression ratio" in got["zeros.bmp"]["error"]
    for name in ("inner.zip", "disguised.jpg"):
        assert got[name]["status"] == 415 and "nesting" in got[name]["error"], got[name]
    for name in ("/etc/abs.jpg", "../up.jpg", "a/../../b.jpg"):
        assert got[name]["status"] == 400 and "'..' path" in got[name]["error"], got[name]
    assert got["link.jpg"]["status"] == 415 and "symbolic link" in got["link.jpg"]["error"]


def test_declared_sizes_that_lie(served: Served, jpegs: list[bytes]) -> None:
    stored = zipped([("small.jpg", jpegs[0]), ("ok.jpg", jpegs[1])], zipfile.ZIP_STORED)
    shrunk = _patch_central(stored, 0, 24, 100)                     # declares 100 bytes, holds more
    deflated = zipped([("grown.jpg", jpegs[0])])
    grown = _patch_central(deflated, 0, 24, len(jpegs[0]) + 5000)   # declares more than it holds
    for archive, name in ((shrunk, "small.jpg"), (grown, "grown.jpg")):
        status, lines, _ = post(served, archive, "application/zip")
        assert status == 200, lines
        line = results(lines)[0]
        assert line["file"] == name and line["status"] == 422 and "declares" in line["error"], line
    assert results(post(served, shrunk, "application/zip")[1])[1]["predictions"]


def test_zip_bombs_refused_as_a_whole(served: Served, jpegs: list[bytes]) -> None:
    status, doc, _ = post(served, zipped([(f"z{i}.bmp", b"\0" * 900_000) for i in range(4)]), "application/zip")
    assert status == 413 and "unpack" in doc["error"] and "server.batch_max_bytes" in doc["error"], doc
    status, doc, _ = post(served, zipped([(f"d{i}/", b"") for i in range(2 * MAX_FILES + 65)]), "application/zip")
    assert status == 413 and "entry count" in doc["error"], doc
    two = zipped([("a.jpg", jpegs[0]), ("b.jpg", jpegs[0])], zipfile.ZIP_STORED)
    overlapping = _patch_central(two, 1, 42, 0)                     # the second entry's data is the first's
    status, doc, _ = post(served, overlapping, "application/zip")
    assert status == 400 and "overlap" in doc["error"], doc


def test_a_client_that_hangs_up_mid_stream_gives_back_what_the_batch_held(served: Served, jpegs: list[bytes]) -> None:
    body, ctype = multipart([(f"f{i}.jpg", jpegs[i % len(jpegs)]) for i in range(MAX_FILES)])
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as s:
        s.sendall(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = s.recv(200)
        assert head.startswith(b"HTTP/1.1 200"), head
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))     # a reset, not a goodbye
    web = served.web
    assert wait_until(lambda: web.body_budget.used == 0 and web.uploads._value == UPLOADS_AT_ONCE
                      and web.decoders.busy == 0, 15), (
        web.body_budget.used, web.uploads._value)
    status, lines, _ = post(served, *multipart([("after.jpg", jpegs[0])]))
    assert status == 200 and results(lines)[0]["predictions"]


# ---------------------------------------------------------------------------------------------- guard, docs


def test_the_guard_refuses_other_sites_and_hosts(served: Served, jpegs: list[bytes]) -> None:
    body, ctype = multipart([("a.jpg", jpegs[0])])
    status, doc, _ = post(served, body, ctype, {"Origin": "http://evil.test", "Sec-Fetch-Site": "cross-site"})
    assert status == 403, doc
    status, doc, _ = post(served, body, ctype, {"Host": "evil.test"})
    assert status == 421, doc
    spec = request(served.port, "GET", "/openapi.json").json()
    op = spec["paths"][PATH]["post"]
    assert set(op["requestBody"]["content"]) == {"multipart/form-data", "application/zip"}
    refs = {s["$ref"] for s in op["responses"]["200"]["content"]["application/x-ndjson"]["schema"]["anyOf"]}
    assert {r.rsplit("/", 1)[1] for r in refs} == {"BatchResult", "BatchError", "BatchSummary"} <= set(
        spec["components"]["schemas"])


def test_chromium_posts_a_formdata_and_reads_the_stream(served: Served, jpegs: list[bytes], tmp_path: Path) -> None:
    files = [base64.b64encode(d).decode() for d in jpegs[:2]] + [base64.b64encode(b"plain text").decode()]
    script = """(async () => {
        const form = new FormData();
        %s.forEach((b64, i) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            form.append('files', new Blob([bytes]), ['one.jpg', 'two.jpg', 'three.txt'][i]);
        });
        const r = await fetch('/api/classify/batch', {method: 'POST', body: form});
        const reader = r.body.getReader(), decoder = new TextDecoder();
        let text = '', chunks = 0;
        for (;;) {
            const {done, value} = await reader.read();
            if (done) break;
            chunks += 1;
            text += decoder.decode(value, {stream: true});
        }
        return {status: r.status, type: r.headers.get('content-type'), chunks,
                lines: text.trim().split('\\n').map((l) => JSON.parse(l))};
    })()""" % json.dumps(files)
    with Browser(tmp_path) as browser:
        page = browser.page(f"http://127.0.0.1:{served.port}/")
        got = page.evaluate(script)
        assert page.errors() == []
    assert got["status"] == 200 and got["type"] == "application/x-ndjson", got
    lines = results(got["lines"])
    assert [line["file"] for line in lines] == ["one.jpg", "two.jpg", "three.txt"]
    assert [(p["label"], p["index"]) for p in lines[0]["predictions"]] == expected(served, jpegs[0])
    assert lines[2]["status"] == 415
