"""Weights download against a real HTTP server on 127.0.0.1, artifact integrity, build and demo."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from monitor import weights
from monitor.inference import artifact
from monitor.weights import model
from monitor.inference.classifier import Classifier

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    truncate: set[str] = set()

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        name = self.path.rsplit("/", 1)[-1]
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # A truncated transfer: announce the full length, send half, close.
        self.wfile.write(body[: len(body) // 2] if name in self.truncate else body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"files": {}, "truncate": set()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def int8_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """An INT8 state dict in the official checkpoint's layout, made here (random init), and its sha256."""
    torch.manual_seed(3)
    q = model.quantize(model.quantizable_resnet18(), lambda m: m(torch.randn(2, 3, 224, 224)), qconfig_engine="fbgemm")
    path = tmp_path_factory.mktemp("ckpt") / "int8.pth"
    torch.save(q.state_dict(), path)
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _test_descriptor(base: str, digest: str) -> dict[str, weights.WeightsDescriptor]:
    desc = dataclasses.replace(weights.OFFICIAL["int8"], url=f"{base}/test-int8_{digest[:8]}.pth",
                               sha256_prefix=digest[:8])
    return {"int8": desc}


def test_good_checkpoint_accepted_and_built(server, int8_checkpoint, tmp_path) -> None:
    base, handler = server
    data, digest = int8_checkpoint
    descriptors = _test_descriptor(base, digest)
    handler.files[descriptors["int8"].filename] = data
    checkpoint, built = weights.fetch("int8", tmp_path / "weights", base_url=None, progress=False,
                                      descriptors=descriptors)
    assert checkpoint.read_bytes() == data
    assert built == tmp_path / "weights" / "resnet18-int8.pt"
    clf = Classifier(built, runtime="torch")
    assert clf.meta.precision == "int8" and not clf.untrained
    assert clf.meta.source["sha256"] == digest
    assert clf.meta.calibration == {"needed": False}
    assert len(clf.labels) == 1000 and clf.labels[0] == "tench"
    assert clf.probabilities([np.zeros((240, 320, 3), np.uint8)]).shape == (1, 1000)
    ov = Classifier(built)  # auto: the OpenVINO artifact built next to it, with its compiled-model cache
    assert ov.runtime == "openvino" and ov.meta.source == clf.meta.source
    frames = [np.full((240, 320, 3), v, np.uint8) for v in (40, 200)]
    np.testing.assert_array_equal(ov.infer(frames).logits.argmax(1), clf.infer(frames).logits.argmax(1))
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == sorted(
        [checkpoint.name, built.name, "resnet18-int8.ov", "openvino-cache"])


@pytest.mark.parametrize("fault", ["corrupted", "truncated"])
def test_bad_download_rejected_and_leaves_nothing(server, int8_checkpoint, tmp_path, fault: str) -> None:
    base, handler = server
    data, digest = int8_checkpoint
    descriptors = _test_descriptor(base, digest)
    name = descriptors["int8"].filename
    if fault == "corrupted":
        handler.files[name] = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
    else:
        handler.files[name] = data
        handler.truncate.add(name)
    dest = tmp_path / "weights"
    with pytest.raises(weights.WeightsError) as err:
        weights.fetch("int8", dest, progress=False, descriptors=descriptors)
    assert base.split("//")[1] in str(err.value)
    assert ("does not start with" if fault == "corrupted" else "download") in str(err.value)
    assert list(dest.iterdir()) == []


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_official_descriptors_refuse_other_file(server, int8_checkpoint, tmp_path, variant: str) -> None:
    """The official descriptors, pointed at a mirror serving a file that is not the official one."""
    base, handler = server
    desc = weights.OFFICIAL[variant]
    handler.files[desc.filename] = int8_checkpoint[0]
    result = _cli("weights", "fetch", "--variant", variant, "--base-url", base, "--dir", "weights", cwd=tmp_path)
    assert result.returncode == 1
    assert f"does not start with {desc.sha256_prefix}" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "weights").iterdir()) == []


def test_unreachable_server_clear_error(tmp_path) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    result = _cli("weights", "fetch", "--base-url", f"http://user:secret@127.0.0.1:{port}/m", cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "cannot reach server" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


def test_base_url_from_environment(server, int8_checkpoint, tmp_path, monkeypatch) -> None:
    base, handler = server
    data, digest = int8_checkpoint
    descriptors = _test_descriptor("https://example.invalid/models", digest)
    handler.files[descriptors["int8"].filename] = data
    monkeypatch.setenv(weights.BASE_URL_ENV, base)
    path = weights.download(descriptors["int8"], tmp_path, progress=False)
    assert path.read_bytes() == data


def test_artifact_integrity(demo_weights, tmp_path) -> None:
    data = demo_weights.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) - 1000])
    altered = tmp_path / "altered.pt"
    altered.write_bytes(data[:-500] + bytes([data[-500] ^ 1]) + data[-499:])
    other = tmp_path / "other.pt"
    other.write_bytes(b"PK\x03\x04 a zip, not an artifact")
    for path, message in [(truncated, "sha256 mismatch"), (altered, "sha256 mismatch"),
                          (other, "not a monitor runtime artifact"), (tmp_path / "missing.pt", "no such weights file")]:
        with pytest.raises(artifact.ArtifactError) as err:
            Classifier(path)
        assert str(path) in str(err.value) and message in str(err.value)
    result = _cli("weights", "verify", str(truncated), cwd=tmp_path)
    assert result.returncode == 1 and "sha256 mismatch" in result.stderr and "Traceback" not in result.stderr


def test_verify_good_artifact(demo_weights, tmp_path) -> None:
    result = _cli("weights", "verify", str(demo_weights), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resnet18-demo-untrained" in result.stdout and "untrained" in result.stderr


def test_demo_is_deterministic_and_marked_untrained(demo_weights, tmp_path, real_frames) -> None:
    again = tmp_path / "again.pt"
    result = _cli("weights", "demo", "--out", str(again), cwd=tmp_path)
    assert result.returncode == 0 and "UNTRAINED" in result.stdout
    a, b = Classifier(demo_weights), Classifier(again)
    assert a.untrained and b.meta.untrained
    np.testing.assert_array_equal(a.probabilities(real_frames[:4]), b.probabilities(real_frames[:4]))


def test_build_from_fp32_with_calibration_on_video(tmp_path, real_frames) -> None:
    torch.manual_seed(5)
    ckpt = tmp_path / "resnet18-fp32.pth"
    torch.save(model.resnet18().state_dict(), ckpt)
    out = tmp_path / "built.pt"
    result = _cli("weights", "build", "--checkpoint", str(ckpt), "--calibrate", str(VIDEOS / "car-detection.mp4"),
                  "--frames", "16", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    clf = Classifier(out)
    assert clf.meta.calibration["frames"] == 16 and clf.meta.calibration["needed"]
    assert clf.meta.source["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert clf.probabilities(real_frames[:2]).shape == (2, 1000)
    # Without frames to calibrate on, an FP32 checkpoint cannot be quantized: a clear error, exit 1.
    result = _cli("weights", "build", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.pt"), cwd=tmp_path)
    assert result.returncode == 1 and "--calibrate" in result.stderr and not (tmp_path / "x.pt").exists()
