"""The OpenVINO runtime: the INT8 IR of an OpenVINO artifact, read from memory. Never imports torch.

The IR comes out of `monitor weights fetch|build|demo` (monitor/weights/openvino_ir.py): the torch INT8
network converted to a QDQ graph (FakeQuantize with torch's per-channel weight and per-tensor activation
scales), normalisation inside the graph, three outputs (logits, pooled features, layer4 feature maps).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from monitor.inference.artifact import REBUILD_HINT, ArtifactError, ArtifactMeta

log = logging.getLogger(__name__)

CACHE_FOLDER = "openvino-cache"


def default_cache_dir(artifact_path: Path) -> Path | None:
    """OpenVINO's compiled-model cache next to the artifact, if that folder is writable (else no cache)."""
    folder = artifact_path.resolve().parent / CACHE_FOLDER
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def compile_config(threads: int | None, cache_dir: Path | None, precision: str = "f32",
                   streams: int = 1) -> dict[str, str]:
    # f32: the few float ops around the INT8 convolutions (normalisation, outputs) stay exact; OpenVINO would
    # run them in bf16 on this CPU by default. LATENCY: one stream, all threads on one inference at a time.
    # streams > 1 (THROUGHPUT, for a folder): that many inferences at once, the threads shared among them; on 2
    # cores, 2 streams of 1 thread cost 10-13% less CPU per image than 1 stream of 2 threads at batch 8 (no
    # barrier between the two threads to wait at, which the decodes beside them make them do).
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if streams > 1:
        config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=str(int(streams)))
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(int(threads))
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


class OpenVinoBackend:
    """Compiles the IR for the CPU once (from the cache when it is there); one request, used under a lock."""

    name = "openvino"

    def __init__(self, path: str | Path, meta: ArtifactMeta, parts: dict[str, bytes], threads: int | None,
                 cache_dir: str | Path | None = None, precision: str = "f32", streams: int = 1) -> None:
        import openvino as ov

        path = Path(path)
        xml, weights = parts.pop("ir_xml", None), parts.pop("ir_bin", None)
        if xml is None or weights is None:
            raise ArtifactError(f"{path}: no OpenVINO IR in the artifact (runtime {meta.runtime!r}); {REBUILD_HINT}")
        core = ov.Core()
        # Read a cached blob into memory instead of mapping it: a mapping keeps the file open for as long as the
        # model lives (one descriptor per load, which the daemon's leak checks count), for no gain at 12 MB.
        core.set_property({"ENABLE_MMAP": False})
        try:
            model = core.read_model(xml.decode("utf-8"), ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
        except (RuntimeError, UnicodeDecodeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ArtifactError(f"{path}: OpenVINO IR does not load: {first}") from None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(path)
        self.config = compile_config(threads, self.cache_dir, precision, streams)
        self._compiled = core.compile_model(model, "CPU", self.config)
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        self.streams = max(1, int(self._compiled.get_property("NUM_STREAMS")))
        self._request = self._compiled.create_infer_request()
        # one more request per stream beyond the first, for start()/finish(): inferences that run at once
        self._free = [self._compiled.create_infer_request() for _ in range(self.streams)] if self.streams > 1 else []
        names = [o.get_any_name() for o in self._compiled.outputs]
        try:
            self._outputs = [names.index(n) for n in meta.outputs]
        except ValueError:
            raise ArtifactError(f"{path}: IR outputs {names} lack one of {list(meta.outputs)}; {REBUILD_HINT}") from None

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, size, size, 3) uint8 -> logits (N, 1000), features (N, 512), feature maps (N, 512, 7, 7)."""
        self._request.infer({0: batch})
        return self._copy(self._request)

    def start(self, batch: np.ndarray) -> Any:
        """Start an inference on one of the streams (the batch is copied into the request) and return at once;
        finish() its handle for the outputs. At most self.streams started and not finished."""
        request = self._free.pop()
        request.start_async({0: batch})
        return request

    def finish(self, request: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The outputs of a started inference, as run() gives them (waits for it)."""
        try:
            request.wait()
            return self._copy(request)
        finally:
            self._free.append(request)

    def _copy(self, request: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, features, maps = (request.get_output_tensor(i).data.copy() for i in self._outputs)
        return logits, features, maps
