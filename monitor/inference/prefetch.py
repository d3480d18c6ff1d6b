"""Many images through the network with the next ones decoded meanwhile: a bounded prefetch loads (reads,
decodes, prepares) images on a small pool of threads or processes while the network runs on a batch of the
ones already loaded, and the results come out in the order of the inputs.

Why: on two cores, JPEG decoding and the network together bound the throughput of a folder or a batch upload.
Loaded one after the other, the cores wait on the decoder during the decode and on the network's serial parts
during the run; overlapped, each fills the other's gaps. A load prepares the network's input itself
(Classifier.prepare: a 224x224x3 array), so what waits in the prefetch is small whatever the picture's size and
a process pool sends back 150 KB per image, not the decoded picture.
"""
from __future__ import annotations

import collections
import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

import numpy as np

from monitor.inference.classifier import Classifier, Pending, Prediction, top_k_predictions

T = TypeVar("T")

BATCH = 8                 # images per network run (batch 4 to 8 is where the runtimes' per-frame cost levels off)
WORKERS = 2               # loads at once: one per core of the machine this was measured on
# OpenVINO inferences at once for a folder or a batch (THROUGHPUT streams sharing the runtime's threads,
# Classifier(streams=) / Classifier.pipelined()): the next batch starts while one runs, and on 2 cores 2 streams
# of 1 thread cost 10-13% less CPU per image than 1 stream of 2 threads with the decodes beside them.
STREAMS = 2
POOLS = ("thread", "process")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """One input's result: predictions, or the error its load raised (never both)."""
    item: T
    info: Any = None                              # what the load returned beside the network's input
    predictions: list[Prediction] | None = None
    error: Exception | None = None


Load = Callable[[Any], "tuple[np.ndarray, Any]"]    # item -> (prepared input (size, size, 3) uint8, info)


def classify_ahead(classifier: Classifier, items: Iterable[T], load: Load, *, top_k: int = 3, batch: int = BATCH,
                   workers: int = WORKERS, pool: str = "thread") -> Iterator[Outcome[T]]:
    """Outcome of every item, in order. `load(item)` returns (prepared input, info) or raises an Exception, which
    becomes that item's error; other items go on. workers=0 loads each image in this thread, just before the
    batch it belongs to (no overlap: the way `monitor classify` worked before). At most 2 x batch (or workers)
    loads are ahead of the network. Closing the iterator cancels the loads not started and waits for the others.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    executor: Executor | None = None
    if workers > 0:
        executor = (ThreadPoolExecutor(workers, thread_name_prefix="prefetch") if pool == "thread"
                    # forkserver: a fork of this process would copy the runtime's threads' locks mid-use
                    else ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")))
    pending: collections.deque[tuple[T, Future[Any] | None]] = collections.deque()
    source = iter(items)
    depth = max(2 * batch, workers)

    def fill() -> None:
        while len(pending) < (depth if executor is not None else 1):
            try:
                item = next(source)
            except StopIteration:
                return
            pending.append((item, executor.submit(load, item) if executor is not None else None))

    def result(item: T, future: Future[Any] | None) -> tuple[np.ndarray | None, Outcome[T]]:
        try:
            prepared, info = future.result() if future is not None else load(item)
        except Exception as e:                     # the item's own failure: reported, the others go on
            return None, Outcome(item, error=e)
        return prepared, Outcome(item, info)

    # Batches given to the network and not yet answered, oldest first: with a classifier of several streams
    # (OpenVINO THROUGHPUT) the next batch is loaded and started while the others run, and Python never holds
    # the network up; with one stream each batch runs as it comes and is answered at once.
    started: collections.deque[tuple[list[tuple[np.ndarray | None, Outcome[T]]], Pending | None]] = \
        collections.deque()

    def answer() -> Iterator[Outcome[T]]:
        group, job = started.popleft()
        predictions = iter(top_k_predictions(classifier.finish(job).probabilities, classifier.labels, top_k)
                           if job is not None else [])
        for prepared, outcome in group:
            yield outcome if prepared is None else Outcome(outcome.item, outcome.info, next(predictions))

    try:
        fill()
        while pending:
            group: list[tuple[np.ndarray | None, Outcome[T]]] = []
            loaded = 0
            while pending and loaded < batch:
                item, future = pending.popleft()
                fill()                             # keep the prefetch full while this one is waited for
                prepared, outcome = result(item, future)
                group.append((prepared, outcome))
                loaded += prepared is not None
            inputs = [p for p, _ in group if p is not None]
            started.append((group, classifier.start(np.stack(inputs)) if inputs else None))
            if len(started) >= classifier.streams:      # all streams busy: answer the oldest (one: this one)
                yield from answer()
        while started:
            yield from answer()
    finally:
        for _, future in pending:
            if future is not None:
                future.cancel()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        for _, job in started:                     # closed early: the runtime's requests come back
            if job is not None:
                classifier.finish(job)
