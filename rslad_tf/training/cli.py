"""`python -m rslad_tf.train`: train a teacher or a student from a preset.

The run directory it writes is described in `rslad_tf.training.run_dir`; a run never
overwrites an existing run directory unless ``--resume`` is given.

``--backend`` (else ``KERAS_BACKEND``, else TensorFlow) picks the Keras backend; it is set
before anything imports Keras, so nothing here imports Keras (or TensorFlow) at module
level (docs/backends.md: what each backend runs).
"""

from __future__ import annotations

import argparse
import json

from rslad_tf import backends
from rslad_tf.common import runtime, vocabulary
from rslad_tf.common.errors import ArgumentParser, UserError
from rslad_tf.config import overrides, presets
from rslad_tf.training import run_dir

_JIT_FLAG = {"auto": "auto", "on": True, "off": False}


def resolve_config(args) -> presets.TrainConfig:
    """The preset with the command-line overrides (flags, then ``--set``) applied by
    `rslad_tf.config.overrides.apply`, the rule the pipeline uses too; validated."""
    config = presets.get(args.preset)
    changes = {
        "method": args.method, "epochs": args.epochs, "batch_size": args.batch_size,
        "seed": args.seed, "max_steps": args.max_steps, "teacher_path": args.teacher,
        "epsilon": args.epsilon, "eval_n_examples": args.eval_n_examples,
        "data_dir": args.data_dir, "save_every_steps": args.save_every_steps,
        "deterministic": args.deterministic or None,
        "jit_compile": _JIT_FLAG.get(getattr(args, "jit_compile", None)),
        "mixed_precision": getattr(args, "mixed_precision", None),
        "device_data": getattr(args, "device_data", None),
        "teacher_cache": getattr(args, "teacher_cache", False) or None,
        "fold_attack_bn": getattr(args, "fold_attack_bn", False) or None,
    }
    sets = overrides.parse_set(getattr(args, "set", None))
    twice = sorted(k for k in sets if changes.get(k) is not None)
    if twice:
        raise UserError(f"{twice[0]} is given both as a flag and with --set; give it once")
    config = overrides.apply(config, {**changes, **sets})
    if (args.method is not None and config.needs_teacher and config.teacher_preset is None
            and config.runtime.teacher_path is None):
        raise UserError(f"method {config.method!r} distils from a teacher: pass --teacher PATH")
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m rslad_tf.train",
        description="Train a robust teacher or distil a student from a named preset.")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    parser.add_argument("--backend", metavar="{" + ",".join(backends.SUPPORTED) + "}",
                        help="Keras backend to train on (default: KERAS_BACKEND, else "
                             "tensorflow; docs/backends.md)")
    parser.add_argument("--preset",
                        help="named experiment, e.g. digits-teacher, digits-rslad "
                             "(see --list-presets)")
    parser.add_argument("--method", help="override the preset's method: "
                                         + ", ".join(vocabulary.METHOD_NAMES))
    parser.add_argument("--epochs", type=int, help="number of epochs")
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--epsilon", type=float,
                        help="L-inf radius of the training attack (step scales with it)")
    parser.add_argument("--teacher", help="teacher .keras file (distillation methods)")
    parser.add_argument("--data-dir", help="local dataset files (CIFAR archives or a TFDS dir)")
    parser.add_argument("--download", action="store_true",
                        help="let TFDS download the dataset if it is not prepared (needs internet)")
    parser.add_argument("--out", help="run directory (default runs/<preset>)")
    parser.add_argument("--runs-dir", default=run_dir.DEFAULT_RUNS_DIR,
                        help="where default run directories live (and teachers are found)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--max-steps", type=int, help="cap on training steps per epoch")
    parser.add_argument("--eval-n-examples", type=int,
                        help="evaluate per-epoch accuracy on the first N test points")
    parser.add_argument("--save-every-steps", type=int,
                        help="also save the resumable state every N steps (default: per epoch)")
    parser.add_argument("--deterministic", action="store_true",
                        help="enable TensorFlow's deterministic ops (bit-exact resume on CPU)")
    parser.add_argument("--no-final-eval", action="store_true",
                        help="skip the full evaluation suite at the end of the run")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any field of the preset (repeatable), e.g. --set "
                             "learning_rate=0.1 --set lr_milestones=[20,25] --set "
                             "model_kwargs.width=8 (docs/training.md: Overrides)")
    speed = parser.add_argument_group("speed (docs/speed.md)")
    speed.add_argument("--jit-compile", choices=tuple(_JIT_FLAG),
                       help="XLA for the training step (default auto: on GPU only)")
    speed.add_argument("--mixed-precision", choices=presets.MIXED_PRECISION_CHOICES,
                       help="student compute dtype in training (default off); evaluation "
                            "and checkpoints stay float32")
    speed.add_argument("--device-data", choices=presets.DEVICE_DATA_CHOICES,
                       help="keep the training set on the device (default auto: if it fits)")
    speed.add_argument("--teacher-cache", action="store_true",
                       help="ARD, IAD, RSLAD: compute the teacher's logits on the clean "
                            "images once per (image, crop, flip) and reuse them (same "
                            "values up to rounding: docs/speed.md)")
    runtime.add_attack_shards_argument(
        speed, "cut each batch of the training attack into N pieces run at the same time")
    speed.add_argument("--fold-attack-bn", action="store_true",
                       help="run the training attack with BatchNorm folded into the "
                            "convolutions (same function up to float rounding)")
    return parser


def _configure_other(backend: str, attack_shards) -> None:
    """The JAX or torch counterpart of `runtime.configure`: torch's thread pool sized to
    the cores (``RSLAD_TF_THREADS``); attack shards are TensorFlow-only (said when asked)."""
    if attack_shards != "auto" and attack_shards > 1:
        print(f"speed: --attack-shards is TensorFlow-only; the {backend} backend runs the "
              "training attack in one piece (same results)")
    if backend == "torch":
        from rslad_tf.backends import torch_backend

        torch_backend.set_threads(runtime.cores())


def main(argv=None) -> None:
    """Parse ``argv``, check the output location and the teacher, train, print the
    summary as JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # before anything imports Keras: Keras reads the backend once
        backend = backends.select(args.backend)
    except backends.BackendError as exc:
        raise UserError(str(exc)) from None
    if args.list_presets:
        print("\n".join(presets.available()))
        return
    if not args.preset:
        parser.error("--preset is required (see --list-presets)")
    config = resolve_config(args)
    attack_shards = runtime.attack_shards_from(args)
    out_dir = args.out or run_dir.default_out_dir(config.preset, args.runs_dir)
    # Check the output location and the teacher file before any slow import or data loading.
    run_dir.prepare_out_dir(out_dir, args.resume)
    if config.needs_teacher and not args.resume:
        from rslad_tf.common import fileio

        fileio.check_keras_archive(run_dir.find_teacher(config, args.runs_dir), "teacher")
    if backend == "tensorflow":
        shards = runtime.configure(attack_shards=attack_shards)
        if shards > 1:
            print(f"speed: training attack in {shards} shards run side by side")
    else:
        _configure_other(backend, attack_shards)
    from rslad_tf.training.loop import train

    summary = train(config, out_dir, resume=args.resume, runs_dir=args.runs_dir,
                    final_eval=not args.no_final_eval, download=args.download)
    print(json.dumps(summary, indent=2, sort_keys=True))
