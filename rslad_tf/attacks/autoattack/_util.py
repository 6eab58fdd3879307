"""Helpers shared by the native AutoAttack attacks: compilation, batching, seeds, margins.

Every attack is a graph function ``f(model, x, y, ...)`` whose work is independent per
example (inference mode, losses summed over the batch), compiled once per model with
``tf.function``. Plain graphs take any batch size (one trace); under XLA the batch is
padded to a power of two (copies of the last example, dropped afterwards), so that only
a handful of programs are compiled.
"""

from __future__ import annotations

import hashlib
import weakref

import numpy as np
import tensorflow as tf

from rslad_tf.attacks.engine import resolve_jit_compile


class Compiled:
    """One graph function, compiled per model: a plain graph traced once for any batch
    size (the batch dimension is left unknown), or an XLA program per padded batch size."""

    def __init__(self, fn):
        self.fn = fn
        self._cache = weakref.WeakKeyDictionary()  # model -> {key: tf.function}

    def _function(self, model, jit: bool, args, n_batch: int, static):
        per_model = self._cache.setdefault(model, {})
        key = (jit, tuple(sorted(static.items())),
               tuple((tuple(a.shape[1:]) if i < n_batch else tuple(a.shape), a.dtype)
                     for i, a in enumerate(args)))
        if key not in per_model:
            # A weak reference: the cache must not keep the model (its key) alive.
            model_ref = weakref.ref(model)

            def call(*tensors):
                return self.fn(model_ref(), *tensors, **static)

            if jit:
                per_model[key] = tf.function(call, jit_compile=True, autograph=False)
            else:
                signature = [tf.TensorSpec([None, *a.shape[1:]] if i < n_batch
                                           else a.shape, a.dtype)
                             for i, a in enumerate(args)]
                per_model[key] = tf.function(call, input_signature=signature, autograph=False)
        return per_model[key]

    def __call__(self, jit: bool, model, batch_args, other_args, **static):
        """``batch_args``: arrays whose first axis is the batch; ``other_args``: the rest
        (scalars, seeds). Returns the function's outputs, each cut back to the batch."""
        batch_args = [tf.convert_to_tensor(a) for a in batch_args]
        other_args = [tf.convert_to_tensor(a) for a in other_args]
        n = int(batch_args[0].shape[0])
        if jit:
            size = bucket(n)
            batch_args = [pad_batch(a, size) for a in batch_args]
        args = batch_args + other_args
        out = self._function(model, jit, args, len(batch_args), static)(*args)
        if not jit:
            return out
        if isinstance(out, (tuple, list)):
            return type(out)(o[:n] for o in out)
        return out[:n]


def bucket(n: int) -> int:
    """The padded batch size used under XLA: the next power of two (at least 8)."""
    size = 8
    while size < n:
        size *= 2
    return size


def pad_batch(a, size: int):
    a = tf.convert_to_tensor(a)
    n = int(a.shape[0])
    if n == size:
        return a
    reps = tf.repeat(a[-1:], size - n, axis=0)
    return tf.concat([a, reps], axis=0)


def use_xla(jit_compile) -> bool:
    """``jit_compile``: "auto" (XLA when a GPU is visible), True or False."""
    return resolve_jit_compile("auto" if jit_compile is None else jit_compile)


def seed_tensor(seed: int, *stream: int):
    """A stateless-RNG seed [2] for one attack call: the user's seed and a stream number
    (attack, batch, target class, restart folded together)."""
    key = 0
    for part in stream:
        key = (key * 1_000_003 + int(part) + 1) % (2**31 - 1)
    return tf.constant([int(seed) % (2**63 - 1), key], tf.int64)


def per_example(v, rank: int):
    """Reshape a [B] vector to broadcast against [B, ...] of the given rank."""
    return tf.reshape(v, [-1] + [1] * (rank - 1))


def margin(logits, y):
    """z_y - max_{j != y} z_j, per example (negative when misclassified)."""
    k = tf.shape(logits)[-1]
    true = tf.gather(logits, y, batch_dims=1)
    others = tf.where(tf.one_hot(y, k, on_value=True, off_value=False),
                      tf.constant(-np.inf, logits.dtype), logits)
    return true - tf.reduce_max(others, axis=-1)


class FrozenInference:
    """The model in inference mode with its weights folded into the graph as constants.

    Inside the attacks' loops the same weights are used thousands of times; as constants,
    TensorFlow's graph optimiser precomputes what depends on them only (e.g. BatchNorm's
    scale and shift) and fuses more: on CPU a forward pass was about 25% faster. The result
    equals the model's up to float rounding (measured: 2e-6 on digits logits); the native
    AutoAttack's verdicts are taken from the model itself on the returned points. Built
    once per model and weights (a fingerprint of the weights is checked on every use), so
    a model that is trained further gets a fresh copy."""

    def __init__(self, function):
        self._function = function

    def __call__(self, x, training=False):
        del training  # inference mode only, fixed when the graph was frozen
        out = self._function(x)
        return out[0] if isinstance(out, (list, tuple)) else out


# Models above this many parameters are attacked as they are: folding hundreds of
# megabytes of constants into a graph costs more than it saves.
FREEZE_MAX_PARAMS = 20_000_000
_frozen = weakref.WeakKeyDictionary()  # model -> (fingerprint, FrozenInference)


def _fingerprint(model) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for v in model.variables:
        digest.update(np.ascontiguousarray(np.asarray(v)).tobytes())
    return digest.hexdigest()


def inference_view(model, jit: bool):
    """What the attack graphs call: a `FrozenInference` of the model for plain CPU/GPU
    graphs, the model itself under XLA (which treats the weights as constants anyway), for
    large models, or when the model cannot be frozen (e.g. an exported artifact,
    `rslad_tf.interop.artifacts.ArtifactModel`, which has no variables to fold)."""
    if jit or not hasattr(model, "count_params") or model.count_params() > FREEZE_MAX_PARAMS:
        return model
    try:
        fingerprint = _fingerprint(model)
        cached = _frozen.get(model)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2)

        shape = [None, *model.inputs[0].shape[1:]]
        concrete = tf.function(lambda z: model(z, training=False)).get_concrete_function(
            tf.TensorSpec(shape, tf.float32))
        view = FrozenInference(convert_variables_to_constants_v2(concrete))
    except Exception:  # noqa: BLE001 - a model we cannot freeze is attacked as it is
        return model
    _frozen[model] = (fingerprint, view)
    return view


def logits_fn(model, x):
    return tf.cast(model(x, training=False), tf.float32)


def _predict_graph(model, x):
    return logits_fn(model, x)


_predict = Compiled(_predict_graph)


def predict_logits(model, x, *, batch_size: int, jit: bool = False) -> np.ndarray:
    """Logits of ``model`` (inference mode, float32) in batches. [N, K] numpy."""
    out = []
    for start in range(0, len(x), batch_size):
        chunk = tf.convert_to_tensor(x[start:start + batch_size], tf.float32)
        out.append(np.asarray(_predict(jit, model, [chunk], [])))
    if not out:
        return np.zeros([0, 0], np.float32)
    return np.concatenate(out)


def target_classes(logits: np.ndarray, rank: int) -> np.ndarray:
    """The class with the ``rank``-th largest logit (rank 2 = runner-up), per example.

    Ties are broken towards the higher class index, as an ascending stable sort read
    from the end does."""
    order = np.argsort(logits, axis=1, kind="stable")
    return order[:, -rank].astype(np.int32)


def attack_still_robust(x_adv: np.ndarray, robust: np.ndarray, run) -> bool:
    """One run of an attack on the examples still robust: ``run(idx)`` attacks ``x[idx]``
    and returns (adversarial points [len(idx), ...], broken [len(idx)] bool); the broken
    ones are recorded in ``x_adv`` and ``robust`` (in place). Returns False, running
    nothing, when no example is left (the restart and target loops then stop)."""
    idx = np.flatnonzero(robust)
    if len(idx) == 0:
        return False
    adv, broken = run(idx)
    x_adv[idx[broken]] = adv[broken]
    robust[idx[broken]] = False
    return True
