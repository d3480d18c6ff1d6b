"""The runtime artifact: one file holding metadata and named binary parts, hash-checked on every load.

Layout (all text lines are ASCII):

    MONITOR-ARTIFACT 2\\n
    <sha256 hex of header bytes + part bytes>\\n
    <header length in bytes>\\n
    <header: UTF-8 JSON metadata, with "parts": [[name, length], ...] in file order>
    <the parts, concatenated>

The torch artifact holds the frozen TorchScript module ("torchscript"); the OpenVINO artifact holds the IR
("ir_xml", "ir_bin"). Both hold the last layer's float weights ("fc_weight" (1000, 512) float32 for ResNet-18,
"fc_bias" (1000,) float32), and for a classifier with a hidden layer (MobileNetV3) that layer too ("hidden_weight",
"hidden_bias"), so that heads and class maps need no runtime introspection. The header's "arch" names the network
(monitor/inference/archs.py); the classifier checks these shapes against it on every load. The digest covers
metadata and parts, so a truncated, altered or swapped file is refused before a runtime parses a single byte of it.

This module imports neither torch nor OpenVINO: the runtime that reads a part imports itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT = 2
MAGIC_PREFIX = b"MONITOR-ARTIFACT "
MAGIC = MAGIC_PREFIX + str(FORMAT).encode() + b"\n"
REBUILD_HINT = ("rebuild with `monitor weights fetch`, `monitor weights build ...` or "
                "`monitor weights demo --out FILE`")


class ArtifactError(Exception):
    """The artifact file is missing, damaged or not an artifact; the message names the file."""


@dataclass(frozen=True)
class ArtifactMeta:
    name: str                          # e.g. "resnet18-int8"
    precision: str                     # "int8" | "fp32"
    engine: str                        # torch quantized engine ("x86", "qnnpack"), "openvino", "" for torch fp32
    labels: tuple[str, ...]
    untrained: bool                    # True for `monitor weights demo`: predictions are meaningless
    preprocess: dict[str, Any]         # resize/crop/mean/std/input layout
    source: dict[str, Any] = field(default_factory=dict)       # checkpoint file name and sha256
    calibration: dict[str, Any] = field(default_factory=dict)  # frames, sources, or {} when none was needed
    created_at: str = ""
    torch_version: str = ""
    runtime: str = "torch"             # "torch" | "openvino": which runtime reads the parts
    outputs: tuple[str, ...] = ("logits", "features", "feature_maps")
    versions: dict[str, str] = field(default_factory=dict)     # tool versions that built it (openvino, nncf)
    # The network's identity when another artifact holds the same network for another runtime: the OpenVINO
    # artifact names the sha256 of the torch artifact it was converted from, so heads trained on the features of
    # either fit both. "" means the artifact's own sha256.
    backbone: str = ""
    # Which network (monitor/inference/archs.py): its feature size and classifier shape are checked on every load.
    # Artifacts made before the choice of backbone hold ResNet-18.
    arch: str = "resnet18"

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["labels"] = list(self.labels)
        d["outputs"] = list(self.outputs)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ArtifactMeta":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["labels"] = tuple(known.get("labels", ()))
        known["outputs"] = tuple(known.get("outputs", cls.__dataclass_fields__["outputs"].default))
        return cls(**known)


def fc_parts(weight: np.ndarray, bias: np.ndarray) -> dict[str, bytes]:
    """The last layer as parts: (1000, 512) and (1000,) float32, C order."""
    return {"fc_weight": np.ascontiguousarray(weight, dtype=np.float32).tobytes(),
            "fc_bias": np.ascontiguousarray(bias, dtype=np.float32).tobytes()}


def hidden_parts(weight: np.ndarray, bias: np.ndarray) -> dict[str, bytes]:
    """A classifier's hidden layer (MobileNetV3: (1280, 960) and (1280,)), float32, C order: Grad-CAM's input."""
    return {"hidden_weight": np.ascontiguousarray(weight, dtype=np.float32).tobytes(),
            "hidden_bias": np.ascontiguousarray(bias, dtype=np.float32).tobytes()}


def hidden_arrays(parts: Mapping[str, bytes], width: int, inputs: int,
                  path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        weight = np.frombuffer(parts["hidden_weight"], dtype=np.float32).reshape(width, inputs)
        bias = np.frombuffer(parts["hidden_bias"], dtype=np.float32).reshape(width)
    except (KeyError, ValueError) as e:
        raise ArtifactError(f"{path}: the classifier's hidden layer ({width} x {inputs}) is missing or malformed "
                            f"({e}); {REBUILD_HINT}") from None
    return weight, bias


def fc_arrays(parts: Mapping[str, bytes], classes: int, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        weight = np.frombuffer(parts["fc_weight"], dtype=np.float32).reshape(classes, -1)
        bias = np.frombuffer(parts["fc_bias"], dtype=np.float32).reshape(classes)
    except (KeyError, ValueError) as e:
        raise ArtifactError(f"{path}: last-layer weights missing or malformed ({e}); {REBUILD_HINT}") from None
    return weight, bias


def save(path: str | Path, parts: Mapping[str, bytes], meta: ArtifactMeta) -> str:
    """Write the artifact atomically (temp file + rename). Returns its sha256."""
    path = Path(path)
    names = list(parts)
    header = json.dumps({**meta.to_json(), "parts": [[n, len(parts[n])] for n in names]},
                        sort_keys=True).encode("utf-8")
    h = hashlib.sha256(header)
    for n in names:
        h.update(parts[n])
    digest = h.hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + digest.encode() + b"\n" + str(len(header)).encode() + b"\n" + header)
            for n in names:
                f.write(parts[n])
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the daemon may run as another user than the builder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def read(path: str | Path) -> tuple[ArtifactMeta, dict[str, bytes], str]:
    """Read and verify the artifact: (metadata, parts by name, sha256). Raises ArtifactError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such weights file (create it with `monitor weights fetch` "
                            f"or `monitor weights demo --out {path}`)") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path}: is a folder, not a weights file") from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read weights file: {e.strerror}") from None
    if not data.startswith(MAGIC):
        if data.startswith(MAGIC_PREFIX):
            version = data[len(MAGIC_PREFIX):data.find(b"\n", len(MAGIC_PREFIX))][:8].decode("ascii", "replace")
            raise ArtifactError(f"{path}: artifact format {version} from another monitor version; this one reads "
                                f"format {FORMAT} (logits, features and feature maps in one pass): {REBUILD_HINT}")
        raise ArtifactError(f"{path}: not a monitor runtime artifact ({REBUILD_HINT})")
    # memoryview slices: the artifact is not copied three times on its way to the runtime (peak RSS counts).
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
    try:
        header = json.loads(bytes(body[:header_len]))
        meta = ArtifactMeta.from_json(header)
        layout = [(str(n), int(size)) for n, size in header["parts"]]
    except (ValueError, TypeError, KeyError) as e:
        raise ArtifactError(f"{path}: unreadable metadata: {e}") from None
    parts: dict[str, bytes] = {}
    offset = header_len
    for name, size in layout:
        parts[name] = bytes(body[offset:offset + size])
        offset += size
    body.release()
    view.release()
    if offset != len(data) - (length_end + 1):
        raise ArtifactError(f"{path}: parts do not add up to the file size; {REBUILD_HINT}")
    return meta, parts, digest
