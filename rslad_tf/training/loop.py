"""`python -m rslad_tf.train`: train a teacher or a student from a preset.

Run directory (``--out``, default ``runs/<preset>``):

    config.json              the resolved configuration
    history.csv              per epoch: loss terms, train acc, clean / PGD-20 test acc, lr, seconds
    checkpoints/best.keras   the student with the best PGD-20 test accuracy (reference rule)
    checkpoints/last.keras   the student after the last epoch
    checkpoints/state.npz    everything needed to resume exactly (weights, optimizer, RNG, epoch,
                             and the weight average when ``ema_decay`` is set)
    checkpoints/ema_best.keras, ema_last.keras   the student's weight average (``ema_decay``):
                             best by its own PGD-20 accuracy, and after the last epoch
    tensorboard/             Keras' TensorBoard logs

A run never overwrites an existing run directory unless ``--resume`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import time
import zipfile

import numpy as np

from rslad_tf.config import presets
from rslad_tf.common import vocabulary
from rslad_tf.common import runtime
from rslad_tf.common.errors import ArgumentParser, UserError, run_cli

DEFAULT_RUNS_DIR = "runs"
MIXED_PRECISION_FLAGS = presets.MIXED_PRECISION_CHOICES
STATE_FILE = "state.npz"


# -- configuration ---------------------------------------------------------------------
def default_out_dir(preset: str, runs_dir: str = DEFAULT_RUNS_DIR) -> str:
    return os.path.join(runs_dir, preset)


def teacher_checkpoint(run_dir: str) -> str:
    """The teacher file a finished teacher run provides: its best checkpoint."""
    return os.path.join(run_dir, "checkpoints", "best.keras")


def resolve_config(args) -> presets.TrainConfig:
    """The preset with the command-line overrides (flags, then ``--set``) applied by
    `rslad_tf.config.overrides.apply`, the rule the pipeline uses too; validated."""
    from rslad_tf.config import overrides

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
            and config.teacher_path is None):
        raise UserError(f"method {config.method!r} distils from a teacher: pass --teacher PATH")
    return config


# -- building blocks -------------------------------------------------------------------
_JIT_FLAG = {"auto": "auto", "on": True, "off": False}
MIXED_POLICIES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@contextlib.contextmanager
def dtype_policy(name: str | None):
    """Build models under the Keras dtype policy ``name`` (None: leave the policy alone);
    the previous global policy is restored on exit, so it never leaks into evaluation."""
    if name is None:
        yield
        return
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def create_student(config: presets.TrainConfig, *, float32: bool = False):
    """The config's student, under its mixed precision policy (or float32 if asked)."""
    from rslad_tf import models
    from rslad_tf.data import spec

    data_spec = spec(config.dataset)
    policy = "float32" if float32 else MIXED_POLICIES.get(config.mixed_precision)
    with dtype_policy(policy):
        return models.create(config.model, data_spec.num_classes,
                             input_shape=data_spec.image_shape, **config.model_kwargs)


def float32_copy(config: presets.TrainConfig, student, into=None):
    """``student``'s weights in a float32 model (checkpoints and evaluation are float32).
    ``into``: a float32 model from an earlier call, refreshed in place."""
    copy = into if into is not None else create_student(config, float32=True)
    copy.set_weights(student.get_weights())
    return copy


def learning_rate(config: presets.TrainConfig, epoch: int) -> float:
    """Step schedule: the base rate times lr_gamma per milestone passed (epochs from 0)."""
    passed = sum(1 for m in config.lr_milestones if epoch >= m)
    return config.learning_rate * config.lr_gamma ** passed


def is_eval_epoch(config: presets.TrainConfig, epoch: int) -> bool:
    """The reference's selection schedule: every `eval_every` epochs before the first LR
    milestone, every epoch from it on, and always the last epoch."""
    first_milestone = min(config.lr_milestones) if config.lr_milestones else config.epochs
    return (epoch + 1 >= first_milestone or (epoch + 1) % config.eval_every == 0
            or epoch + 1 == config.epochs)


def find_teacher(config: presets.TrainConfig, runs_dir: str = DEFAULT_RUNS_DIR) -> str:
    """Path of the teacher file for a distillation config; `UserError` saying how to get one."""
    if config.teacher_path:
        if not os.path.isfile(config.teacher_path):
            raise UserError(f"teacher file {config.teacher_path!r} does not exist")
        return config.teacher_path
    if config.teacher_preset:
        path = teacher_checkpoint(default_out_dir(config.teacher_preset, runs_dir))
        if os.path.isfile(path):
            return path
        how = config.teacher_hint or (f"train one with `python -m rslad_tf.train --preset "
                                      f"{config.teacher_preset}` or pass --teacher PATH")
        raise UserError(f"no teacher found at {path}: {how}")
    how = config.teacher_hint or "pass --teacher PATH"
    raise UserError(f"preset {config.preset!r} ({config.method}) needs a teacher: {how}")


def load_teacher(path: str, data_spec) -> "object":
    """Load and check a teacher: a Keras model with the dataset's input shape and classes."""
    from rslad_tf.data import check_model_fits
    from rslad_tf.methods import saving

    teacher = saving.load_model(path, what="teacher")
    check_model_fits(teacher, data_spec, f"teacher {path!r}",
                     "use a teacher trained on this dataset")
    return teacher


def build_method(config: presets.TrainConfig, student, teacher=None):
    """The method model (e.g. `RSLADModel`) for a config, compiled with SGD."""
    import keras

    from rslad_tf.data import spec
    from rslad_tf.methods import METHODS

    data_spec = spec(config.dataset)
    kwargs = dict(config.method_kwargs)
    kwargs.update(epsilon=config.epsilon, step_size=config.step_size,
                  attack_steps=config.attack_steps, weight_decay=config.weight_decay,
                  augment_padding=data_spec.augment_padding,
                  augment_flip=data_spec.augment_flip, seed=config.seed)
    if kwargs.get("igdm_alpha") and kwargs.get("igdm_epochs") is None:
        kwargs["igdm_epochs"] = config.epochs  # IGDM's weight ramps over the whole run
    cls = METHODS[config.method]
    if cls.uses_teacher:
        kwargs["teacher"] = teacher
    method = cls(student, **kwargs)
    # Weight decay is applied to the gradients by the method (PyTorch's coupled form).
    optimizer = keras.optimizers.SGD(learning_rate=config.learning_rate,
                                     momentum=config.momentum)
    if config.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    method.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    method.build((None,) + tuple(data_spec.image_shape))
    method.optimizer.build(student.trainable_variables)
    return method


def setup_fast_paths(config: presets.TrainConfig, method, x_train, y_train, *,
                     num_replicas: int = 1, log=print) -> dict:
    """Attach the config's exact fast paths to ``method``: the training set on the device
    (``device_data``), the teacher soft-label cache (``teacher_cache``) and the folded
    attack (``fold_attack_bn``). Returns what is on: {"device_data": DeviceData or None,
    "teacher_cache": SoftLabelCache or None, "folded": bool}."""
    from rslad_tf.data import device_data as dd
    from rslad_tf.data import spec
    from rslad_tf.methods.soft_label_cache import SoftLabelCache, cache_bytes, num_variants

    out = {"device_data": None, "teacher_cache": None, "folded": False}
    if config.device_data != "off":
        if num_replicas > 1:
            if config.device_data == "on":
                raise UserError("--device-data on works on one device only")
        elif config.device_data == "on" or dd.fits(x_train, y_train):
            out["device_data"] = dd.DeviceData(x_train, y_train)
            method.attach_device_data(out["device_data"])
            log(out["device_data"].describe())
        else:
            log(f"device-resident data: {dd.data_bytes(x_train, y_train) / 2**20:.0f} MiB does "
                f"not fit the budget ({dd.default_max_bytes() / 2**20:.0f} MiB): tf.data path")
    if config.teacher_cache:
        if num_replicas > 1:
            raise UserError("--teacher-cache works on one device only")
        data_spec = spec(config.dataset)
        variants = num_variants(data_spec.augment_padding, data_spec.augment_flip)
        needed = cache_bytes(len(x_train), variants, data_spec.num_classes)
        if needed > dd.default_max_bytes():
            log(f"teacher soft-label cache: {needed / 2**20:.0f} MiB does not fit the budget "
                f"({dd.default_max_bytes() / 2**20:.0f} MiB): teacher computed every step")
        else:
            cache = SoftLabelCache(len(x_train), data_spec.num_classes,
                                   padding=data_spec.augment_padding, flip=data_spec.augment_flip)
            method.attach_teacher_cache(cache)
            out["teacher_cache"] = cache
            log(cache.describe())
    if config.fold_attack_bn:
        out["folded"] = method.set_attack_batchnorm_folding(True)
        log("training attack: BatchNorm folded into convolutions" if out["folded"] else
            "training attack: nothing to fold (BatchNorm in training mode or no conv+BN)")
    return out


def training_dataset(config: presets.TrainConfig, fast: dict, x_train, y_train, epoch: int):
    """One epoch's batches: indices (device data), or images with or without indices."""
    from rslad_tf.data import make_dataset
    from rslad_tf.data.device_data import indexed_dataset

    seed = config.seed * 100003 + epoch
    if fast.get("device_data") is not None:
        return fast["device_data"].index_dataset(config.batch_size, shuffle=True, seed=seed)
    if fast.get("teacher_cache") is not None:
        return indexed_dataset(x_train, y_train, config.batch_size, shuffle=True, seed=seed)
    return make_dataset(x_train, y_train, config.batch_size, shuffle=True, seed=seed)


def setup_weight_average(config: presets.TrainConfig, method, *, log=print):
    """Attach an EMA of the student's weights when ``config.ema_decay`` is set (one device
    only; see `rslad_tf.methods.ema` for how BatchNorm statistics are averaged)."""
    from rslad_tf.methods.ema import WeightAverage

    if config.ema_decay is None:
        return None
    if method.distribute_strategy.num_replicas_in_sync > 1:
        raise UserError("ema_decay (the weight average) works on one device only")
    average = WeightAverage(method.student, config.ema_decay)
    method.attach_weight_average(average)
    log(f"weight average: EMA of the student's weights, decay {config.ema_decay:g} "
        "(BatchNorm statistics averaged too), checkpoints/ema_{best,last}.keras")
    return average


# -- resumable state -------------------------------------------------------------------
NO_BEST = (-1.0, -1)  # (PGD-20 accuracy, epoch) before any selection epoch
def _save_state(path, method, epoch, best, step=0, ema_best=None):
    """Everything needed to continue exactly: `epoch`/`step` is the next step to run.
    With a weight average attached, its shadow weights and `ema_best` too."""
    from rslad_tf.common import fileio

    arrays = {f"w{i}": np.asarray(v) for i, v in enumerate(method.student.weights)}
    if method.weight_average is not None:
        arrays.update(method.weight_average.state())
        arrays["ema_best_pgd"] = np.asarray(ema_best[0])
        arrays["ema_best_epoch"] = np.asarray(ema_best[1])
    arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(method.optimizer.variables)})
    arrays["seed_state"] = np.asarray(method.seed_generator.state)
    arrays["epoch"] = np.asarray(epoch)
    arrays["step"] = np.asarray(step)
    arrays["best_pgd"] = np.asarray(best[0])
    arrays["best_epoch"] = np.asarray(best[1])
    fileio.write_npz(path, arrays)


def _load_state(path, method):
    try:
        with np.load(path, allow_pickle=False) as state:
            weights = method.student.weights
            opt_vars = method.optimizer.variables
            for i, v in enumerate(weights):
                v.assign(state[f"w{i}"])
            for i, v in enumerate(opt_vars):
                v.assign(state[f"o{i}"])
            method.seed_generator.state.assign(state["seed_state"])
            ema_best = NO_BEST
            if method.weight_average is not None:
                method.weight_average.restore(state)
                ema_best = (float(state["ema_best_pgd"]), int(state["ema_best_epoch"]))
            return (int(state["epoch"]), int(state["step"]),
                    (float(state["best_pgd"]), int(state["best_epoch"])), ema_best)
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot resume: training state {path!r} is unreadable or does not "
                        f"match this configuration ({exc})") from None


# -- the run ---------------------------------------------------------------------------
HISTORY_FIELDS_HEAD = ["epoch", "lr"]
HISTORY_FIELDS_TAIL = ["clean_acc", "pgd20_acc", "seconds"]


def _write_history(path, rows):
    from rslad_tf.common import fileio

    fields = HISTORY_FIELDS_HEAD[:]
    for row in rows:
        for key in row:
            if key not in fields and key not in HISTORY_FIELDS_TAIL:
                fields.append(key)
    fields += HISTORY_FIELDS_TAIL
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(path, buf.getvalue())


def _read_history(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def prepare_out_dir(out_dir: str, resume: bool) -> None:
    """Refuse to touch an existing run unless resuming; refuse to resume a missing one."""
    has_run = os.path.exists(os.path.join(out_dir, "config.json"))
    if resume:
        if not has_run:
            raise UserError(f"cannot resume: {out_dir!r} holds no run (no config.json)")
        return
    if has_run:
        raise UserError(f"{out_dir!r} already holds a run; pass --resume to continue it or "
                        "choose another --out")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise UserError(f"{out_dir!r} exists and is not empty; choose another --out")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir!r} exists and is not a directory; choose another --out")


def default_strategy():
    """`MirroredStrategy` over all local GPUs when there are several, else the default.

    The global batch size stays the preset's; each method scales its loss by the number of
    replicas, so N devices compute the update of one device."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


class _StepGuard:
    """Per-batch checks inside `fit`: stop at the first non-finite loss (remembering the
    step), and save the resumable state every `save_every_steps` steps."""

    def __init__(self, save_every_steps, save):
        self.save_every_steps = save_every_steps
        self.save = save
        self.bad_step = None

    def callback(self, epoch, first_step):
        import keras

        guard = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                step = first_step + batch + 1  # steps of this epoch done so far
                if not np.isfinite(float((logs or {}).get("loss", 0.0))):
                    guard.bad_step = step
                    self.model.stop_training = True
                elif guard.save_every_steps and step % guard.save_every_steps == 0:
                    guard.save(epoch, step)

        return Callback()


def train(config: presets.TrainConfig, out_dir: str, **kwargs) -> dict:
    """Train ``config`` into ``out_dir`` (see `_train` for the arguments); returns a summary.

    TensorFlow's deterministic-ops switch is process-wide: a deterministic run turns it on
    and this wrapper turns it off again, so later work in the process (e.g. XLA kernels that
    have no deterministic version) is unaffected.
    """
    from tensorflow.python.framework import config as tf_config

    was_deterministic = tf_config.is_op_determinism_enabled()
    try:
        return _train(config, out_dir, **kwargs)
    finally:
        if not was_deterministic and tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()


def _train(config: presets.TrainConfig, out_dir: str, *, resume: bool = False,
          runs_dir: str = DEFAULT_RUNS_DIR, teacher=None, final_eval: bool = False,
          strategy=None, log=print) -> dict:
    """Train ``config`` into ``out_dir``; returns a summary dict (best/last accuracies).

    ``teacher``: an already loaded teacher model (otherwise found from the config).
    ``final_eval``: run the full evaluation suite on best and last at the end.
    ``strategy``: a `tf.distribute` strategy (default: all local GPUs, see `default_strategy`).
    """
    import keras
    import tensorflow as tf

    from rslad_tf import attacks
    from rslad_tf.common import fileio
    from rslad_tf.methods import saving
    from rslad_tf.data import load_numpy, spec
    from rslad_tf.evaluation.core import accuracy_under_attack

    config.validate()
    prepare_out_dir(out_dir, resume)
    if resume:
        with open(os.path.join(out_dir, "config.json")) as f:
            saved = presets.TrainConfig.from_dict(json.load(f))
        # Only the epoch budget may change on resume (e.g. to extend a run).
        config = saved.replace(epochs=config.epochs)
    # Find the teacher before any slow work, so a missing one fails fast.
    teacher_path = (find_teacher(config, runs_dir)
                    if config.needs_teacher and teacher is None else None)
    data_spec = spec(config.dataset)
    x_train, y_train = load_numpy(config.dataset, "train", config.data_dir)
    x_test, y_test = load_numpy(config.dataset, "test", config.data_dir)
    if config.eval_n_examples:
        x_test, y_test = x_test[:config.eval_n_examples], y_test[:config.eval_n_examples]

    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = strategy or default_strategy()
    with strategy.scope():
        if teacher_path is not None:
            teacher = load_teacher(teacher_path, data_spec)
            config = config.replace(teacher_path=os.path.abspath(teacher_path))
        keras.utils.set_random_seed(config.seed)
        student = create_student(config)
        method = build_method(config, student, teacher)
    fast = setup_fast_paths(config, method, x_train, y_train,
                            num_replicas=strategy.num_replicas_in_sync, log=log)
    # Checkpoints and evaluation are float32: a mixed precision student is copied into a
    # float32 model of the same architecture before each evaluation and save.
    eval_model = student if config.mixed_precision == "off" else None

    ckpt_dir = os.path.join(out_dir, "checkpoints")
    state_path = os.path.join(ckpt_dir, STATE_FILE)
    history_path = os.path.join(out_dir, "history.csv")
    average = setup_weight_average(config, method, log=log)
    ema_model = create_student(config, float32=True) if average is not None else None
    start_epoch, start_step, best, ema_best = 0, 0, NO_BEST, NO_BEST
    if resume:
        history = _read_history(history_path)
        if os.path.exists(state_path):
            start_epoch, start_step, best, ema_best = _load_state(state_path, method)
        history = [row for row in history if int(row["epoch"]) < start_epoch]
    else:
        os.makedirs(ckpt_dir, exist_ok=True)
        fileio.write_json(os.path.join(out_dir, "config.json"), config.to_dict())
        history = []

    tensorboard = keras.callbacks.TensorBoard(log_dir=os.path.join(out_dir, "tensorboard"))
    eval_writer = tf.summary.create_file_writer(os.path.join(out_dir, "tensorboard", "eval"))
    selection_attack = attacks.PROTOCOL["pgd_trades"]  # PGD-20, step 0.003 at 8/255
    steps_per_epoch = -(-len(x_train) // config.batch_size)
    if config.max_steps:
        steps_per_epoch = min(steps_per_epoch, config.max_steps)

    log(f"[{config.preset}] {config.method} on {config.dataset}: {config.model}, "
        f"{config.epochs} epochs x {steps_per_epoch} steps, batch {config.batch_size}, "
        f"eps {config.epsilon:.4g} -> {out_dir}")
    from rslad_tf.config.overrides import describe

    log(describe(config))
    if config.mixed_precision != "off" or config.jit_compile != "auto":
        log(f"speed: mixed precision {config.mixed_precision}, jit_compile "
            f"{method.jit_compile}")
    guard = _StepGuard(config.save_every_steps,
                       lambda e, k: _save_state(state_path, method, e, best, step=k,
                                                ema_best=ema_best))
    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        lr = learning_rate(config, epoch)
        method.optimizer.learning_rate.assign(lr)
        first_step = start_step if epoch == start_epoch else 0
        # One seeded order per epoch, so a resumed run sees the same data order; a run
        # resumed mid-epoch skips the batches it already trained on. (The device-resident
        # and indexed paths give the same order: `rslad_tf.data.device_data`.)
        dataset = training_dataset(config, fast, x_train, y_train, epoch)
        dataset = dataset.take(steps_per_epoch).skip(first_step)
        if fast["teacher_cache"] is not None:
            fast["teacher_cache"].reset_counters()
        logs = method.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                          callbacks=[tensorboard, guard.callback(epoch, first_step)]).history
        if guard.bad_step is not None:
            raise UserError(
                f"training diverged: non-finite loss at epoch {epoch + 1}, step {guard.bad_step}; "
                f"the last good checkpoint is kept in {ckpt_dir}; lower the learning rate")
        row = {"epoch": epoch, "lr": lr}
        row.update({k: float(v[-1]) for k, v in logs.items()})
        message = f"epoch {epoch + 1:>3}/{config.epochs}  loss {row['loss']:.4f}  " \
                  f"train-acc {100 * row['acc']:5.1f}%"
        if "zero_grad_frac" in row:
            message += f"  zero-grad {100 * row['zero_grad_frac']:.2f}%"
        if fast["teacher_cache"] is not None:
            row["cache_hit_rate"] = fast["teacher_cache"].counters()["hit_rate"]
            message += f"  cache-hits {100 * row['cache_hit_rate']:5.1f}%"
        if config.mixed_precision != "off":
            eval_model = float32_copy(config, student, into=eval_model)
        if is_eval_epoch(config, epoch):
            clean = accuracy_under_attack(eval_model, x_test, y_test)
            robust = accuracy_under_attack(eval_model, x_test, y_test, attack=selection_attack,
                                           eps=config.epsilon, seed=config.seed)
            row.update(clean_acc=clean, pgd20_acc=robust)
            message += f"  test clean {clean:5.1f}%  PGD-20 {robust:5.1f}%"
            with eval_writer.as_default():
                tf.summary.scalar("clean_acc", clean, step=epoch)
                tf.summary.scalar("pgd20_acc", robust, step=epoch)
            if robust > best[0]:
                best = (robust, epoch)
                saving.save_model(eval_model, os.path.join(ckpt_dir, "best.keras"))
                message += "  *best*"
        if average is not None:
            average.copy_to(ema_model)
            if is_eval_epoch(config, epoch):
                clean = accuracy_under_attack(ema_model, x_test, y_test)
                robust = accuracy_under_attack(ema_model, x_test, y_test,
                                               attack=selection_attack, eps=config.epsilon,
                                               seed=config.seed)
                row.update(ema_clean_acc=clean, ema_pgd20_acc=robust)
                message += f"  EMA clean {clean:5.1f}%  PGD-20 {robust:5.1f}%"
                if robust > ema_best[0]:
                    ema_best = (robust, epoch)
                    saving.save_model(ema_model, os.path.join(ckpt_dir, "ema_best.keras"))
                    message += "  *EMA best*"
            saving.save_model(ema_model, os.path.join(ckpt_dir, "ema_last.keras"))
        row["seconds"] = round(time.time() - started, 3)
        history.append(row)
        saving.save_model(eval_model, os.path.join(ckpt_dir, "last.keras"))
        _save_state(state_path, method, epoch + 1, best, step=0, ema_best=ema_best)
        _write_history(history_path, history)
        log(message + f"  lr {lr:.3g}  {row['seconds']:.1f}s")

    summary = {"out_dir": out_dir, "preset": config.preset, "method": config.method,
               "best_epoch": best[1] + 1, "best_pgd20_acc": best[0],
               "last_clean_acc": _last_value(history, "clean_acc"),
               "last_pgd20_acc": _last_value(history, "pgd20_acc")}
    if average is not None:
        summary.update(ema_best_epoch=ema_best[1] + 1, ema_best_pgd20_acc=ema_best[0],
                       ema_last_pgd20_acc=_last_value(history, "ema_pgd20_acc"))
    if final_eval:
        from rslad_tf.evaluation import suite as evaluation

        if hasattr(evaluation, "evaluate_run"):
            summary["final_eval"] = evaluation.evaluate_run(out_dir, log=log)
    return summary


def _last_value(history, key):
    for row in reversed(history):
        if row.get(key) not in (None, ""):
            return float(row[key])
    return None


# -- command line ----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m rslad_tf.train",
        description="Train a robust teacher or distil a student from a named preset.")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
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
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
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
    speed.add_argument("--jit-compile", choices=("auto", "on", "off"),
                       help="XLA for the training step (default auto: on GPU only)")
    speed.add_argument("--mixed-precision", choices=MIXED_PRECISION_FLAGS,
                       help="student compute dtype in training (default off); evaluation "
                            "and checkpoints stay float32")
    speed.add_argument("--device-data", choices=("auto", "on", "off"),
                       help="keep the training set on the device (default auto: if it fits)")
    speed.add_argument("--teacher-cache", action="store_true",
                       help="RSLAD: compute the teacher's logits once per (image, crop, flip) "
                            "and reuse them (exact)")
    runtime.add_attack_shards_argument(
        speed, "cut each batch of the training attack into N pieces run at the same time")
    speed.add_argument("--fold-attack-bn", action="store_true",
                       help="run the training attack with BatchNorm folded into the "
                            "convolutions (same function up to float rounding)")
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        print("\n".join(presets.available()))
        return
    if not args.preset:
        parser.error("--preset is required (see --list-presets)")
    config = resolve_config(args)
    attack_shards = runtime.attack_shards_from(args)
    out_dir = args.out or default_out_dir(config.preset, args.runs_dir)
    # Check the output location and the teacher file before any slow import or data loading.
    prepare_out_dir(out_dir, args.resume)
    if config.needs_teacher and not args.resume:
        from rslad_tf.common import fileio

        fileio.check_keras_archive(find_teacher(config, args.runs_dir), "teacher")
    shards = runtime.configure(attack_shards=attack_shards)
    if shards > 1:
        print(f"speed: training attack in {shards} shards run side by side")
    if args.download:
        from rslad_tf.data import cifar

        cifar.DOWNLOAD = True
    summary = train(config, out_dir, resume=args.resume, runs_dir=args.runs_dir,
                    final_eval=not args.no_final_eval)
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    sys.exit(run_cli(main))
