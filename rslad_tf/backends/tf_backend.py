"""TensorFlow: a gradient tape, `tf.distribute` replicas and the TensorFlow-only speed paths
(compiled eager attacks with optional XLA, attack shards)."""

from __future__ import annotations

import keras
import tensorflow as tf


def input_gradient(fn, x):
    """d fn(x) / dx with a tape that watches ``x`` only (never the model's variables)."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        value = fn(x)
    # A model with no gradient path to its input (stop_gradient, integer casts) gets zero
    # gradients, hence zero steps, instead of a crash; evaluation's sanity check then flags
    # the masking.
    return tape.gradient(value, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def stateless_noise(kind: str, x, seed):
    """"uniform" U(-1, 1) or "normal" N(0, 1) noise of x's shape from an int seed [2] (a
    tensor: the seeds that `tf.distribute` replicas fold their replica id into)."""
    seed = tf.cast(seed, tf.int64)
    if kind == "uniform":
        return tf.random.stateless_uniform(tf.shape(x), seed, minval=-1.0, maxval=1.0)
    return tf.random.stateless_normal(tf.shape(x), seed)


def is_seed_tensor(seed) -> bool:
    return isinstance(seed, (tf.Tensor, tf.Variable))


def executing_eagerly() -> bool:
    return tf.executing_eagerly()


def gpu_visible() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def num_replicas() -> int:
    """Replicas of the current `tf.distribute` strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_seed(seed):
    """``seed`` [2] made distinct per replica (replicas share the generator's state)."""
    seed = tf.cast(seed, tf.int64)
    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:
        seed = seed + tf.cast([0, 1 << 20], tf.int64) * tf.cast(
            replica.replica_id_in_sync_group, tf.int64)
    return seed


_compiled = {}


def compiled(fn, jit_compile: bool):
    """``fn`` as one ``tf.function`` (XLA-compiled with ``jit_compile``), built once."""
    key = (fn, bool(jit_compile))
    if key not in _compiled:
        _compiled[key] = tf.function(fn, reduce_retracing=True, jit_compile=bool(jit_compile))
    return _compiled[key]


def run_in_shards(ascend, args, shards: int):
    """``ascend(*args) -> (x_adv, zeros)`` on ``shards`` contiguous pieces of the batch, each
    its own graph loop so that TensorFlow's inter-op threads run them at the same time."""
    batch = tf.shape(args[0])[0]
    pieces, zeros = [], tf.constant(0.0)
    for lo, hi in shard_bounds(batch, shards):
        def part(t, lo=lo, hi=hi):
            return None if t is None else t[lo:hi]

        piece_args = tuple(part(t) for t in args)
        # An empty piece (batch smaller than the shard count) is left alone: some kernels
        # (oneDNN's BatchNorm) refuse empty batches.
        piece, piece_zeros = tf.cond(hi > lo, lambda a=piece_args: ascend(*a),
                                     lambda a=piece_args: (a[0], tf.constant(0.0)))
        pieces.append(piece)
        zeros = zeros + piece_zeros
    return tf.concat(pieces, axis=0), zeros


def shard_bounds(batch, shards: int):
    """(start, end) of each of `shards` contiguous pieces of a batch of (tensor) size
    `batch`; pieces at the end are empty when the batch is smaller than `shards`."""
    size = (batch + shards - 1) // shards
    return [(tf.minimum(k * size, batch), tf.minimum((k + 1) * size, batch))
            for k in range(shards)]


def train_step(method, data):
    """One step of an `AdversarialMethod`: the attack, then a tape over the loss of the
    student's trainable variables only. Loss and weight decay are scaled so N replicas under
    `tf.distribute` compute the same update as one device."""
    x, y, x_adv, ctx = method.attack_phase(data)
    variables = method.student.trainable_variables
    optimizer = method.optimizer
    loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    if loss_scaling and not optimizer.built:
        optimizer.build(variables)  # its dynamic scale must exist from the first step
    replicas = num_replicas()
    with tf.GradientTape() as tape:
        terms = method.loss_terms(x, x_adv, y, ctx)
        # Gradients are summed over replicas: scale so N devices match one device.
        scaled = terms["loss"] / replicas
        if loss_scaling:  # float16: the optimizer unscales the gradients
            scaled = optimizer.scale_loss(scaled)
    grads = tape.gradient(scaled, variables)
    scale = optimizer.dynamic_scale if loss_scaling else None
    grads = method.with_weight_decay(grads, variables, replicas=replicas, loss_scale=scale)
    optimizer.apply_gradients(zip(grads, variables))
    if method.weight_average is not None:
        method.weight_average.update()
    return method.update_metrics(terms, y)


def cond(pred, true_fn, false_fn):
    return tf.cond(pred, true_fn, false_fn)


def test_step(method, data):
    return method.evaluate_batch(data)
