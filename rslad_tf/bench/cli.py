"""The benchmark's command line, `python -m rslad_tf.bench` (run by `__main__`)."""

from __future__ import annotations

import argparse
import os

from rslad_tf.bench.robustness import robustness
from rslad_tf.bench.run import run
from rslad_tf.common.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m rslad_tf.bench",
        description="Images/s of the RSLAD training step and the PGD-20 evaluation attack: "
                    "reference configuration vs optimised, timed side by side.")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="fewer steps and repeats, no ablations (a smoke run)")
    parser.add_argument("--device", choices=("cpu", "gpu"),
                        help="profile (default: gpu when a GPU is visible, else cpu)")
    parser.add_argument("--steps", type=int, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, help="timed repeats (the median is reported)")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=None,
                        help="also time each fast path alone (default: on CPU unless --quick)")
    parser.add_argument("--cache-buckets", type=int,
                        help="teacher-cache miss granularity (default 4; fewer = faster XLA "
                             "compilation, less saving)")
    parser.add_argument("--robustness", action="store_true",
                        help="instead: train digits RSLAD per seed with the reference and the "
                             "optimised configurations and compare their PGD-20 accuracy "
                             "(minutes per run on CPU)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of --robustness (default 0 1 2)")
    parser.add_argument("--runs-dir", default=os.path.join("runs", "bench-robustness"),
                        help="run directories of --robustness (reused / resumed if present)")
    return parser


def main(argv=None) -> None:
    """Parse `argv`, then time the configurations (or, with --robustness, train them).
    TensorFlow is first imported here, after the thread pools are configured."""
    args = build_parser().parse_args(argv)
    for name in ("steps", "repeats", "cache_buckets"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    from rslad_tf.common import runtime

    # --robustness trains like the train CLI (attack shards "auto": exact, so the variants
    # differ only in what they compare); the timing run lays out its own child processes.
    runtime.configure(attack_shards="auto" if args.robustness else 1)
    if args.device == "cpu":
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    if args.robustness:
        result = robustness(tuple(args.seeds), runs_dir=args.runs_dir)
        if args.json:
            from rslad_tf.common import fileio

            fileio.write_json(args.json, result)
        return
    result = run(args.device, quick=args.quick, steps=args.steps, repeats=args.repeats,
                 ablations=args.ablations, cache_buckets=args.cache_buckets)
    if args.json:
        from rslad_tf.common import fileio

        fileio.write_json(args.json, result)

