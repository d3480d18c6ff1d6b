"""INT8 logits stay close to FP32 on real frames (Intel IoT DevKit sample videos, CC BY 4.0)."""
from __future__ import annotations

import copy

import torch

from testkit.footage import read_video_frames
from monitor import weights
from monitor.weights import model
from monitor.inference.preprocess import prepare_batch


def _batches(frames, size=8):
    return [prepare_batch(frames[i:i + size]) for i in range(0, len(frames), size)]


def _compare(float_net, int8_net, frames) -> tuple[float, float, float]:
    x = model.Normalize()(torch.from_numpy(prepare_batch(frames)))
    with torch.no_grad():
        f, q = float_net(x), int8_net(x)
    cos = torch.nn.functional.cosine_similarity(f, q, dim=1)
    return cos.mean().item(), cos.min().item(), (f.argmax(1) == q.argmax(1)).float().mean().item()


def test_int8_close_to_fp32_on_real_frames() -> None:
    calib = read_video_frames("car-detection", 16, stride=20) + read_video_frames("bottle-detection", 16, stride=70)
    held_out = (read_video_frames("one-by-one-person-detection", 24, stride=55)
                + read_video_frames("car-detection", 8, stride=45, start=3))
    torch.manual_seed(0)
    # No trained weights here: a seeded network whose BatchNorm statistics come from real frames has
    # realistic activation ranges, which is what quantization error depends on.
    net = model.quantizable_resnet18()
    weights.reestimate_batchnorm(net, _batches(calib))
    weights.sharpen_logits(net, prepare_batch(calib[:16]))

    good = weights.calibrated_int8(copy.deepcopy(net), _batches(calib), model.default_engine())
    mean_cos, min_cos, top1 = _compare(net, good, held_out)
    print(f"\nINT8 vs FP32 on {len(held_out)} held-out real frames: cosine mean {mean_cos:.4f} "
          f"min {min_cos:.4f}, top-1 agreement {top1:.1%}")
    assert mean_cos > 0.98 and min_cos > 0.95
    assert top1 >= 0.85

    # The same check fails for a broken quantization (observers calibrated on the wrong range).
    broken = model.quantize(copy.deepcopy(net), lambda m: m(torch.randn(1, 3, 224, 224) * 0.01))
    b_mean, _, b_top1 = _compare(net, broken, held_out)
    print(f"miscalibrated INT8: cosine mean {b_mean:.4f}, top-1 agreement {b_top1:.1%}")
    assert b_mean < 0.98 or b_top1 < 0.85
