"""The torch runtime: the frozen TorchScript part of a torch artifact. Imported only when that runtime is used."""
from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import numpy as np
import torch

from monitor.inference.artifact import REBUILD_HINT, ArtifactError, ArtifactMeta

log = logging.getLogger(__name__)

_threads_lock = threading.Lock()
_threads_set: int | None = None


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count once per process; later calls keep the first value."""
    global _threads_set
    with _threads_lock:
        if _threads_set is None:
            if threads:
                torch.set_num_threads(threads)
            try:
                # One inference at a time (the classifier holds a lock): inter-op threads only cost memory.
                torch.set_num_interop_threads(1)
            except RuntimeError:
                pass  # already fixed by earlier parallel work in this process
            _threads_set = torch.get_num_threads()
        elif threads and threads != _threads_set:
            log.warning("torch threads already set to %d; ignoring %d", _threads_set, threads)
        return _threads_set


def load_module(path: str | Path, meta: ArtifactMeta, parts: dict[str, bytes]) -> torch.jit.ScriptModule:
    """The frozen module of a verified torch artifact (uint8 NHWC BGR in; logits, features, feature maps out)."""
    payload = parts.pop("torchscript", None)
    if payload is None:
        raise ArtifactError(f"{path}: no TorchScript part (runtime {meta.runtime!r}); {REBUILD_HINT}")
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
    return module


class TorchBackend:
    """Runs the frozen module; one call = one inference for the whole batch."""

    name = "torch"

    def __init__(self, path: str | Path, meta: ArtifactMeta, parts: dict[str, bytes], threads: int | None) -> None:
        self.threads = configure_threads(threads)
        self._module = load_module(path, meta, parts)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, size, size, 3) uint8 -> logits (N, 1000), features (N, 512), feature maps (N, 512, 7, 7)."""
        with torch.inference_mode():
            logits, features, maps = self._module(torch.from_numpy(batch))
        return logits.numpy(), features.numpy(), maps.numpy()
