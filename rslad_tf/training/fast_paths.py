"""How a run executes without changing what it computes: the distribution strategy, the
mixed precision policy (and the float32 copy that evaluation and checkpoints use), and the
exact fast paths of `RuntimeOptions` (device-resident data, the teacher soft-label cache,
the BatchNorm-folded training attack). docs/speed.md describes each.

On the JAX and torch backends (docs/backends.md) there is no strategy (one device), the
exact fast paths are TensorFlow paths that the run does without, saying so in one line,
and the batches are numpy arrays (`epoch_batches`)."""

from __future__ import annotations

import contextlib

from rslad_tf.common.errors import UserError
from rslad_tf.config import presets

# `RuntimeOptions.mixed_precision` -> the Keras dtype policy the student is built under.
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
    policy = "float32" if float32 else MIXED_POLICIES.get(config.runtime.mixed_precision)
    with dtype_policy(policy):
        return models.create(config.model, data_spec.num_classes,
                             input_shape=data_spec.image_shape, **config.model_kwargs)


def float32_copy(config: presets.TrainConfig, student, into=None):
    """``student``'s weights in a float32 model (checkpoints and evaluation are float32).
    ``into``: a float32 model from an earlier call, refreshed in place."""
    copy = into if into is not None else create_student(config, float32=True)
    copy.set_weights(student.get_weights())
    return copy


def default_strategy():
    """`MirroredStrategy` over all local GPUs when there are several, else the default;
    None on the other backends (one device, no `tf.distribute`).

    The global batch size stays the preset's; each method scales its loss by the number of
    replicas, so N devices compute the update of one device."""
    from rslad_tf import backends

    if not backends.is_tensorflow():
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def setup_fast_paths(config: presets.TrainConfig, method, x_train, y_train, *,
                     num_replicas: int = 1, log=print) -> dict:
    """Attach the config's exact fast paths to ``method``: the training set on the device
    (``device_data``), the teacher soft-label cache (``teacher_cache``) and the folded
    attack (``fold_attack_bn``). Returns what is on: {"device_data": DeviceData or None,
    "teacher_cache": SoftLabelCache or None, "folded": bool}."""
    from rslad_tf import backends

    options = config.runtime
    out = {"device_data": None, "teacher_cache": None, "folded": False}
    if not backends.is_tensorflow():
        _say_tensorflow_only(options, backends.name(), log)
        return out
    from rslad_tf.data import device_data as dd
    from rslad_tf.data import spec
    from rslad_tf.methods.soft_label_cache import SoftLabelCache, cache_bytes, num_variants

    if options.device_data != "off":
        if num_replicas > 1:
            if options.device_data == "on":
                raise UserError("--device-data on works on one device only")
        elif options.device_data == "on" or dd.fits(x_train, y_train):
            out["device_data"] = dd.DeviceData(x_train, y_train)
            method.attach_device_data(out["device_data"])
            log(out["device_data"].describe())
        else:
            log(f"device-resident data: {dd.data_bytes(x_train, y_train) / 2**20:.0f} MiB does "
                f"not fit the budget ({dd.default_max_bytes() / 2**20:.0f} MiB): tf.data path")
    if options.teacher_cache:
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
    if options.fold_attack_bn:
        out["folded"] = method.set_attack_batchnorm_folding(True)
        log("training attack: BatchNorm folded into convolutions" if out["folded"] else
            "training attack: nothing to fold (BatchNorm in training mode or no conv+BN)")
    return out


def _say_tensorflow_only(options: presets.RuntimeOptions, backend: str, log) -> None:
    """One line per exact fast path asked for on a backend that has it not (each changes
    how fast a run goes, never what it computes, so the run goes on without it)."""
    asked = [what for what, on in (
        ("device-resident data (--device-data on)", options.device_data == "on"),
        ("the teacher soft-label cache (--teacher-cache)", options.teacher_cache),
        ("BatchNorm folding of the training attack (--fold-attack-bn)",
         options.fold_attack_bn)) if on]
    for what in asked:
        log(f"speed: {what} is TensorFlow-only; the {backend} backend trains without it "
            "(same results)")


def epoch_batches(config: presets.TrainConfig, fast: dict, x_train, y_train, epoch: int, *,
                  steps: int, first_step: int = 0):
    """What `fit` trains on in ``epoch``: its batches ``first_step`` to ``steps``. On
    TensorFlow the `training_dataset` pipeline; on JAX and torch numpy batches
    (`rslad_tf.data.numpy_batches`) in an order seeded the same way per epoch."""
    from rslad_tf import backends

    if backends.is_tensorflow():
        return training_dataset(config, fast, x_train, y_train, epoch).take(steps).skip(
            first_step)
    from rslad_tf.data import numpy_batches

    return numpy_batches(x_train, y_train, config.batch_size, seed=epoch_seed(config, epoch),
                         start=first_step, stop=steps)


def epoch_seed(config: presets.TrainConfig, epoch: int) -> int:
    """The data order's seed of ``epoch``: one per epoch, so a resumed run sees the same
    order."""
    return config.seed * 100003 + epoch


def training_dataset(config: presets.TrainConfig, fast: dict, x_train, y_train, epoch: int):
    """One epoch's batches: indices (device data), or images with or without indices.

    One seeded order per epoch, so a resumed run sees the same data order (the
    device-resident and indexed paths give the same order: `rslad_tf.data.device_data`)."""
    from rslad_tf.data import make_dataset
    from rslad_tf.data.device_data import indexed_dataset

    seed = epoch_seed(config, epoch)
    if fast.get("device_data") is not None:
        return fast["device_data"].index_dataset(config.batch_size, shuffle=True, seed=seed)
    if fast.get("teacher_cache") is not None:
        return indexed_dataset(x_train, y_train, config.batch_size, shuffle=True, seed=seed)
    return make_dataset(x_train, y_train, config.batch_size, shuffle=True, seed=seed)
