"""`python -m rslad_tf.evaluate`: the evaluation command line.

A ``.keras`` checkpoint is evaluated by `rslad_tf.evaluation.suite.evaluate`; an exported
artifact (SavedModel, .tflite, .onnx) by `rslad_tf.evaluation.artifact_eval`, its
white-box attacks crafted on ``--source``. The table is printed, the eval JSON written
with ``--out`` (never over an existing file).
"""

from __future__ import annotations

import argparse
import os
import sys

from rslad_tf.common import fileio, runtime, vocabulary
from rslad_tf.common.errors import ArgumentParser, UserError, run_cli
from rslad_tf.evaluation import artifact_eval, suite


def share_gpu_memory() -> None:
    """Let TensorFlow grow its GPU memory instead of taking it all at start-up, so the
    torch-backend AutoAttack process can use the same GPU. Effective only before TensorFlow
    has initialised its GPUs (the command line calls it first); otherwise set
    ``TF_FORCE_GPU_ALLOW_GROWTH=true`` in the environment."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised


def format_table(result: dict) -> str:
    """A readable table of one eval JSON."""
    head = (f"{result.get('checkpoint_path') or result.get('checkpoint') or result['model']}"
            f"  ({result['dataset']}, {result['model']}, {result.get('method') or '-'})\n"
            f"eps {result['eps']:.5g}, {result['n_examples']} test points, seed {result['seed']}")
    if result.get("artifact_format"):
        latency = result.get("latency") or {}
        head += (f"\n{result['artifact_format']} artifact {result.get('artifact_path')}: "
                 f"{result['size_bytes'] / 1024:.1f} KiB, {latency.get('median_ms', 0):.3f} ms "
                 f"per image at batch 1 ({latency.get('threads')} thread(s)); white-box "
                 "attacks crafted on the source checkpoint")
    lines = [head, f"{'attack':<18}{'accuracy':>10}{'seconds':>10}"]
    for column in vocabulary.EVAL_COLUMNS:
        if column.json_key not in result:
            continue
        line = (f"{column.label:<18}{result[column.json_key]:>9.2f}%"
                f"{result['seconds'].get(column.key, 0):>10.1f}")
        if column.key == "autoattack" and result.get("autoattack_per_attack"):
            steps = ", ".join(f"{k} {v:.2f}" for k, v in result["autoattack_per_attack"].items())
            line += f"   after: {steps}"
        lines.append(line)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The evaluate command's arguments."""
    parser = ArgumentParser(
        prog="python -m rslad_tf.evaluate",
        description="Evaluate a checkpoint with the paper's protocol (Clean, FGSM, PGD_SAT, "
                    "PGD_TRADES, CW_inf, AutoAttack; transfer and Square on request).")
    parser.add_argument("checkpoint", help=".keras file of the model to evaluate, or an "
                                           "exported artifact (SavedModel directory, .tflite, "
                                           ".onnx of `python -m rslad_tf.export`) with --source")
    parser.add_argument("--source", help="artifacts: the float .keras checkpoint it was "
                                         "exported from (the white-box attacks are crafted "
                                         "on it)")
    parser.add_argument("--threads", type=int, default=1,
                        help="artifacts: CPU threads of the LiteRT / ONNX runtime (default 1; "
                             "a SavedModel uses TensorFlow's pool)")
    parser.add_argument("--latency-repeats", type=int, default=200,
                        help="artifacts: timed calls at batch 1 for the latency (median)")
    parser.add_argument("--dataset", help="test set (default: the run's dataset when the "
                                          "checkpoint lies in a run directory, else digits)")
    parser.add_argument("--data-dir", help="local dataset files (CIFAR archives or TFDS dir)")
    parser.add_argument("--attacks", help="comma-separated list from: "
                        + ",".join(vocabulary.COLUMN_KEYS)
                        + " (default: the white-box suite, plus transfer with --surrogate)")
    parser.add_argument("--n-examples", type=int, help="evaluate the first N test points")
    parser.add_argument("--batch-size", type=int, default=256, help="attack batch size")
    parser.add_argument("--eps", type=float,
                        help="L-inf radius (default: the run's, else the dataset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    parser.add_argument("--out", help="write the eval JSON here (never overwrites)")
    parser.add_argument("--surrogate", help=".keras file the transfer attacks are crafted on")
    parser.add_argument("--autoattack-batch-size", type=int,
                        help="AutoAttack's batch size (default --batch-size)")
    # Default 1: AutoAttack runs whole batches side by side, which pays only with several
    # batches per attack (docs/speed.md); a single batch is slower on one core.
    runtime.add_attack_shards_argument(
        parser, "cut each PGD batch into N pieces, and run N native AutoAttack batches, at "
                "the same time", default="1")
    parser.add_argument("--autoattack", choices=suite.AUTOATTACK_IMPLS,
                        help="AutoAttack / Square implementation: native (TensorFlow) or "
                             f"reference (pyautoattack under PyTorch); default "
                             f"{suite.DEFAULT_AUTOATTACK}")
    return parser


def main(argv=None) -> None:
    """Evaluate one checkpoint or artifact as the arguments say; print its table."""
    args = build_parser().parse_args(argv)
    # Cheap checks first: no TensorFlow import before the input is known to be usable.
    from rslad_tf.interop import artifacts

    # An exported artifact (SavedModel, .tflite, .onnx) is evaluated by
    # `rslad_tf.evaluation.artifact_eval`, its white-box attacks crafted on --source.
    is_artifact = artifacts.is_artifact(args.checkpoint) or os.path.isdir(args.checkpoint)
    if is_artifact:
        artifacts.container_of(args.checkpoint)  # missing or unknown kind: one line
        if args.source is None:
            raise UserError("an exported artifact is evaluated against the float checkpoint "
                            "it was exported from: pass --source CKPT.keras")
        if not os.path.isfile(args.source):
            raise UserError(f"source checkpoint file {args.source!r} does not exist")
        if args.autoattack == "reference":
            raise UserError("--autoattack reference runs a .keras file under PyTorch; an "
                            "artifact is attacked by the native implementation only")
    elif not os.path.isfile(args.checkpoint):
        raise UserError(f"checkpoint file {args.checkpoint!r} does not exist")
    elif args.source is not None:
        raise UserError("--source names the checkpoint an exported artifact came from; "
                        f"{args.checkpoint!r} is not an artifact (drop --source)")
    if args.surrogate is not None and not os.path.isfile(args.surrogate):
        raise UserError(f"surrogate file {args.surrogate!r} does not exist")
    attack_shards = runtime.attack_shards_from(args)
    attacks = suite.validate_attacks(args.attacks, args.surrogate)
    suite.check_numbers(args.n_examples, args.batch_size, args.eps, args.autoattack_batch_size)
    if args.out:
        fileio.refuse_existing(args.out, "--out")
    run_config = fileio.run_config_of(args.source if is_artifact else args.checkpoint) or {}
    dataset = args.dataset or run_config.get("dataset") or "digits"
    from rslad_tf.data import spec

    spec(dataset)  # unknown dataset: one line
    eps = args.eps
    if eps is None and dataset == run_config.get("dataset"):
        eps = run_config.get("epsilon")
    data_dir = args.data_dir or (run_config.get("data_dir")
                                 if dataset == run_config.get("dataset") else None)

    runtime.configure(attack_shards=attack_shards)
    share_gpu_memory()
    if is_artifact:
        result = artifact_eval.evaluate_artifact(
            args.checkpoint, source=args.source, surrogate=args.surrogate, dataset=dataset,
            data_dir=data_dir, attacks=None if args.attacks is None else attacks,
            n_examples=args.n_examples, batch_size=args.batch_size, eps=eps, seed=args.seed,
            autoattack_batch_size=args.autoattack_batch_size, threads=args.threads,
            latency_repeats=args.latency_repeats,
            log=lambda m: print(m, file=sys.stderr, flush=True))
    else:
        result = suite.evaluate(args.checkpoint, dataset=dataset, data_dir=data_dir,
                                attacks=attacks, n_examples=args.n_examples,
                                batch_size=args.batch_size, eps=eps, seed=args.seed,
                                surrogate=args.surrogate,
                                autoattack_batch_size=args.autoattack_batch_size,
                                autoattack=args.autoattack,
                                log=lambda m: print(m, file=sys.stderr, flush=True))
    if run_config:
        result.setdefault("preset", run_config.get("preset"))
        result.setdefault("train_seed", run_config.get("seed"))
    print(format_table(result))
    if args.out:
        fileio.refuse_existing(args.out, "--out")  # it may have appeared meanwhile
        fileio.write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
