"""The throughput pieces behind `monitor classify DIR` and POST /api/classify/batch (issue 21), on real frames:
the upload decoder process makes exactly the network input the daemon made from its picture, and a classifier
of two OpenVINO streams (the next batch started while one runs) answers the same, in the same order, as one."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.commands.classify import classify_files
from monitor.inference.classifier import Classifier
from monitor.inference.preprocess import prepare_batch
from monitor.web.decoders import DecoderPool
from monitor.web.upload import DECODE_CPU_SECONDS, PixelBudget, checked_decode


def test_the_decoder_process_prepares_the_same_input(real_frames: list[np.ndarray]) -> None:
    big = cv2.resize(real_frames[3], (1920, 1080), interpolation=cv2.INTER_CUBIC)   # decoded at 1/2 by libjpeg
    uploads = ([cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in real_frames]
               + [cv2.imencode(".png", real_frames[0])[1].tobytes(), cv2.imencode(".jpg", big)[1].tobytes(),
                  cv2.imencode(".png", big)[1].tobytes()])
    pool, budget = DecoderPool(2, DECODE_CPU_SECONDS), PixelBudget(40_000_000)
    try:
        for data in uploads:
            picture, size = checked_decode(data, "f", budget, pool, time.monotonic() + 30)
            prepared, size2 = checked_decode(data, "f", budget, pool, time.monotonic() + 30, prepare=(224, 256))
            assert size == size2 and prepared.shape == (224, 224, 3)
            assert np.array_equal(prepared, prepare_batch([picture])[0])       # the same pixels, bit for bit
    finally:
        pool.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, real_frames: list[np.ndarray]) -> list[Path]:
    """The real frames as JPEG files, a broken file and a missing one among them."""
    root = tmp_path_factory.mktemp("folder")
    files = []
    for i, frame in enumerate(real_frames):
        files.append(root / f"frame{i:02d}.jpg")
        cv2.imwrite(str(files[-1]), frame)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    files.insert(5, root / "broken.jpg")
    files.insert(17, root / "missing.jpg")
    return files


def test_two_streams_answer_as_one(demo_weights: Path, folder: list[Path]) -> None:
    one = Classifier(demo_weights)
    two = one.pipelined(2)
    if one.runtime != "openvino":
        pytest.skip("streams are an OpenVINO setting")
    assert (one.streams, two.streams) == (1, 2) and one.pipelined(2) is two
    a = list(classify_files(one, folder, top_k=5))
    b = list(classify_files(two, folder, top_k=5))
    assert [o.item for o in b] == folder
    # an idle daemon gives the copy's memory back; a batch still holding it keeps it
    assert one.drop_idle_pipelined(3600) == 0 and one.pipelined(2) is two
    assert one.drop_idle_pipelined(0) == 1 and two.streams == 2
    assert one.pipelined(2) is not two and one.drop_idle_pipelined(0) == 1
    assert [o.error is None for o in b] == [o.error is None for o in a] == [f.name not in ("broken.jpg",
                                                                                            "missing.jpg")
                                                                           for f in folder]
    for x, y in zip(a, b):
        if x.predictions is not None:
            assert [p.index for p in x.predictions] == [p.index for p in y.predictions]
            assert [p.probability for p in x.predictions] == pytest.approx([p.probability for p in y.predictions],
                                                                           abs=1e-6)


def test_closing_early_gives_the_streams_back(demo_weights: Path, folder: list[Path]) -> None:
    two = Classifier(demo_weights, streams=2)
    if two.runtime != "openvino":
        pytest.skip("streams are an OpenVINO setting")
    outcomes = classify_files(two, folder * 2, top_k=1)
    for _ in range(3):
        next(outcomes)
    outcomes.close()                  # batches still running when the caller stops: waited for, requests returned
    assert len(two._backend._free) == two.streams                                  # type: ignore[attr-defined]
    assert sum(o.predictions is not None for o in classify_files(two, folder * 2)) == 2 * (len(folder) - 2)
