"""`monitor` command line: run the daemon, check its config, manage weights, classify files, benchmark."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from monitor import __version__
from monitor.inference.locate import DEFAULT_CONFIG, resolve_weights

EXIT_CONFIG = 2  # bad configuration: systemd's RestartPreventExitStatus names it


def _add_weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", metavar="FILE", help="runtime artifact (default: the config's model.weights)")
    p.add_argument("-c", "--config", metavar="FILE", help=f"config file for defaults (default: {DEFAULT_CONFIG} if present)")


ARCHS = ("resnet18", "resnet50", "mobilenet_v3_large")   # monitor/inference/archs.py (not imported: no numpy here)


def _add_arch_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--arch", choices=ARCHS, default=default,
                   help=f"backbone (default: {default or 'the one the checkpoint holds'})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monitor", description="Real-time camera monitoring daemon")
    parser.add_argument("--version", action="version", version=f"monitor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument("--weights", metavar="FILE", help="override model.weights")

    p = sub.add_parser("check-config", help="validate a config file; exit 0 or 2")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE")
    c = sub.add_parser("config", help="config file tools").add_subparsers(
        dest="config_command", required=True, metavar="ACTION")
    c.add_parser("schema", help="print the JSON Schema of the config file (editors complete and check with it)")

    w = sub.add_parser("weights", help="fetch, build, verify model weights").add_subparsers(
        dest="weights_command", required=True, metavar="ACTION")
    p = w.add_parser("fetch", help="download the official checkpoint (and build the INT8 artifact)")
    p.add_argument("--variant", choices=["int8", "fp32"], default="int8")
    _add_arch_arg(p, "resnet18")
    p.add_argument("--base-url", metavar="URL", help="mirror holding the official file names "
                                                     "(also $MONITOR_WEIGHTS_BASE_URL)")
    p.add_argument("--dir", default="weights", metavar="DIR", help="where checkpoints go (default: weights)")
    p.add_argument("--out", metavar="FILE", help="artifact path (default: DIR/ARCH-int8.pt)")
    p.add_argument("--if-missing", action="store_true", help="do nothing if the artifact exists and verifies")
    p = w.add_parser("build", help="build the runtime artifact from a checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="FILE")
    p.add_argument("--calibrate", nargs="+", default=[], metavar="PATH",
                   help="images, folders, video files or camera URLs (FP32 checkpoints only)")
    p.add_argument("--frames", type=int, default=200, metavar="N", help="calibration frames (default 200)")
    p.add_argument("--fp32", action="store_true", help="keep the model in float (for comparisons)")
    _add_arch_arg(p, None)
    p.add_argument("--out", required=True, metavar="FILE")
    p = w.add_parser("demo", help="write a deterministic untrained network (tests, demos)")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--seed", type=int, default=0)
    _add_arch_arg(p, "resnet18")
    p.add_argument("--fit", nargs="+", default=[], metavar="PATH",
                   help="fit the last layer to groups of these videos/images: predictions with real margins "
                        "(agreement figures), still meaningless labels")
    p = w.add_parser("verify", help="re-hash, load, run one inference; OpenVINO/torch/FP32 top-1 agreement")
    p.add_argument("file", nargs="?", metavar="FILE")
    p.add_argument("--frames-from", nargs="+", default=[], metavar="PATH",
                   help="real frames for the agreement (default: the sample clip shipped in the package)")
    p.add_argument("--frames", type=int, default=150, metavar="N", help="frames for the agreement (default 150)")
    p.add_argument("--reference", metavar="FILE", help="FP32 checkpoint the INT8 artifact was made from")
    p.add_argument("--json", action="store_true")
    p.add_argument("-c", "--config", metavar="FILE")

    p = sub.add_parser("classify", help="classify image files and folders")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--lang", choices=["en", "zh"], default="en",
                   help="language of the class names shown (zh: Chinese; --json adds them as display)")
    p.add_argument("--json", action="store_true")
    _add_weights_arg(p)

    c = sub.add_parser("classes", help="custom classes: train a head from examples, show one").add_subparsers(
        dest="classes_command", required=True, metavar="ACTION")
    p = c.add_parser("train", help="train a head on the backbone's features: one sub-folder per class (+ none)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("examples", metavar="EXAMPLES_DIR", help="EXAMPLES_DIR/<class>/ with images or video files")
    p.add_argument("--out", metavar="FILE", help="head file (default: heads/NAME.head)")
    p.add_argument("--crop", choices=["center", "full"], default="center",
                   help="how an example is cropped: as a camera's default crop (center) or whole (full)")
    p.add_argument("--frames-per-video", type=int, default=40, metavar="N")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="cross-validation folds (default 5)")
    p.add_argument("--json", action="store_true")
    _add_weights_arg(p)
    p = c.add_parser("show", help="print a head's classes, backbone and training summary")
    p.add_argument("head", metavar="HEAD")
    p.add_argument("--weights", metavar="FILE", help="also check that the head fits this backbone")

    f = sub.add_parser("fleet", help="the fleet (several daemons, one PostgreSQL)").add_subparsers(
        dest="fleet_command", required=True)
    p = f.add_parser("status", help="nodes (last heartbeat, cameras held, outbox lag) and cameras with their holder")
    p.add_argument("-c", "--config", default="config.yaml", help="a config with the fleet section")
    p.add_argument("--json", action="store_true")
    b = sub.add_parser("bench", help="print benchmark figures").add_subparsers(
        dest="bench_command", required=True, metavar="WHAT")
    p = b.add_parser("classify", help="per frame: PIL + FP32 baseline, torch INT8, OpenVINO INT8; RSS; start time")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--no-start", action="store_true", help="skip the start-to-first-classification runs")
    p.add_argument("--video", nargs="+", metavar="FILE", help="footage (default: the sample clip shipped in the package)")
    p.add_argument("--json", action="store_true")
    _add_weights_arg(p)
    p = b.add_parser("backbones", help="per backbone: artifact size, ms/frame at batch 1 and 4 per runtime, RSS, "
                                       "start time, INT8 vs FP32 top-1 agreement (fitted demo networks)")
    p.add_argument("--arch", nargs="+", choices=ARCHS, default=list(ARCHS), metavar="ARCH")
    p.add_argument("--video", nargs="+", metavar="FILE", help="footage (default: the packaged sample clip)")
    p.add_argument("--frames", type=int, default=120, help="frames for timing and agreement (default 120)")
    p.add_argument("--dir", metavar="DIR", help="keep the built artifacts here (default: a temp folder)")
    p.add_argument("--json", action="store_true")
    p = b.add_parser("pipeline", help="capture threads + worker on files or RTSP URLs vs the naive loop")
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--native-rate", action="store_true", help="pace files at their frame rate (live cameras)")
    p.add_argument("--no-baseline", action="store_true", help="skip the naive single-thread loop")
    p.add_argument("--json", action="store_true")
    _add_weights_arg(p)
    p = b.add_parser("smoothing", help="events one rule produces on footage, without and with smoothing")
    p.add_argument("--video", nargs="+", metavar="FILE", help="footage (default: the sample clip shipped in the package)")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="rule classes (ImageNet, groups, head:class; default: the most frequent top-1 class)")
    p.add_argument("--head", metavar="FILE", help="custom head for head:class entries")
    p.add_argument("--min-score", type=float, help="default: a row per percentile of the class's score")
    p.add_argument("--min-frames", type=int, default=3)
    p.add_argument("--end-after", type=float, default=10.0)
    p.add_argument("--cooldown", type=float, default=0.0)
    p.add_argument("--fps", type=float, default=5.0, help="sampled frames per second of video (default 5)")
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--method", choices=["median", "mean"], default="median")
    p.add_argument("--json", action="store_true")
    _add_weights_arg(p)
    p = b.add_parser("stream", help="MJPEG fan-out: process CPU with 1 viewer vs 20 viewers")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--viewers", type=int, default=20)
    p.add_argument("--json", action="store_true")
    _add_weights_arg(p)
    p = b.add_parser("overlay", help="overlay per frame: English (cv2) vs Chinese labels (FreeType)")
    p.add_argument("--video", metavar="FILE", help="footage (default: the sample clip shipped in the package)")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--width", type=int, default=0, help="resize frames to this width (0: as read)")
    p.add_argument("--rounds", type=int, default=6, help="alternating English/Chinese rounds (default 6)")
    p.add_argument("--json", action="store_true")
    p = b.add_parser("batch", help="images/s on a folder of JPEG frames: naive PIL + FP32, monitor classify DIR "
                                   "without and with prefetch, POST /api/classify/batch")
    p.add_argument("--frames", type=int, default=240, metavar="N", help="frames written as JPEG files (default 240)")
    p.add_argument("--naive-frames", type=int, default=60, metavar="N",
                   help="files the naive baseline classifies per round (default 60: it is slow)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--video", nargs="+", metavar="FILE", help="footage (default: the sample clip shipped in the package)")
    p.add_argument("--json", action="store_true")
    _add_weights_arg(p)
    p = b.add_parser("capacity", help="live RTSP cameras added step by step: the most one box keeps up with")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="H.264 video files, served over RTSP")
    p.add_argument("--fps", type=float, default=5.0, help="frames sampled per camera per second (default 5)")
    p.add_argument("--cameras", default="0,1,4,8,12,16", metavar="N,N,...",
                   help="camera counts to try; 0 = the daemon without cameras, the RSS baseline")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window per step (default 20)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds after the first results (default 5)")
    p.add_argument("--transcode", metavar="WxH@FPS", help="serve a transcode made at run time in a temp folder, e.g. "
                                                          "1920x1080@25 (no B-frames, see --gop and --codec)")
    p.add_argument("--gop", type=float, default=2.0, metavar="S",
                   help="with --transcode: a keyframe every S seconds (default 2)")
    p.add_argument("--codec", default="h264", metavar="h264,hevc",
                   help="with --transcode: the codecs to serve, each measured at every step (default h264)")
    p.add_argument("--phases", type=int, default=1, metavar="K",
                   help="with --transcode: K transcodes per video whose keyframes are spread over the GOP, taken by "
                        "the cameras in turn (independent cameras do not send their keyframes at the same moment; "
                        "default 1: all at once, the worst case)")
    p.add_argument("--sessions-per-server", type=int, default=0, metavar="N",
                   help="serve the cameras from several RTSP server processes, N cameras each (default: one server; "
                        "one GStreamer test server does not keep up with 64 sessions of 1080p)")
    p.add_argument("--no-web", action="store_true",
                   help="start the daemon without its HTTP server (by default it runs as deployed: web server on, "
                        "/metrics scraped every 5 s)")
    p.add_argument("--breakdown", type=int, default=0, metavar="N",
                   help="also measure N bare OpenCV captures (grab only; grab + retrieve): the memory floor")
    p.add_argument("--decode-threads", default="default", metavar="N,N,...",
                   help="camera decode_threads to compare: default (the daemon's: 1; PyAV keyframes-only decoding 1 "
                        "whatever is set), or 0..16 (0 = FFmpeg's choice)")
    p.add_argument("--capture", default="pyav", metavar="pyav,opencv:WxH",
                   help="camera capture to compare (default pyav, the daemon's for URLs): opencv, pyav (full size) or "
                        "pyav:960x540 (backend pyav with that frame_size); pyav+all / pyav+keyframes: sample all / "
                        "keyframes (pyav's default is auto: keyframes only when 1/fps >= the GOP); pyav+clips: event "
                        "clips recorded (every camera always in an event); pyav+ring: clips on, no event (pre-roll only); pyav+feedall: keyframe sampling feeds every packet to the decoder; "
                        "pyav+pytimeout: reads bounded by PyAV's own timeout (its Python interrupt callback, the GIL "
                        "on every socket read) instead of FFmpeg's")
    p.add_argument("--malloc", default="tuned", metavar="tuned,arenas",
                   help="malloc settings to compare: tuned (the daemon's) or arenas (arena cap only, the old one)")
    p.add_argument("--capture-priority", default="default", metavar="low,idle,normal",
                   help="camera capture_priority values to compare (default: the daemon's)")
    p.add_argument("--model-threads", default="default", metavar="N,N,...",
                   help="inference threads to compare (model.threads; default: the config's)")
    p.add_argument("--rtsp-serve", required=True, metavar="PATH",
                   help="the GStreamer RTSP server script that serves the footage (test tooling, not part of the "
                        "package: pass the rtsp_serve.py of the project's test tooling)")
    p.add_argument("--json", action="store_true")
    _add_weights_arg(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("monitor: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from monitor.inference.artifact import ArtifactError
    from monitor.capture.frames import FrameSourceError
    from monitor.inference.locate import WeightsError

    try:
        if args.command == "run":
            from monitor.daemon import run_main
            return run_main(args.config, args.weights)
        if args.command == "check-config":
            from monitor.config.loader import check_config_main
            return check_config_main(args.config)
        if args.command == "config":
            from monitor.config.loader import schema_text
            sys.stdout.write(schema_text())
            return 0
        if args.command == "weights":
            return _weights(args)
        if args.command == "classify":
            from monitor.commands.classify import classify_main
            return classify_main(args.paths, resolve_weights(args.weights, args.config), args.top_k, args.json,
                                 language=args.lang)
        if args.command == "classes":
            from monitor.commands import classes
            if args.classes_command == "train":
                return classes.train_main(args.name, args.examples, resolve_weights(args.weights, args.config),
                                          args.out, args.crop, args.frames_per_video, args.folds, args.json)
            return classes.show_main(args.head, Path(args.weights) if args.weights else None)
        if args.command == "fleet":
            from monitor.commands.fleet import status_main
            return status_main(args.config, args.json)
        if args.command == "bench":
            from monitor.bench import bench_main
            return bench_main(args)
    except (WeightsError, ArtifactError, FrameSourceError) as e:
        print(f"monitor: {e}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command}")


def _weights(args: argparse.Namespace) -> int:
    from monitor import weights

    action = args.weights_command
    if action == "fetch":
        target = Path(args.out) if args.out else weights.default_artifact(args.dir, args.arch)
        if args.if_missing and args.variant == "int8" and target.exists() and weights.openvino_path(target).exists():
            from monitor.inference.artifact import read
            meta, _, _ = read(target)  # re-hashes: a damaged file is reported, not silently kept
            read(weights.openvino_path(target))
            print(f"{target} and {weights.openvino_path(target).name} are present "
                  f"({meta.name}{', UNTRAINED demo' if meta.untrained else ''}): not fetching")
            return 0
        checkpoint, built = weights.fetch(args.variant, args.dir, out=args.out, base_url=args.base_url,
                                          arch=args.arch)
        prefix = weights.OFFICIAL_BY_ARCH[args.arch][args.variant].sha256_prefix
        print(f"verified {checkpoint} (sha256 prefix {prefix})")
        if built:
            print(f"built {built} and {weights.openvino_path(built)}")
        else:
            print(f"next: monitor weights build --checkpoint {checkpoint} --calibrate VIDEO_OR_IMAGES "
                  f"--out {weights.default_artifact('weights', args.arch)}")
        return 0
    if action == "build":
        meta = weights.build(args.checkpoint, args.out, calibrate=args.calibrate, frames=args.frames, fp32=args.fp32,
                             arch=args.arch)
        also = "" if args.fp32 else f" and {weights.openvino_path(args.out)} (OpenVINO)"
        print(f"built {args.out}{also}: {meta.name} ({meta.precision}, engine {meta.engine or '-'}), "
              f"calibration {json.dumps(meta.calibration)}")
        return 0
    if action == "demo":
        meta = weights.demo(args.out, seed=args.seed, fit=args.fit, arch=args.arch)
        fitted = (f", last layer fitted to {meta.source['demo']['clusters']} groups of the given frames "
                  f"(FP32 reference {weights.fp32_checkpoint_path(args.out)})" if args.fit else "")
        print(f"built {args.out} and {weights.openvino_path(args.out)}: {meta.name} — UNTRAINED random-init network "
              f"(seed {args.seed}){fitted}, its predictions are meaningless; for tests and demos only")
        return 0
    if action == "verify":
        summary = weights.verify(resolve_weights(args.file, args.config), args.frames_from, args.frames,
                                 args.reference)
        if args.json:
            print(json.dumps(summary, indent=2))
        for key, value in summary.items() if not args.json else ():
            print(f"{key:>18}: {value}")
        if summary["untrained"]:
            print("warning: untrained demo model: predictions are meaningless", file=sys.stderr)
        return 0
    raise AssertionError(action)


if __name__ == "__main__":
    raise SystemExit(main())
