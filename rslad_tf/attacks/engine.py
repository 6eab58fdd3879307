"""The one PGD engine (L-infinity) that serves training and evaluation.

Projected gradient ascent on a pluggable objective (Madry et al. 2018):

    x_{t+1} = clip_[0,1]( clip_{x +- eps}( x_t + step_size * sign(grad_x L(f(x_t))) ) )

- objective ``loss``: "ce" (cross-entropy on labels), "kl" (KL(target_probs || f(x'))),
  "kl_model" (KL(softmax(g(x')) || f(x')) with a second, frozen model g queried at the same
  point and differentiated too: AdaAD's inner maximisation), "cw" (Carlini-Wagner margin,
  kappa-clipped); each summed over the batch, so each example's step is independent of the
  batch size.
- random start ``start``: "none", "uniform" (U(-eps, eps), Madry / SAT / evaluation) or
  "normal" (0.001 * N(0, 1), TRADES and RSLAD); ``clip_start``: whether x + noise is clipped
  to [0, 1] (and the eps ball) before the first gradient, as Madry's code and RSLAD's
  evaluation PGD do (the default), or only after the first step, as the ARD, IAD, TRADES,
  RSLAD and AdaAD training attacks do (``clip_start=False``; see `random_start`).

The model (and ``target_model``) is always called with ``training=False``: BatchNorm moving
statistics and all weights are untouched, and gradients are taken with respect to the input
only. The loop is written in ``keras.ops`` (``fori_loop``: a graph loop on TensorFlow,
``lax.fori_loop`` on JAX, a Python loop on torch) and runs on every Keras backend; the one
per-backend piece is the input gradient (`rslad_tf.backends.input_gradient`).

Compilation (TensorFlow): called eagerly, ``pgd`` runs a ``tf.function`` of the loop; on a
GPU it runs an XLA-compiled one (``jit_compile``: "auto" = XLA when a GPU is visible; XLA's
CPU convolution gradients were measured 10x slower than plain graphs, so not on CPU). Attack
shards are a TensorFlow path too; JAX and torch run the plain loop (and say so when shards
or XLA were asked for).
"""

from __future__ import annotations

import keras
from keras import ops

from rslad_tf import backends, losses
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
    logits = ops.cast(logits, "float32")  # mixed precision: attack losses in float32
    if loss == "ce":
        return losses.cross_entropy(labels, logits, reduction="sum")
    if loss in ("kl", "kl_model"):  # kl_model: target_probs = softmax(g(x')), see pgd_graph
        return losses.kl_divergence(target_probs, ops.log_softmax(logits, axis=-1),
                                    reduction="sum")
    return ops.sum(losses.cw_margin(logits, labels, kappa=kappa))


def _noise(kind: str, x, seed):
    """U(-1, 1) ("uniform") or N(0, 1) ("normal") noise of x's shape. ``seed``: a keras
    `SeedGenerator` or an int (any backend), or an int tensor [2] (TensorFlow)."""
    if backends.is_tensorflow():
        # TensorFlow draws from a stateless seed tensor, which `tf.distribute` replicas
        # make distinct (`AdversarialMethod.next_seed`); a generator or an int gives one.
        if isinstance(seed, keras.random.SeedGenerator):
            seed = seed.next()
        elif isinstance(seed, int):
            seed = [seed, 0]
        return backends.current().stateless_noise(kind, x, seed)
    if kind == "uniform":
        return keras.random.uniform(ops.shape(x), minval=-1.0, maxval=1.0, seed=seed)
    return keras.random.normal(ops.shape(x), seed=seed)


def random_start(x, eps, start: str, seed, clip: bool = True):
    """The attack's starting point x + noise. ``seed``: see `_noise`.

    ``clip=True``: clipped into the eps ball and [0, 1], as Madry's code and RSLAD's
    evaluation PGD (``attack_pgd``) start. ``clip=False``: x + noise as drawn, as the
    training attacks of ARD, IAD, TRADES, RSLAD and AdaAD start: their first gradient is
    taken there and the point is clipped only after the first step. The two differ where x
    sits at 0 or 1: a pixel at 0 with noise -0.15 and a +0.05 step ends at 0 unclipped and
    at 0.05 clipped (and the first gradient is taken at another point), so the whole path
    can differ (docs/parity.md)."""
    if start == "none":
        return x
    if start == "uniform":
        noise = _noise("uniform", x, seed) * eps
    else:
        noise = _noise("normal", x, seed) * NORMAL_START_STD
    if not clip:
        return x + noise
    return ops.clip(ops.clip(x + noise, x - eps, x + eps), 0.0, 1.0)


def pgd_graph(model, x, labels=None, target_probs=None, *, eps, step_size, steps,
              loss: str = "ce", start: str = "uniform", seed=None, kappa=50.0,
              objective_scale=1.0, return_zero_fraction: bool = False, shards=None,
              target_model=None, stateful_model: bool = False, clip_start: bool = True):
    """PGD inside a compiled step (``tf.function`` / ``train_step`` on any backend).
    Returns x_adv [B,H,W,C], inside the eps ball and [0, 1].

    ``clip_start``: clip the random start before the first gradient (True) or only after
    the first step (False, the distillation and TRADES training attacks); see
    `random_start`.

    ``target_model`` (objective "kl_model" only): the model whose softmax at x' is the KL
    target, recomputed at every step inside the gradient, so the step follows the input
    gradient of both models (AdaAD, Huang et al. 2023, eq. 5). Its weights are not watched.

    ``eps``, ``step_size`` and ``kappa`` may be Python numbers or scalar tensors; ``steps``
    too on TensorFlow (a Python int on torch, whose loop is a Python loop). ``seed``: a keras
    `SeedGenerator` (any backend), an int, or on TensorFlow an int tensor of shape [2]
    (stateless RNG); required unless start="none".

    Mixed precision: ``objective_scale`` multiplies the (float32) objective before the
    gradient. The step uses only the sign of the gradient, so a positive scale changes
    nothing in exact arithmetic, but it keeps float16 input gradients from underflowing to
    zero. ``return_zero_fraction=True`` returns ``(x_adv, fraction)``: the fraction of input
    gradient entries that were exactly zero over all steps (a zero gives a zero step).

    ``shards`` (TensorFlow; None: the default of `common.runtime.set_shards`): the batch is
    cut into this many contiguous pieces, each ascended by its own graph loop, so that
    TensorFlow's inter-op threads run them at the same time (one CPU core each). For a model
    in inference mode this is the same computation per example: the objective is a sum over
    examples, so each example's gradient depends on that example alone, and the random start
    is drawn for the whole batch first. Kernels may still round differently at another batch
    size (the tests find it bit-identical at batches of 64 and 128, not at every odd size).
    Other backends run one piece.

    ``stateful_model``: the model assigns variables when called (BatchNorm in training mode,
    the ARD/IAD references' attack). TensorFlow's graph loop and torch's Python loop take
    that as it is; a JAX loop body may not assign, so JAX then unrolls the loop.
    """
    _check(loss, start)
    if (loss == "kl_model") != (target_model is not None):
        raise ValueError("objective 'kl_model' needs target_model (and only it takes one)")
    if start != "none" and seed is None:
        raise ValueError("a random start needs a seed")
    on_tf = backends.is_tensorflow()
    x = ops.convert_to_tensor(x, "float32")
    eps = ops.cast(eps, "float32")
    step_size = ops.cast(step_size, "float32")
    kappa = ops.cast(kappa, "float32")
    lower = ops.maximum(x - eps, 0.0)
    upper = ops.minimum(x + eps, 1.0)
    steps = ops.cast(steps, "int32") if on_tf else int(steps)
    scaled = not (isinstance(objective_scale, (int, float)) and objective_scale == 1.0)

    def ascend(x_adv, lower, upper, labels, target_probs):
        """`steps` signed-gradient steps from x_adv; returns (x_adv, number of zero
        gradient entries)."""

        def value(x_adv):
            target = target_probs
            if target_model is not None:
                target = ops.softmax(
                    ops.cast(target_model(x_adv, training=False), "float32"), axis=-1)
            result = objective(loss, model(x_adv, training=False), labels, target, kappa)
            if scaled:
                result = result * ops.cast(objective_scale, "float32")
            return result

        def step(i, carry):
            x_adv, zeros = carry
            grad = backends.input_gradient(value, x_adv)
            if return_zero_fraction:
                zeros = zeros + ops.sum(ops.cast(ops.equal(grad, 0.0), "float32"))
            x_adv = ops.clip(x_adv + step_size * ops.sign(grad), lower, upper)
            return ops.stop_gradient(x_adv), zeros

        carry = (x_adv, ops.convert_to_tensor(0.0))
        if stateful_model and backends.name() == "jax":
            for i in range(steps):
                carry = step(i, carry)
            return carry
        return ops.fori_loop(0, steps, step, carry)

    x_adv = random_start(x, eps, start, seed, clip=clip_start)
    shards = resolve_shards(shards)
    if shards > 1 and not on_tf:
        backends.tensorflow_only("attack shards")
        shards = 1
    if shards == 1:
        x_adv, zeros = ascend(x_adv, lower, upper, labels, target_probs)
    else:
        x_adv, zeros = backends.current().run_in_shards(
            ascend, (x_adv, lower, upper, labels, target_probs), shards)
    if not clip_start:
        # An unclipped start left as it was by zero steps: the result is still a valid point.
        x_adv = ops.clip(x_adv, lower, upper)
    if not return_zero_fraction:
        return x_adv
    total = ops.cast(steps, "float32") * ops.cast(ops.size(x_adv), "float32")
    return x_adv, ops.divide_no_nan(zeros, total)


JIT_CHOICES = ("auto", True, False)
_jit_default = "auto"


def set_jit_compile(value) -> None:
    """Process-wide default of ``pgd(..., jit_compile=None)``: "auto", True or False."""
    global _jit_default
    if value not in JIT_CHOICES:
        raise ValueError(f"jit_compile must be one of {JIT_CHOICES}, got {value!r}")
    _jit_default = value


def resolve_jit_compile(value=None) -> bool:
    """XLA or not for an eager TensorFlow ``pgd`` call: "auto" means XLA when a GPU is
    visible. Always False on the other backends (JAX compiles its loop anyway)."""
    value = _jit_default if value is None else value
    if value not in JIT_CHOICES:
        raise ValueError(f"jit_compile must be one of {JIT_CHOICES}, got {value!r}")
    if not backends.is_tensorflow():
        return False
    if value == "auto":
        return backends.current().gpu_visible()
    return bool(value)


def resolve_seed(seed):
    """An int tensor [2] for TensorFlow's stateless RNG from an int, a keras SeedGenerator or
    None (a fresh random seed)."""
    import tensorflow as tf  # TensorFlow's eager `pgd` only

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
    "kl"). ``seed``: int, keras ``SeedGenerator`` or None. On TensorFlow, compiled with
    ``tf.function`` when called eagerly (with XLA if ``jit_compile`` resolves to True: None
    takes the process default of `set_jit_compile`, "auto" = XLA on GPU only); inlined when
    called inside a graph (e.g. a ``train_step``). ``shards``: see `pgd_graph` (None: the
    process default). On JAX and torch the same loop runs as it is called (``jit_compile``
    and ``shards`` are TensorFlow paths).
    """
    _check(loss, start)
    if step_size is None:
        step_size = eps / 4.0
    if loss in ("ce", "cw") and y is None:
        raise ValueError(f"attack loss {loss!r} needs labels y")
    if loss == "kl" and target_probs is None:
        raise ValueError("attack loss 'kl' needs target_probs")
    if not backends.is_tensorflow():
        if jit_compile is True:
            backends.tensorflow_only("pgd(jit_compile=True)")
        if start != "none" and seed is None:
            seed = keras.random.SeedGenerator()
        return pgd_graph(model, ops.convert_to_tensor(x, "float32"),
                         None if y is None else ops.convert_to_tensor(y),
                         None if target_probs is None
                         else ops.convert_to_tensor(target_probs, "float32"),
                         eps=eps, step_size=step_size, steps=steps, loss=loss, start=start,
                         seed=seed if start != "none" else None, kappa=kappa, shards=shards)
    tfb = backends.current()
    if tfb.executing_eagerly():
        import tensorflow as tf

        seed_t = resolve_seed(seed) if start != "none" else None
        compiled = tfb.compiled(pgd_graph, resolve_jit_compile(jit_compile))
        target = (None if target_probs is None
                  else tf.convert_to_tensor(target_probs, tf.float32))
        return compiled(model, tf.convert_to_tensor(x, tf.float32),
                        None if y is None else tf.convert_to_tensor(y), target,
                        eps=tf.constant(eps, tf.float32),
                        step_size=tf.constant(step_size, tf.float32),
                        steps=tf.constant(steps, tf.int32), loss=loss, start=start, seed=seed_t,
                        kappa=tf.constant(kappa, tf.float32), shards=resolve_shards(shards))
    if start != "none" and seed is None:
        raise ValueError("inside a graph, pass seed= a keras.random.SeedGenerator or an int")
    return pgd_graph(model, x, y, target_probs, eps=eps, step_size=step_size, steps=steps,
                     loss=loss, start=start, seed=None if start == "none" else seed,
                     kappa=kappa, shards=shards)


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
