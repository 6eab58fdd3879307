"""The benchmark's command line, `python -m rslad_tf.bench` (run by `__main__`)."""

from __future__ import annotations

import argparse
import os

from rslad_tf.bench.peers import KERAS_BACKENDS
from rslad_tf.bench.robustness import robustness
from rslad_tf.bench.run import run
from rslad_tf.common.errors import ArgumentParser, UserError


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's argument parser (its usage mistakes raise `UserError`: one
    ``error:`` line under `run_cli`)."""
    parser = ArgumentParser(
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
    parser.add_argument("--backend", nargs="+", choices=KERAS_BACKENDS,
                        help="instead: RSLADModel's step on these Keras backends against the "
                             "reference RSLAD in plain PyTorch, side by side (GPU profile "
                             "unless --profile cpu-paper); under jax and torch no TensorFlow "
                             "is imported")
    parser.add_argument("--profile", choices=("cpu-paper",),
                        help="cpu-paper: ResNet-18 student and teacher, batch 32, through the "
                             "public fit() with default settings (and TensorFlow's speed "
                             "options) on every backend (or --backend), against the PyTorch "
                             "reference on this CPU")
    parser.add_argument("--warmup", type=int, help="warm-up steps before timing (--backend)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models, batch 8, 2 attack steps, one short round: checks "
                             "that every part runs (with --backend or --profile)")
    parser.add_argument("--keras-torch-compile", action="store_true",
                        help="--backend torch: compile the step with torch.compile "
                             "(jit_compile=True; off by default, see docs/speed.md)")
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
    for name in ("steps", "repeats", "cache_buckets", "warmup"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.json:
        # Checked now: the figures of a run of minutes would be lost at the end.
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder):
            raise UserError(f"--json {args.json}: no folder {folder}; create it first")
    if args.backend or args.profile:
        result = peers_run(args)
        if args.json:
            from rslad_tf.common import fileio

            fileio.write_json(args.json, result)
        return
    if args.smoke:
        raise UserError("--smoke goes with --backend or --profile cpu-paper")
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


def peers_run(args) -> dict:
    """``--backend`` / ``--profile cpu-paper``: `peers.compare` in child processes; this
    process imports no framework."""
    from rslad_tf.bench import peers
    from rslad_tf.bench.profiles import PEER_PROFILES, smoke
    from rslad_tf.common.runtime import cores

    if args.robustness:
        raise UserError("--robustness cannot be combined with --backend or --profile")
    if args.profile == "cpu-paper":
        if args.device == "gpu":
            raise UserError("--profile cpu-paper is a CPU profile: drop --device gpu")
        profile = PEER_PROFILES["cpu-paper"]
        backends = args.backend or KERAS_BACKENDS
        variants = peers.cpu_paper_variants(backends, cores())
        hide_gpu, device = True, "cpu"
        # Each fit() pass times the intervals between its batch ends: one fewer step than
        # batches; the reference times as many steps.
        steps, repeats, warmup = 3, 2, 1
    else:
        profile = PEER_PROFILES["gpu"]
        # --smoke on a CPU: torch.compile's aot_eager backend checks the compiled path
        # without minutes of C++ kernel generation.
        variants = peers.gpu_variants(args.backend, args.keras_torch_compile,
                                      "aot_eager" if args.smoke else "inductor")
        device = args.device or "gpu"
        hide_gpu = device == "cpu"
        steps, repeats, warmup = 10, 3, 5
        if device == "cpu" and not args.smoke:
            raise UserError("the GPU profile (ResNet-18 + WRN-34-10, batch 128) takes minutes "
                            "per step on a CPU: add --smoke, or use --profile cpu-paper")
    if args.smoke:
        profile = smoke(profile)
        steps, repeats, warmup = 2, 1, 1
    return peers.compare(profile, variants, steps=args.steps or steps,
                         repeats=args.repeats or repeats, warmup=args.warmup or warmup,
                         hide_gpu=hide_gpu, device=device)
