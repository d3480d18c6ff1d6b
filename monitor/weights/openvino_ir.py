"""Build the OpenVINO artifact's IR from the torch INT8 network (build time only: needs torch and OpenVINO).

The converted torch INT8 network is a QDQ graph: OpenVINO's PyTorch frontend turns each quantized op into
FakeQuantize nodes carrying torch's scales (per-channel for weights, per-tensor for activations), and the CPU
plugin runs the convolutions and the last layer on INT8 kernels. One calibration (the torch one, on real frames
for `weights build`) thus serves both runtimes, and their top-1 agree by construction rather than by chance.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from monitor.weights import model

INPUT_NAME = "frames"
OUTPUTS = ("logits", "features", "feature_maps")


def ir_parts(net: torch.nn.Module, size: int = 224) -> dict[str, bytes]:
    """The IR (xml + bin) of `Runtime(net)`: uint8 NHWC BGR frames (any batch) in, the three outputs out."""
    import openvino as ov

    runtime = model.Runtime(net).eval()
    example = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    with torch.no_grad():
        converted = ov.convert_model(runtime, example_input=example,
                                     input=[(ov.PartialShape([-1, size, size, 3]), ov.Type.u8)])
    if len(converted.outputs) != len(OUTPUTS):
        raise RuntimeError(f"converted model has {len(converted.outputs)} outputs, want {len(OUTPUTS)}")
    for output, name in zip(converted.outputs, OUTPUTS):
        output.get_tensor().set_names({name})
    converted.inputs[0].get_tensor().set_names({INPUT_NAME})
    with tempfile.TemporaryDirectory(prefix="monitor-ir-") as folder:
        xml = Path(folder) / "model.xml"
        ov.save_model(converted, xml, compress_to_fp16=False)
        return {"ir_xml": xml.read_bytes(), "ir_bin": xml.with_suffix(".bin").read_bytes()}


def versions() -> dict[str, str]:
    import openvino as ov
    return {"openvino": ov.get_version().split("-")[0], "torch": torch.__version__}
