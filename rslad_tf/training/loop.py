"""One training run: `train` sets up the data, the student and its method, then `fit`s
it epoch by epoch with the callbacks of `rslad_tf.training.callbacks` (schedule, guard,
selection, record). The run directory is `rslad_tf.training.run_dir`; the fast paths
and mixed precision are `rslad_tf.training.fast_paths`; the command line is
`rslad_tf.training.cli` (``python -m rslad_tf.train``).

One loop for every Keras backend (docs/backends.md): on TensorFlow it feeds `fit` from
tf.data, under a `tf.distribute` strategy, with TensorBoard logs and the exact fast paths;
on JAX and torch from numpy batches (`fast_paths.epoch_batches`), on one device, and
TensorFlow is never imported. The callbacks, the run directory and its files are the
same on every backend."""

from __future__ import annotations

import contextlib
import os

from rslad_tf import backends
from rslad_tf.common import onednn
from rslad_tf.common.errors import UserError
from rslad_tf.config import presets
from rslad_tf.training import run_dir
from rslad_tf.training.fast_paths import (create_student, default_strategy, epoch_batches,
                                          setup_fast_paths)
from rslad_tf.training.schedule import steps_per_epoch


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
    if config.runtime.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    method.compile(optimizer=optimizer, jit_compile=config.runtime.jit_compile)
    method.build((None,) + tuple(data_spec.image_shape))
    method.optimizer.build(student.trainable_variables)
    return method


def setup_weight_average(config: presets.TrainConfig, method, *, log=print):
    """Attach an EMA of the student's weights when ``config.ema_decay`` is set (one device
    only; see `rslad_tf.methods.ema` for how BatchNorm statistics are averaged)."""
    if config.ema_decay is None:
        return None
    from rslad_tf.methods.ema import WeightAverage

    if method.distribute_strategy.num_replicas_in_sync > 1:
        raise UserError("ema_decay (the weight average) works on one device only")
    average = WeightAverage(method.student, config.ema_decay)
    method.attach_weight_average(average)
    log(f"weight average: EMA of the student's weights, decay {config.ema_decay:g} "
        "(BatchNorm statistics averaged too), checkpoints/ema_{best,last}.keras")
    return average


def train(config: presets.TrainConfig, out_dir: str, **kwargs) -> dict:
    """Train ``config`` into ``out_dir`` (see `_train` for the arguments); returns a summary.

    TensorFlow's deterministic-ops switch is process-wide: a deterministic run turns it on
    and this wrapper turns it off again, so later work in the process (e.g. XLA kernels that
    have no deterministic version) is unaffected.

    On JAX and torch the run keeps TensorFlow out of the process
    (`rslad_tf.backends.tensorflow_kept_out`).
    """
    if not backends.is_tensorflow():
        with backends.tensorflow_kept_out():
            return _train(config, out_dir, **kwargs)
    from tensorflow.python.framework import config as tf_config

    was_deterministic = tf_config.is_op_determinism_enabled()
    try:
        return _train(config, out_dir, **kwargs)
    finally:
        if not was_deterministic and tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()


def _check_other_backend(config: presets.TrainConfig, out_dir: str, final_eval: bool,
                         strategy, log) -> bool:
    """The options a JAX or torch run cannot honour: a `UserError` for those whose absence
    would change what the run produces (the weight average, a `tf.distribute` strategy),
    one line for those it does without (deterministic ops, TensorBoard logs, the final
    evaluation suite, which is skipped: returns whether to run it, False)."""
    backend = backends.name()
    if config.ema_decay is not None:
        raise UserError(f"ema_decay (the weight average) is TensorFlow-only; the {backend} "
                        "backend cannot train it: drop ema_decay or use --backend tensorflow")
    if strategy is not None:
        raise UserError(f"a tf.distribute strategy is TensorFlow-only; the {backend} backend "
                        "trains on one device")
    if config.runtime.deterministic:
        log(f"--deterministic is TensorFlow's switch; the {backend} backend runs without it")
    log(f"backend {backend}: numpy batches, one device; TensorBoard logs are "
        "TensorFlow-only (history.csv has every epoch)")
    if final_eval:
        best = os.path.join(run_dir.checkpoint_dir(out_dir), "best.keras")
        log(f"final evaluation: the evaluation suite (native AutoAttack) runs on TensorFlow; "
            f"skipped under {backend}: afterwards run `python -m rslad_tf.evaluate {best}` "
            "(TensorFlow backend)")
    return False


def _train(config: presets.TrainConfig, out_dir: str, *, resume: bool = False,
           runs_dir: str = run_dir.DEFAULT_RUNS_DIR, teacher=None, final_eval: bool = False,
           select: bool = True, download: bool = False, strategy=None, log=print) -> dict:
    """Train ``config`` into ``out_dir``; returns a summary dict (best/last accuracies).

    ``resume``: continue the run in ``out_dir`` from its saved configuration (only a new
    ``epochs`` budget is taken from ``config``) and state.
    ``teacher``: an already loaded teacher model (otherwise found from the config).
    ``final_eval``: run the full evaluation suite on best and last at the end.
    ``select``: run the checkpoint selection (clean and PGD-20 accuracy on the selection
    epochs, best.keras); False for a caller that keeps only last.keras and measures it
    itself (the pipeline with ``checkpoint`` last): no best checkpoint, no accuracies in
    history.csv, and the summary's accuracies are None.
    ``download``: let the dataset loader fetch missing files (CIFAR through TFDS).
    ``strategy``: a `tf.distribute` strategy (default: all local GPUs, see `default_strategy`;
    TensorFlow only).
    """
    import keras

    from rslad_tf.config.overrides import describe
    from rslad_tf.data import load_numpy, spec, split_validation
    from rslad_tf.training import callbacks

    config.validate()
    if final_eval and not select:
        raise ValueError("the final evaluation reads best.keras: it needs the selection")
    run_dir.prepare_out_dir(out_dir, resume)
    if resume:
        # Only the epoch budget may change on resume (e.g. to extend a run).
        config = run_dir.read_config(out_dir).replace(epochs=config.epochs)
    tensorflow = backends.is_tensorflow()
    if not tensorflow:
        final_eval = _check_other_backend(config, out_dir, final_eval, strategy, log)
    # Find the teacher before any slow work, so a missing one fails fast.
    teacher_path = (run_dir.find_teacher(config, runs_dir)
                    if config.needs_teacher and teacher is None else None)
    data_spec = spec(config.dataset)
    data_dir = config.runtime.data_dir
    x_train, y_train = load_numpy(config.dataset, "train", data_dir, download=download)
    if config.validation_fraction:
        x_train, y_train, x_test, y_test = split_validation(
            x_train, y_train, config.validation_fraction)
        log(f"validation split: {len(x_train)} training images, {len(x_test)} held out "
            "for the selection and the per-epoch accuracies (the test set is not read)")
    else:
        x_test, y_test = load_numpy(config.dataset, "test", data_dir, download=download)
    if config.eval_n_examples:
        x_test, y_test = x_test[:config.eval_n_examples], y_test[:config.eval_n_examples]

    if config.runtime.deterministic and tensorflow:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    strategy = strategy or default_strategy()
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if teacher_path is not None:
            teacher = load_teacher(teacher_path, data_spec)
            config = config.replace(teacher_path=os.path.abspath(teacher_path))
        keras.utils.set_random_seed(config.seed)
        student = create_student(config)
        onednn.check_tensorflow_training(student)
        method = build_method(config, student, teacher)
    fast = setup_fast_paths(config, method, x_train, y_train,
                            num_replicas=strategy.num_replicas_in_sync if strategy else 1,
                            log=log)
    ckpt_dir = run_dir.checkpoint_dir(out_dir)
    state = run_dir.ResumableState(os.path.join(ckpt_dir, run_dir.STATE_FILE), method)
    average = setup_weight_average(config, method, log=log)
    ema_model = create_student(config, float32=True) if average is not None else None
    start_epoch, start_step = 0, 0
    if resume:
        history = run_dir.read_history(os.path.join(out_dir, run_dir.HISTORY_FILE))
        if os.path.exists(state.path):
            start_epoch, start_step = state.load()
        history = [row for row in history if int(row["epoch"]) < start_epoch]
    else:
        os.makedirs(ckpt_dir, exist_ok=True)
        run_dir.write_config(out_dir, config)
        history = []

    steps = steps_per_epoch(config, len(x_train))
    log(f"[{config.preset}] {config.method} on {config.dataset}: {config.model}, "
        f"{config.epochs} epochs x {steps} steps, batch {config.batch_size}, "
        f"eps {config.epsilon:.4g} -> {out_dir}")
    log(describe(config))
    if config.runtime.mixed_precision != "off" or config.runtime.jit_compile != "auto":
        log(f"speed: mixed precision {config.runtime.mixed_precision}, jit_compile "
            f"{method.jit_compile}")

    # Checkpoints and evaluation are float32: a mixed precision student is copied into a
    # float32 model of the same architecture before each evaluation and save.
    student_f32 = callbacks.Float32Student(config, student)
    eval_writer = None
    if tensorflow:  # TensorBoard's writers are TensorFlow's
        import tensorflow as tf

        eval_writer = tf.summary.create_file_writer(os.path.join(out_dir, "tensorboard",
                                                                 "eval"))
    refresh = callbacks.CheckpointRefresh(config)
    selection = callbacks.PGD20Selection(config, student_f32, x_test, y_test, state,
                                         ckpt_dir=ckpt_dir, eval_writer=eval_writer,
                                         average=average, ema_model=ema_model,
                                         refresh=refresh, enabled=select)
    epoch_callbacks = [
        keras.callbacks.TensorBoard(log_dir=os.path.join(out_dir, "tensorboard")),
    ] if tensorflow else []
    epoch_callbacks += [
        callbacks.StepSchedule(config),
        callbacks.StepGuard(state, config.runtime.save_every_steps,
                            resume_at=(start_epoch, start_step)),
        student_f32,
        selection,
        callbacks.EpochRecord(config, student_f32, selection, state, out_dir=out_dir,
                              history=history, teacher_cache=fast["teacher_cache"],
                              refresh=refresh, log=log),
    ]
    for epoch in range(start_epoch, config.epochs):
        # One `fit` per epoch: each epoch has its own seeded data order, and an epoch
        # resumed mid-way skips the batches it already trained on.
        first_step = start_step if epoch == start_epoch else 0
        batches = epoch_batches(config, fast, x_train, y_train, epoch, steps=steps,
                                first_step=first_step)
        method.fit(batches, epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                   callbacks=epoch_callbacks)

    summary = {"out_dir": out_dir, "preset": config.preset, "method": config.method,
               "backend": backends.name(),
               "experiment_id": config.experiment_id(),
               "best_epoch": state.best[1] + 1, "best_pgd20_acc": state.best[0],
               "last_clean_acc": run_dir.last_value(history, "clean_acc"),
               "last_pgd20_acc": run_dir.last_value(history, "pgd20_acc")}
    if state.best == run_dir.NO_BEST:
        summary.update(best_epoch=None, best_pgd20_acc=None)
    if average is not None:
        summary.update(ema_best_epoch=state.ema_best[1] + 1,
                       ema_best_pgd20_acc=state.ema_best[0],
                       ema_last_pgd20_acc=run_dir.last_value(history, "ema_pgd20_acc"))
    if final_eval and config.validation_fraction:
        log("validation run: the final evaluation on the test set is skipped (the "
            "selection accuracies in history.csv are the validation results)")
    elif final_eval:
        from rslad_tf.evaluation import suite

        summary["final_eval"] = suite.evaluate_run(out_dir, log=log)
    return summary
