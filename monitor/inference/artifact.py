"""The runtime artifact: one file holding metadata and a frozen TorchScript module, hash-checked on every load.

Layout (all text lines are ASCII):

    MONITOR-ARTIFACT 1\\n
    <sha256 hex of header bytes + payload bytes>\\n
    <header length in bytes>\\n
    <header: UTF-8 JSON metadata>
    <payload: torch.jit.save bytes>

The digest covers metadata and payload, so a truncated, altered or swapped file is refused before torch
parses a single byte of it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MAGIC = b"MONITOR-ARTIFACT 1\n"


class ArtifactError(Exception):
    """The artifact file is missing, damaged or not an artifact; the message names the file."""


@dataclass(frozen=True)
class ArtifactMeta:
    name: str                          # e.g. "resnet18-int8"
    precision: str                     # "int8" | "fp32"
    engine: str                        # quantized engine the model was converted for ("x86", "qnnpack", "" for fp32)
    labels: tuple[str, ...]
    untrained: bool                    # True for `monitor weights demo`: predictions are meaningless
    preprocess: dict[str, Any]         # resize/crop/mean/std/input layout
    source: dict[str, Any] = field(default_factory=dict)       # checkpoint file name and sha256
    calibration: dict[str, Any] = field(default_factory=dict)  # frames, sources, or {} when none was needed
    created_at: str = ""
    torch_version: str = ""

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ArtifactMeta":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["labels"] = tuple(known.get("labels", ()))
        return cls(**known)


def save(path: str | Path, module: torch.jit.ScriptModule, meta: ArtifactMeta) -> str:
    """Write the artifact atomically (temp file + rename). Returns its sha256."""
    path = Path(path)
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    payload = buf.getvalue()
    header = json.dumps(meta.to_json(), sort_keys=True).encode("utf-8")
    digest = hashlib.sha256(header + payload).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + digest.encode() + b"\n" + str(len(header)).encode() + b"\n" + header + payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the daemon may run as another user than the builder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def read(path: str | Path) -> tuple[ArtifactMeta, bytes, str]:
    """Read and verify the artifact: (metadata, TorchScript payload, sha256). Raises ArtifactError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such weights file (create it with `monitor weights fetch` "
                            f"or `monitor weights demo --out {path}`)") from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read weights file: {e.strerror}") from None
    if not data.startswith(MAGIC):
        raise ArtifactError(f"{path}: not a monitor runtime artifact (build one with `monitor weights build`)")
    # memoryview slices: a 12 MB artifact is not copied three times on its way to torch (peak RSS counts).
    view = memoryview(data)
    try:
        digest_end = data.index(b"\n", len(MAGIC))
        length_end = data.index(b"\n", digest_end + 1)
        digest = data[len(MAGIC):digest_end].decode("ascii")
        header_len = int(data[digest_end + 1:length_end])
    except ValueError:
        raise ArtifactError(f"{path}: damaged artifact header") from None
    body = view[length_end + 1:]
    if hashlib.sha256(body).hexdigest() != digest:
        raise ArtifactError(f"{path}: sha256 mismatch: the file is truncated or altered "
                            f"({len(data)} bytes); rebuild or fetch it again")
    header, payload = bytes(body[:header_len]), bytes(body[header_len:])
    body.release()
    view.release()
    del data  # only the payload stays alive while torch parses it
    try:
        meta = ArtifactMeta.from_json(json.loads(header))
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"{path}: unreadable metadata: {e}") from None
    return meta, payload, digest


def load(path: str | Path) -> tuple[ArtifactMeta, torch.jit.ScriptModule, str]:
    """Verify and load the artifact: (metadata, frozen module, sha256)."""
    meta, payload, digest = read(path)
    buf = io.BytesIO(payload)  # shares the bytes object, no copy
    del payload
    if meta.engine:
        # Packed INT8 weights are re-packed for the current engine while the module loads.
        if meta.engine not in torch.backends.quantized.supported_engines:
            raise ArtifactError(f"{path}: built for quantized engine {meta.engine!r}, which this torch build lacks "
                                f"({', '.join(torch.backends.quantized.supported_engines)})")
        torch.backends.quantized.engine = meta.engine
    try:
        module = torch.jit.load(buf, map_location="cpu")
    except Exception as e:  # torch raises RuntimeError subclasses with multi-line C++ traces
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{path}: TorchScript payload does not load: {first}") from None
    module.eval()
    return meta, module, digest
