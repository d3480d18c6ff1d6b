"""Build-time tooling for the network (needs torch; the daemon never imports it): the backbones' definitions
(ResNet-18, ResNet-50, MobileNetV3-Large), official checkpoints and their download, artifact builds, the demo
network, and `weights verify`.

The names the commands and tests use are re-exported here, so `from monitor import weights` reads as one API.
"""
from monitor.inference.locate import WeightsError
from monitor.weights.backbones import BACKBONES
from monitor.weights.build import (PREPROCESS, build, calibrated_int8, default_artifact, fetch, openvino_path,
                                   save_both, save_openvino, save_torch)
from monitor.weights.checkpoints import (BASE_URL_ENV, OFFICIAL, OFFICIAL_BY_ARCH, WeightsDescriptor, download,
                                         float_model_from_state_dict, load_checkpoint, sha256_file)
from monitor.weights.demo import (DEMO_SOURCE, demo, demo_float, fp32_checkpoint_path, reestimate_batchnorm,
                                  sharpen_logits, synthetic_batches)
from monitor.weights.verify import agreement, float_reference, verify

__all__ = ["BACKBONES", "BASE_URL_ENV", "DEMO_SOURCE", "OFFICIAL", "OFFICIAL_BY_ARCH", "PREPROCESS",
           "WeightsDescriptor", "WeightsError", "agreement", "build", "calibrated_int8", "default_artifact", "demo",
           "demo_float", "download", "fetch", "float_model_from_state_dict", "float_reference",
           "fp32_checkpoint_path", "load_checkpoint", "openvino_path", "reestimate_batchnorm", "save_both",
           "save_openvino", "save_torch", "sha256_file", "sharpen_logits", "synthetic_batches", "verify"]
