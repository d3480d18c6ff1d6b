"""ResNet-50 and MobileNetV3-Large: torchvision's key names and parameter counts, fusion, INT8 artifacts for both
runtimes through the real download code (checkpoints made here, served on 127.0.0.1), the checks on every load,
heads bound to their backbone, and Grad-CAM in numpy against torch autograd."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from monitor import weights
from monitor.inference import artifact
from monitor.inference.archs import ARCHS
from monitor.inference.classifier import Classifier
from monitor.inference.explain import Explainer
from monitor.inference.heads.head import Head, HeadError, load_head, save_head
from monitor.inference.preprocess import prepare_batch
from monitor.weights import backbones, mobilenet, model, resnet

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch.ao.nn.intrinsic as nni
    import torch.ao.quantization as tq

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# torchvision's _mobilenet_v3_conf("mobilenet_v3_large"): input, kernel, expanded, out, SE, activation, stride
TORCHVISION_LARGE = [(16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
                     (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
                     (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
                     (80, 3, 184, 80, False, "HS", 1),
                     (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1),
                     (112, 3, 672, 112, True, "HS", 1), (112, 5, 672, 160, True, "HS", 2),
                     (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1)]


def torchvision_resnet50_keys() -> list[str]:
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in BN_KEYS]
    for layer, blocks in enumerate((3, 4, 6, 3), start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            for i in (1, 2, 3):
                keys += [f"{p}.conv{i}.weight"] + [f"{p}.bn{i}.{k}" for k in BN_KEYS]
            if block == 0:
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{k}" for k in BN_KEYS]
    return keys + ["fc.weight", "fc.bias"]


def torchvision_mobilenet_v3_large_keys() -> list[str]:
    def conv_bn(p: str) -> list[str]:
        return [f"{p}.0.weight"] + [f"{p}.1.{k}" for k in BN_KEYS]

    keys = conv_bn("features.0")
    for i, (inp, _, expanded, _, se, _, _) in enumerate(TORCHVISION_LARGE, start=1):
        j = 0
        if expanded != inp:
            keys += conv_bn(f"features.{i}.block.{j}")
            j += 1
        keys += conv_bn(f"features.{i}.block.{j}")
        j += 1
        if se:
            keys += [f"features.{i}.block.{j}.{n}.{k}" for n in ("fc1", "fc2") for k in ("weight", "bias")]
            j += 1
        keys += conv_bn(f"features.{i}.block.{j}")
    keys += conv_bn("features.16")
    return keys + ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"]


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_float_layouts_equal_torchvision() -> None:
    # key names from torchvision's naming scheme; parameter counts from its Weights documentation
    for make in (resnet.resnet50, resnet.quantizable_resnet50):
        net = make()
        assert list(net.state_dict()) == torchvision_resnet50_keys()
        assert _params(net) == 25_557_032 and net.fc.in_features == ARCHS["resnet50"].features
    for make in (mobilenet.mobilenet_v3_large, mobilenet.quantizable_mobilenet_v3_large):
        net = make()
        assert list(net.state_dict()) == torchvision_mobilenet_v3_large_keys()
        assert _params(net) == 5_483_032
        assert net.classifier[0].in_features == ARCHS["mobilenet_v3_large"].features == 960
        assert net.classifier[0].out_features == ARCHS["mobilenet_v3_large"].hidden == 1280
    for name, bb in backbones.BACKBONES.items():
        assert backbones.detect(bb.float_net().state_dict()) == name


def test_mobilenet_fusion_follows_torchvision() -> None:
    net = mobilenet.quantizable_mobilenet_v3_large().eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        before = net(x)
        net.fuse_model()
        after = net(x)
    relu_convs = sum((1 if inp == exp else 2) for inp, _, exp, _, _, act, _ in TORCHVISION_LARGE if act == "RE")
    se = sum(c[4] for c in TORCHVISION_LARGE)
    modules = list(net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in modules)
    # Conv-BN-ReLU fused (blocks and the SE's fc1 + ReLU); Hardswish stays its own (quantized) op
    assert sum(type(m) is nni.ConvReLU2d for m in modules) == relu_convs + se == 19
    assert sum(type(m) is torch.nn.Hardswish for m in modules) == 1 + 2 * 9 + 1 + 1
    assert sum(type(m) is mobilenet.QuantizableSqueezeExcitation for m in modules) == se == 8
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-4)


def torchvision_quantized_resnet50_keys() -> set[str]:
    conv = ("weight", "bias", "scale", "zero_point")
    keys = {f"conv1.{k}" for k in conv} | {"quant.scale", "quant.zero_point"}
    for layer, blocks in enumerate((3, 4, 6, 3), start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            keys |= {f"{p}.conv{i}.{k}" for i in (1, 2, 3) for k in conv}
            keys |= {f"{p}.skip_add_relu.scale", f"{p}.skip_add_relu.zero_point"}
            if block == 0:
                keys |= {f"{p}.downsample.0.{k}" for k in conv}
    return keys | {"fc.scale", "fc.zero_point", "fc._packed_params.dtype", "fc._packed_params._packed_params"}


@pytest.fixture(scope="module")
def resnet50_int8() -> torch.nn.Module:
    """ResNet-50 quantized as torchvision's fbgemm checkpoint was (random init, observers fed small images)."""
    torch.manual_seed(0)
    return model.quantize(resnet.quantizable_resnet50(), lambda m: m(torch.randn(2, 3, 64, 64)),
                          qconfig_engine="fbgemm")


def test_resnet50_quantized_layout_equals_torchvision_and_reloads(resnet50_int8) -> None:
    q = resnet50_int8
    model.assert_quantized(q)                      # 53 INT8 convolutions, none left float
    sd = q.state_dict()
    assert set(sd) == torchvision_quantized_resnet50_keys()
    assert backbones.detect(sd) == "resnet50" and model.is_int8_state_dict(sd)
    again = model.int8_from_state_dict(sd, make=resnet.quantizable_resnet50)  # the official INT8 file's path
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(q(x), again(x))


# -- checkpoints served from 127.0.0.1 through the real download code --------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        body = self.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"files": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def _serve(server: tuple[str, type[_Handler]], arch: str, data: bytes) -> dict[str, weights.WeightsDescriptor]:
    """The official INT8 descriptor of `arch`, pointed at our server and at this file's hash."""
    base, handler = server
    digest = hashlib.sha256(data).hexdigest()
    official = weights.OFFICIAL_BY_ARCH[arch]["int8"]
    desc = dataclasses.replace(official, url=f"{base}/test-{arch}_{digest[:8]}.pth", sha256_prefix=digest[:8])
    handler.files[desc.filename] = data
    return {"int8": desc}


def _qat_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict in the layout of torchvision's QAT MobileNetV3 checkpoint (fuse for QAT, prepare_qat with the
    qnnpack QAT qconfig, the classifier included), random init with batch norm statistics estimated on synthetic
    images (as a trained network has real ones), observers fed one batch."""
    torch.manual_seed(4)
    net = mobilenet.quantizable_mobilenet_v3_large()
    weights.reestimate_batchnorm(net, weights.synthetic_batches(8, seed=8))
    net.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.fuse_model(is_qat=True)
        net.qconfig = tq.get_default_qat_qconfig("qnnpack")
        tq.prepare_qat(net, inplace=True)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.0    # keep the estimated statistics: this pass only feeds the observers
        with torch.no_grad():
            net(model.Normalize()(torch.from_numpy(next(iter(weights.synthetic_batches(8, seed=9))))))
    sd = net.state_dict()
    torch.save(sd, path)
    return sd


@pytest.fixture(scope="module")
def mobilenet_fetched(server, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("mobilenet")
    sd = _qat_checkpoint(folder / "qat.pth")
    descriptors = _serve(server, "mobilenet_v3_large", (folder / "qat.pth").read_bytes())
    checkpoint, built = weights.fetch("int8", folder / "weights", progress=False, descriptors=descriptors,
                                      arch="mobilenet_v3_large")
    assert checkpoint.read_bytes() == (folder / "qat.pth").read_bytes()
    assert built == folder / "weights" / "mobilenet_v3_large-int8.pt"
    return built, sd


@pytest.fixture(scope="module")
def resnet50_fetched(server, resnet50_int8, tmp_path_factory) -> Path:
    """The official ResNet-50 INT8 route end to end: download, both artifacts (trace + OpenVINO conversion of a
    53-convolution network: ~12 s here, under the 40 s that would make it a `slow` test)."""
    folder = tmp_path_factory.mktemp("resnet50")
    torch.save(resnet50_int8.state_dict(), folder / "r50.pth")
    descriptors = _serve(server, "resnet50", (folder / "r50.pth").read_bytes())
    _, built = weights.fetch("int8", folder / "weights", progress=False, descriptors=descriptors, arch="resnet50")
    return built


@pytest.fixture(scope="module")
def real_frames_few(videos_dir: Path) -> list[np.ndarray]:
    import cv2
    frames = []
    for name in ("car-detection", "bottle-detection"):
        cap = cv2.VideoCapture(str(videos_dir / f"{name}.mp4"))
        for _ in range(2):
            ok, frame = cap.read()
            assert ok
            frames.append(frame)
            for _ in range(30):
                cap.grab()
        cap.release()
    return frames


def test_mobilenet_int8_artifacts_for_both_runtimes(mobilenet_fetched, real_frames_few) -> None:
    built, sd = mobilenet_fetched
    pt, ov = Classifier(built, runtime="torch"), Classifier(built, runtime="openvino")
    for clf in (pt, ov):
        assert clf.meta.arch == "mobilenet_v3_large" and clf.meta.name == "mobilenet_v3_large-int8"
        assert clf.meta.precision == "int8" and clf.feature_dim == 960 and clf.explainer.method == "grad-cam"
        assert clf.fc_weight.shape == (1000, 1280) and clf.explainer.hidden_weight.shape == (1280, 960)
        # the artifact carries the checkpoint's float classifier, the very weights the INT8 network runs
        np.testing.assert_array_equal(clf.explainer.hidden_weight, sd["classifier.0.weight"].numpy())
        np.testing.assert_array_equal(clf.fc_weight, sd["classifier.3.weight"].numpy())
    assert ov.backbone_id == pt.backbone_id == pt.sha256   # heads trained on either fit both
    a, b = pt.infer(real_frames_few), ov.infer(real_frames_few)
    assert a.features.shape == (4, 960) and a.feature_maps.shape == (4, 960, 7, 7) and a.logits.shape == (4, 1000)
    for x, y in ((a.logits, b.logits), (a.features, b.features)):
        assert x.std() > 0 and y.std() > 0
        assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.99
    # the float classifier in numpy reproduces the network's logits from its own pooled output
    np.testing.assert_allclose(pt.explainer.logits(a.features), a.logits, rtol=1e-4, atol=1e-5)
    maps = ov.class_maps(b.feature_maps, b.logits.argmax(1))
    assert maps.shape == (4, 7, 7) and maps.min() >= 0.0


def test_every_load_checks_the_backbone(mobilenet_fetched, tmp_path) -> None:
    built, _ = mobilenet_fetched
    meta, parts, _ = artifact.read(built)
    cases = {
        "resnet50.pt": (dataclasses.replace(meta, arch="resnet50"), parts,
                        "last layer has 1280 inputs, but a ResNet-50 classifier has 2048"),
        "vgg.pt": (dataclasses.replace(meta, arch="vgg16"), parts,
                   "backbone 'vgg16', which this monitor does not know"),
        "nohidden.pt": (meta, {k: v for k, v in parts.items() if not k.startswith("hidden_")},
                        "hidden layer (1280 x 960) is missing"),
        "old.pt": (dataclasses.replace(meta, arch="resnet18"), parts, "but a ResNet-18 classifier has 512"),
    }
    for name, (m, p, message) in cases.items():
        artifact.save(tmp_path / name, p, m)
        with pytest.raises(artifact.ArtifactError) as err:
            Classifier(tmp_path / name, runtime="torch")
        assert message in str(err.value) and name in str(err.value)


def test_heads_are_bound_to_their_backbone(mobilenet_fetched, resnet50_fetched, real_frames_few, tmp_path) -> None:
    built, _ = mobilenet_fetched
    clf, other = Classifier(built), Classifier(resnet50_fetched)
    rng = np.random.default_rng(0)
    head = Head("door", ("open", "closed"), rng.normal(size=(2, 960)).astype(np.float32), np.zeros(2, np.float32),
                {"sha256": clf.backbone_id, "name": clf.meta.name})
    path = save_head(head, tmp_path / "door.head")
    loaded = load_head(path, Classifier(built, runtime="torch").backbone_id)
    assert loaded.probabilities(clf.infer(real_frames_few[:2]).features).shape == (2, 2)
    with pytest.raises(HeadError, match="trained on backbone .*mobilenet_v3_large-int8.*retrain"):
        load_head(path, other.backbone_id)


def test_explain_route_uses_grad_cam_for_mobilenet(mobilenet_fetched, resnet50_fetched, real_frames_few) -> None:
    from monitor.web.routes.classify import classify_explained

    clf = Classifier(mobilenet_fetched[0])
    predictions, explanation = classify_explained(clf, real_frames_few[0], 3)
    assert explanation["method"] == "grad-cam" and "map_mean_plus_bias" not in explanation
    assert explanation["index"] == predictions[0].index and np.array(explanation["grid"]).shape == (7, 7)
    _, exact = classify_explained(Classifier(resnet50_fetched), real_frames_few[0], 3)
    assert exact["method"] == "cam" and "map_mean_plus_bias" in exact


def test_grad_cam_in_numpy_equals_torch_autograd(real_frames_few) -> None:
    torch.manual_seed(7)
    net = mobilenet.mobilenet_v3_large().eval()
    x = model.Normalize()(torch.from_numpy(prepare_batch(real_frames_few)))
    with torch.no_grad():
        maps = net.features(x)
        pooled = maps.mean((2, 3))
        # spread the hidden pre-activations over all three pieces of hardswish' (0, x/3 + 1/2, 1)
        pre = net.classifier[0](pooled)
        net.classifier[0].weight.mul_(4.0 / float(pre.std()))
        pre = net.classifier[0](pooled).numpy()
    assert min((pre < -3).mean(), (abs(pre) <= 3).mean(), (pre > 3).mean()) > 0.05
    maps = maps.detach().requires_grad_(True)
    logits = net.classifier(net.avgpool(maps).flatten(1))
    classes = torch.tensor([int(logits[0].argmax()), 3, 500, int(logits[3].argsort()[-5])])
    logits[torch.arange(4), classes].sum().backward()
    alpha = maps.grad.mean((2, 3))                                   # Grad-CAM: spatial mean of the gradient
    reference = torch.relu((alpha[:, :, None, None] * maps).sum(1)).detach().numpy()

    mlp = {k: v.numpy() for k, v in mobilenet.classifier_mlp(net).items()}
    explainer = Explainer(ARCHS["mobilenet_v3_large"], mlp["fc_weight"], mlp["fc_bias"], mlp["hidden_weight"],
                          mlp["hidden_bias"])
    feature_maps = maps.detach().numpy()
    np.testing.assert_allclose(explainer.channel_weights(feature_maps.mean((2, 3)), classes.numpy(), 49),
                               alpha.numpy(), rtol=1e-4, atol=1e-7 * float(alpha.abs().max()) * 1e3)
    ours = explainer.maps(feature_maps, classes.numpy())
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5 * float(reference.max()))
    assert (reference > 0).mean() > 0.1          # not a flat map that any zero would match
    np.testing.assert_allclose(explainer.logits(feature_maps.mean((2, 3))), logits.detach().numpy(),
                               rtol=1e-4, atol=1e-4)


def test_cam_is_exact_for_resnet50_classifier() -> None:
    rng = np.random.default_rng(1)
    maps = rng.random((3, 2048, 7, 7), dtype=np.float32)
    w, b = rng.normal(size=(1000, 2048)).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    explainer = Explainer(ARCHS["resnet50"], w, b)
    classes = np.array([1, 10, 999])
    cams = explainer.maps(maps, classes)
    logits = explainer.logits(maps.mean((2, 3)))
    np.testing.assert_allclose(cams.mean((1, 2)) + b[classes], logits[np.arange(3), classes], rtol=1e-4)


def test_build_refuses_a_checkpoint_of_another_backbone(tmp_path, capsys) -> None:
    from monitor.cli import main

    ckpt = tmp_path / "resnet18.pth"
    torch.save(model.resnet18().state_dict(), ckpt)
    code = main(["weights", "build", "--arch", "resnet50", "--checkpoint", str(ckpt), "--calibrate", "x.mp4",
                 "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 1 and "holds a ResNet-18 state dict, not ResNet-50 (--arch resnet50)" in err
    assert not (tmp_path / "x.pt").exists()


def test_resnet50_int8_artifacts_for_both_runtimes(resnet50_fetched, real_frames_few) -> None:
    built = resnet50_fetched
    assert built.name == "resnet50-int8.pt"
    pt, ov = Classifier(built, runtime="torch"), Classifier(built, runtime="openvino")
    a, b = pt.infer(real_frames_few), ov.infer(real_frames_few)
    assert pt.meta.arch == ov.meta.arch == "resnet50" and pt.explainer.method == "cam"
    assert a.features.shape == (4, 2048) and b.feature_maps.shape == (4, 2048, 7, 7)
    assert np.corrcoef(a.logits.ravel(), b.logits.ravel())[0, 1] > 0.99
    cams = ov.class_maps(b.feature_maps, b.logits.argmax(1))
    np.testing.assert_allclose(cams.mean((1, 2)) + ov.fc_bias[b.logits.argmax(1)],
                               ov.explainer.logits(b.feature_maps.mean((2, 3))).max(1), rtol=1e-3, atol=1e-3)
