"""`monitor bench ...`: benchmarks that print figures measured in one run against a baseline."""
from __future__ import annotations

import argparse


def bench_main(args: argparse.Namespace) -> int:
    if args.bench_command == "classify":
        from monitor.bench.classify import bench_classify
        return bench_classify(args)
    if args.bench_command == "backbones":
        from monitor.bench.backbones import bench_backbones
        return bench_backbones(args)
    if args.bench_command == "pipeline":
        from monitor.bench.pipeline import bench_pipeline
        return bench_pipeline(args)
    if args.bench_command == "stream":
        from monitor.bench.stream import bench_stream
        return bench_stream(args)
    if args.bench_command == "smoothing":
        from monitor.bench.smoothing import bench_smoothing
        return bench_smoothing(args)
    if args.bench_command == "batch":
        from monitor.bench.batch import bench_batch
        return bench_batch(args)
    if args.bench_command == "capacity":
        from monitor.bench.capacity import bench_capacity
        return bench_capacity(args)
    if args.bench_command == "overlay":
        from monitor.bench.overlay import bench_overlay
        return bench_overlay(args)
    raise AssertionError(args.bench_command)
