"""A custom-class head: a linear layer on the backbone's pooled features, saved with what it was trained on.

File format: a NumPy .npz archive (read with allow_pickle=False, so a hostile file cannot run code) holding
`weight` (C, D) float32, `bias` (C,) float32 and `meta`, a UTF-8 JSON document as uint8:
    {"format": "monitor-head 1", "name", "classes": [...], "backbone": {"sha256", "name"},
     "crop": "center" | "full", "summary": {...training figures...}}
The runtime needs numpy only: a head costs one (N, D) x (D, C) product per batch.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.inference.heads.storage import write_files

FORMAT = "monitor-head 1"
MAX_FILE_BYTES = 16 * 1024 * 1024     # 1000 classes x 512 floats is 2 MB: anything far larger is not a head
MAX_CLASSES = 1000
NONE_CLASS = "none"


class HeadError(Exception):
    """A head file that is missing, damaged, not a head, or trained on another backbone; names the file."""


@dataclass(frozen=True)
class Head:
    name: str
    classes: tuple[str, ...]
    weight: np.ndarray                  # (C, D) float32, applied to raw (un-normalised) pooled features
    bias: np.ndarray                    # (C,) float32
    backbone: dict[str, Any]            # {"sha256": artifact sha256 it was trained on, "name": ...}
    crop: str = "center"                # how training examples were cropped ("center" | "full")
    summary: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"head {self.name!r}: weight {self.weight.shape} and bias {self.bias.shape} disagree")
        if len(self.classes) != self.weight.shape[0]:
            raise ValueError(f"head {self.name!r}: {len(self.classes)} classes but {self.weight.shape[0]} rows")

    def index(self, class_name: str) -> int:
        try:
            return self.classes.index(class_name)
        except ValueError:
            raise KeyError(f"head {self.name!r} has no class {class_name!r} "
                           f"(it has: {', '.join(self.classes)})") from None

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, D) pooled features -> (N, C) float32 logits."""
        return np.asarray(features, dtype=np.float32) @ self.weight.T + self.bias

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(N, D) pooled features -> (N, C) float32 softmax."""
        return softmax(self.logits(features))

    def check_backbone(self, sha256: str, where: str = "") -> None:
        """Refuse a head trained on another backbone: its weights would read meaningless features."""
        trained_on = str(self.backbone.get("sha256", ""))
        if trained_on != sha256:
            src = where or (str(self.path) if self.path else f"head {self.name!r}")
            raise HeadError(f"{src}: trained on backbone {trained_on[:12] or '?'} "
                            f"({self.backbone.get('name', '?')}), but the loaded model is {sha256[:12]}; "
                            f"retrain it with `monitor classes train {self.name} EXAMPLES_DIR`")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32, copy=False)


def head_bytes(head: Head) -> bytes:
    """The head file's content (an .npz archive)."""
    meta = {"format": FORMAT, "name": head.name, "classes": list(head.classes), "backbone": head.backbone,
            "crop": head.crop, "summary": head.summary}
    buf = io.BytesIO()
    np.savez(buf, weight=head.weight.astype(np.float32), bias=head.bias.astype(np.float32),
             meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8))
    return buf.getvalue()


def save_head(head: Head, path: str | Path) -> Path:
    """Write atomically (temp file + rename), so a daemon reloading the head never reads half a file."""
    path = Path(path)
    write_files([(path, head_bytes(head))])
    return path


def load_head(path: str | Path, backbone_sha256: str | None = None) -> Head:
    """Read and check a head file; with backbone_sha256, refuse a head trained on another backbone."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise HeadError(f"{path}: {size} bytes is too large for a head file (at most {MAX_FILE_BYTES})")
        data = path.read_bytes()
    except FileNotFoundError:
        raise HeadError(f"{path}: no such head file (train one with `monitor classes train NAME "
                        f"EXAMPLES_DIR --out {path}`)") from None
    except IsADirectoryError:
        raise HeadError(f"{path}: is a directory, not a head file") from None
    except OSError as e:
        raise HeadError(f"{path}: cannot read head file: {e.strerror or e}") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("weight", "bias", "meta") if k in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise HeadError(f"{path}: not a head file (unreadable archive: {type(e).__name__})") from None
    missing = [k for k in ("weight", "bias", "meta") if k not in arrays]
    if missing:
        raise HeadError(f"{path}: not a head file (missing {', '.join(missing)})")
    try:
        meta = json.loads(arrays["meta"].astype(np.uint8).tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise HeadError(f"{path}: damaged head metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HeadError(f"{path}: not a head file (format {meta.get('format') if isinstance(meta, dict) else '?'!r}, "
                        f"expected {FORMAT!r})")
    weight, bias = arrays["weight"], arrays["bias"]
    classes = meta.get("classes")
    problem = _check_arrays(weight, bias, classes)
    if problem:
        raise HeadError(f"{path}: damaged head: {problem}")
    backbone = meta.get("backbone") if isinstance(meta.get("backbone"), dict) else {}
    head = Head(name=str(meta.get("name", path.stem)), classes=tuple(classes),
                weight=np.ascontiguousarray(weight, dtype=np.float32),
                bias=np.ascontiguousarray(bias, dtype=np.float32), backbone=backbone,
                crop=str(meta.get("crop", "center")),
                summary=meta.get("summary") if isinstance(meta.get("summary"), dict) else {}, path=path)
    if backbone_sha256 is not None:
        head.check_backbone(backbone_sha256)
    return head


def _check_arrays(weight: np.ndarray, bias: np.ndarray, classes: Any) -> str:
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        return "classes must be a list of non-empty names"
    if len(set(classes)) != len(classes):
        return "class names repeat"
    if not 2 <= len(classes) <= MAX_CLASSES:
        return f"{len(classes)} classes (a head needs 2 to {MAX_CLASSES})"
    if weight.dtype.kind != "f" or bias.dtype.kind != "f":
        return "weights are not floating point"
    if weight.shape != (len(classes), weight.shape[-1] if weight.ndim == 2 else -1) or bias.shape != (len(classes),):
        return f"weight {weight.shape} / bias {bias.shape} do not match {len(classes)} classes"
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        return "weights hold NaN or infinity"
    return ""
