"""The one PGD engine (L-infinity) that serves training and evaluation.

Projected gradient ascent on a pluggable objective (Madry et al. 2018):

    x_{t+1} = clip_[0,1]( clip_{x +- eps}( x_t + step_size * sign(grad_x L(f(x_t))) ) )

- objective ``loss``: "ce" (cross-entropy on labels), "kl" (KL(target_probs || f(x'))),
  "kl_model" (KL(softmax(g(x')) || f(x')) with a second, frozen model g queried at the same
  point and differentiated too: AdaAD's inner maximisation), "cw" (Carlini-Wagner margin,
  kappa-clipped); each summed over the batch, so each example's step is independent of the
  batch size.
- random start ``start``: "none", "uniform" (U(-eps, eps), Madry / SAT / evaluation) or
  "normal" (0.001 * N(0, 1), TRADES and RSLAD).

The model (and ``target_model``) is always called with ``training=False``: BatchNorm moving
statistics and all weights are untouched, and gradients are taken with respect to the input
only. The loop is
a graph loop (``tf.while_loop``), so the step count is a tensor and never unrolled.

Compilation: called eagerly, ``pgd`` runs a ``tf.function`` of the loop; on a GPU it runs
an XLA-compiled one (``jit_compile``: "auto" = XLA when a GPU is visible; XLA's CPU
convolution gradients were measured 10x slower than plain graphs, so not on CPU).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from rslad_tf import losses
from rslad_tf.common.runtime import resolve_shards

OBJECTIVES = ("ce", "kl", "kl_model", "cw")
STARTS = ("none", "uniform", "normal")
NORMAL_START_STD = 0.001


def _check(loss: str, start: str) -> None:
    if loss not in OBJECTIVES:
        raise ValueError(f"unknown attack loss {loss!r}; choose one of {OBJECTIVES}")
    if start not in STARTS:
        raise ValueError(f"unknown random start {start!r}; choose one of {STARTS}")


def objective(loss: str, logits, labels, target_probs, kappa):
    """The attack objective summed over the batch (to be maximised). logits: [B, K]."""
    logits = tf.cast(logits, tf.float32)  # mixed precision: attack losses in float32
    if loss == "ce":
        return losses.cross_entropy(labels, logits, reduction="sum")
    if loss in ("kl", "kl_model"):  # kl_model: target_probs = softmax(g(x')), see pgd_graph
        return losses.kl_divergence(target_probs, tf.nn.log_softmax(logits, axis=-1),
                                    reduction="sum")
    return tf.reduce_sum(losses.cw_margin(logits, labels, kappa=kappa))


def random_start(x, eps, start: str, seed):
    """Starting point inside the eps ball and [0,1]. ``seed``: int64 tensor of shape [2]."""
    if start == "none":
        return x
    if start == "uniform":
        noise = tf.random.stateless_uniform(tf.shape(x), seed, minval=-1.0, maxval=1.0) * eps
    else:
        noise = tf.random.stateless_normal(tf.shape(x), seed) * NORMAL_START_STD
    # The references clip only after the first step; clipping here as well changes nothing
    # after that step and keeps the invariants true even for steps = 0.
    return tf.clip_by_value(tf.clip_by_value(x + noise, x - eps, x + eps), 0.0, 1.0)


def pgd_graph(model, x, labels=None, target_probs=None, *, eps, step_size, steps,
              loss: str = "ce", start: str = "uniform", seed=None, kappa=50.0,
              objective_scale=1.0, return_zero_fraction: bool = False, shards=None,
              target_model=None):
    """Graph-mode PGD: call inside ``tf.function`` / ``train_step``. Returns x_adv [B,H,W,C].

    ``target_model`` (objective "kl_model" only): the model whose softmax at x' is the KL
    target, recomputed at every step inside the gradient, so the step follows the input
    gradient of both models (AdaAD, Huang et al. 2023, eq. 5). Its weights are not watched.

    ``eps``, ``step_size``, ``steps`` and ``kappa`` may be Python numbers or scalar tensors;
    ``seed`` is an int tensor of shape [2] (stateless RNG; required unless start="none").

    Mixed precision: ``objective_scale`` multiplies the (float32) objective before the
    gradient. The step uses only the sign of the gradient, so a positive scale changes
    nothing in exact arithmetic, but it keeps float16 input gradients from underflowing to
    zero. ``return_zero_fraction=True`` returns ``(x_adv, fraction)``: the fraction of input
    gradient entries that were exactly zero over all steps (a zero gives a zero step).

    ``shards`` (None: the default of `common.runtime.set_shards`): the batch is cut into this
    many contiguous pieces, each ascended by its own graph loop, so that TensorFlow's inter-op
    threads run them at the same time (one CPU core each). For a model in inference mode
    this is the same computation per example: the objective is a sum over examples, so each
    example's gradient depends on that example alone, and the random start is drawn for the
    whole batch first. Kernels may still round differently at another batch size (the
    tests find it bit-identical at batches of 64 and 128, not at every odd size).
    """
    _check(loss, start)
    if (loss == "kl_model") != (target_model is not None):
        raise ValueError("objective 'kl_model' needs target_model (and only it takes one)")
    x = tf.convert_to_tensor(x, tf.float32)
    eps = tf.cast(eps, tf.float32)
    step_size = tf.cast(step_size, tf.float32)
    kappa = tf.cast(kappa, tf.float32)
    if start != "none" and seed is None:
        raise ValueError("a random start needs a seed")
    if seed is not None:
        seed = tf.cast(seed, tf.int64)
    lower = tf.maximum(x - eps, 0.0)
    upper = tf.minimum(x + eps, 1.0)
    steps = tf.cast(steps, tf.int32)
    scaled = not (isinstance(objective_scale, (int, float)) and objective_scale == 1.0)

    def ascend(x_adv, lower, upper, labels, target_probs):
        """`steps` signed-gradient steps from x_adv; returns (x_adv, number of zero
        gradient entries)."""

        def gradient(x_adv):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x_adv)
                target = target_probs
                if target_model is not None:
                    target = tf.nn.softmax(
                        tf.cast(target_model(x_adv, training=False), tf.float32), axis=-1)
                value = objective(loss, model(x_adv, training=False), labels, target, kappa)
                if scaled:
                    value = value * tf.cast(objective_scale, tf.float32)
            # A model with no gradient path to its input (stop_gradient, integer casts)
            # gets zero gradients, hence zero steps, instead of a crash; evaluation's
            # sanity check then flags the masking.
            return tape.gradient(value, x_adv,
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        def step(i, x_adv, zeros):
            grad = gradient(x_adv)
            if return_zero_fraction:
                zeros = zeros + tf.reduce_sum(tf.cast(tf.equal(grad, 0.0), tf.float32))
            x_adv = tf.clip_by_value(x_adv + step_size * tf.sign(grad), lower, upper)
            return i + 1, tf.stop_gradient(x_adv), zeros

        _, x_adv, zeros = tf.while_loop(lambda i, *_: i < steps, step,
                                        (tf.constant(0, tf.int32), x_adv, tf.constant(0.0)))
        return x_adv, zeros

    x_adv = random_start(x, eps, start, seed)
    shards = resolve_shards(shards)
    if shards == 1:
        x_adv, zeros = ascend(x_adv, lower, upper, labels, target_probs)
    else:
        pieces, zeros = [], tf.constant(0.0)
        for lo, hi in _shard_bounds(tf.shape(x)[0], shards):
            def part(t, lo=lo, hi=hi):
                return None if t is None else t[lo:hi]

            args = (part(x_adv), part(lower), part(upper), part(labels), part(target_probs))
            # An empty piece (batch smaller than the shard count) is left alone: some
            # kernels (oneDNN's BatchNorm) refuse empty batches.
            piece, piece_zeros = tf.cond(hi > lo, lambda args=args: ascend(*args),
                                         lambda args=args: (args[0], tf.constant(0.0)))
            pieces.append(piece)
            zeros = zeros + piece_zeros
        x_adv = tf.concat(pieces, axis=0)
    if not return_zero_fraction:
        return x_adv
    total = tf.cast(steps, tf.float32) * tf.cast(tf.size(x_adv), tf.float32)
    return x_adv, tf.math.divide_no_nan(zeros, total)


def _shard_bounds(batch, shards: int):
    """(start, end) of each of `shards` contiguous pieces of a batch of (tensor) size
    `batch`; pieces at the end are empty when the batch is smaller than `shards`."""
    size = (batch + shards - 1) // shards
    return [(tf.minimum(k * size, batch), tf.minimum((k + 1) * size, batch))
            for k in range(shards)]


_compiled = tf.function(pgd_graph, reduce_retracing=True)
# The same loop compiled by XLA (one fused program per batch shape); used on GPUs.
_compiled_xla = tf.function(pgd_graph, reduce_retracing=True, jit_compile=True)

JIT_CHOICES = ("auto", True, False)
_jit_default = "auto"


def set_jit_compile(value) -> None:
    """Process-wide default of ``pgd(..., jit_compile=None)``: "auto", True or False."""
    global _jit_default
    if value not in JIT_CHOICES:
        raise ValueError(f"jit_compile must be one of {JIT_CHOICES}, got {value!r}")
    _jit_default = value


def resolve_jit_compile(value=None) -> bool:
    """XLA or not for an eager ``pgd`` call: "auto" means XLA when a GPU is visible."""
    value = _jit_default if value is None else value
    if value not in JIT_CHOICES:
        raise ValueError(f"jit_compile must be one of {JIT_CHOICES}, got {value!r}")
    if value == "auto":
        return bool(tf.config.list_logical_devices("GPU"))
    return bool(value)


def resolve_seed(seed):
    """An int tensor [2] for the stateless RNG from an int, a keras SeedGenerator or None."""
    if isinstance(seed, keras.random.SeedGenerator):
        return tf.cast(seed.next(), tf.int64)
    if seed is None:
        seed = int(tf.random.uniform([], 0, 2**31 - 1, dtype=tf.int64))
    return tf.constant([int(seed), 0], tf.int64)


def pgd(model, x, y=None, *, eps, steps=10, step_size=None, loss="ce", start="uniform",
        target_probs=None, seed=None, kappa=50.0, jit_compile=None, shards=None):
    """L-infinity PGD (Madry et al. 2018) with a pluggable objective and random start.

    Threat model: ``||x_adv - x||_inf <= eps``, x_adv in [0,1]. Defaults: 10 steps of
    ``step_size = eps / 4`` (2/255 at eps = 8/255), CE objective, uniform start.
    ``y``: int labels [B] (objectives "ce" and "cw"); ``target_probs``: [B, K] (objective
    "kl"). ``seed``: int, keras ``SeedGenerator`` or None. Compiled with ``tf.function`` when
    called eagerly (with XLA if ``jit_compile`` resolves to True: None takes the process
    default of `set_jit_compile`, "auto" = XLA on GPU only); inlined when called inside a
    graph (e.g. a ``train_step``). ``shards``: see `pgd_graph` (None: the process default).
    """
    _check(loss, start)
    if step_size is None:
        step_size = eps / 4.0
    if loss in ("ce", "cw") and y is None:
        raise ValueError(f"attack loss {loss!r} needs labels y")
    if loss == "kl" and target_probs is None:
        raise ValueError("attack loss 'kl' needs target_probs")
    if tf.executing_eagerly():
        seed_t = resolve_seed(seed) if start != "none" else None
        compiled = _compiled_xla if resolve_jit_compile(jit_compile) else _compiled
        target = (None if target_probs is None
                  else tf.convert_to_tensor(target_probs, tf.float32))
        return compiled(model, tf.convert_to_tensor(x, tf.float32),
                        None if y is None else tf.convert_to_tensor(y), target,
                        eps=tf.constant(eps, tf.float32),
                        step_size=tf.constant(step_size, tf.float32),
                        steps=tf.constant(steps, tf.int32), loss=loss, start=start, seed=seed_t,
                        kappa=tf.constant(kappa, tf.float32), shards=resolve_shards(shards))
    seed_t = None
    if start != "none":
        if isinstance(seed, keras.random.SeedGenerator):
            seed_t = tf.cast(seed.next(), tf.int64)
        elif seed is None:
            raise ValueError("inside a graph, pass seed= a keras.random.SeedGenerator or an int")
        else:
            seed_t = tf.constant([int(seed), 0], tf.int64)
    return pgd_graph(model, x, y, target_probs, eps=eps, step_size=step_size, steps=steps,
                     loss=loss, start=start, seed=seed_t, kappa=kappa, shards=shards)


def fgsm(model, x, y, *, eps):
    """FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps on CE, no random
    start. The one-step case of ``pgd``."""
    return pgd(model, x, y, eps=eps, steps=1, step_size=eps, loss="ce", start="none")


def cw_inf(model, x, y, *, eps, steps=20, step_size=None, kappa=50.0, seed=None):
    """CW_inf: PGD on the Carlini-Wagner margin loss (Carlini & Wagner 2017) under the
    L-infinity threat model, as in the TRADES/RSLAD evaluations: 20 steps of eps/4
    (2/255 at 8/255), uniform random start, kappa = 50."""
    return pgd(model, x, y, eps=eps, steps=steps, step_size=step_size, loss="cw",
               start="uniform", seed=seed, kappa=kappa)
