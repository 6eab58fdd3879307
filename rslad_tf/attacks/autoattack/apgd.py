"""APGD (Croce & Hein, ICML 2020, section 3): Auto-PGD under the L-infinity threat model.

PGD with momentum whose step size needs no tuning:

- start: a uniform random point of the eps ball, ``x + eps * t / ||t||_inf`` with
  ``t ~ U(-1, 1)``, clipped to [0,1]; first step size ``eta = 2 * eps``.
- step (momentum alpha = 0.75, none on the first step):

      z_{k+1} = P(x_k + eta_k * sign(grad f(x_k)))
      x_{k+1} = P(x_k + alpha * (z_{k+1} - x_k) + (1 - alpha) * (x_k - x_{k-1}))

  with P the projection on the eps ball intersected with [0,1].
- checkpoints: the first after ``p_1 = 22%`` of the iterations, then ever closer, the
  distance between two shrinking by 3% of the iterations down to 6% (for 100 iterations:
  after iterations 22, 41, 57, 70, 80, 87, 93 and 99). At a checkpoint the step size is
  halved, and the iterate restarted from the best point found, when
  (1) the loss increased in at most ``rho = 75%`` of the iterations since the last
  checkpoint, or (2) the step size was not halved at the last checkpoint and the best loss
  has not improved since. As in the reference implementation, the first iteration's loss
  is compared with 0.
- losses: cross-entropy (APGD-CE), the difference of logits ratio (DLR) and its targeted
  version (APGD-T), all to be maximised:

      DLR(z, y)        = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)
      DLR_t(z, y, t)   = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)

  where z_pi1 >= z_pi2 >= ... are the sorted logits (1e-12 is added to each denominator).

An example counts as broken when any iterate (starting point included) is misclassified;
the attack returns the last such iterate for it.

APGD-T (the standard version) runs one APGD on the targeted DLR loss per target class, the
classes with the 2nd, 3rd, ..., 10th largest clean logit (9 targets), each on the examples
not yet broken; APGD-CE is one run (1 restart) on cross-entropy.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rslad_tf.attacks.autoattack import _util

LOSSES = ("ce", "dlr", "dlr-targeted")
MOMENTUM = 0.75
RHO = 0.75
DENOMINATOR_EPS = 1e-12


def schedule(n_iter: int) -> tuple[int, int, int]:
    """(first checkpoint distance, minimum distance, decrease) for ``n_iter`` iterations:
    22%, 6% and 3% of the iterations, at least 1 each."""
    return (max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1),
            max(int(0.03 * n_iter), 1))


def checkpoints(n_iter: int) -> list[int]:
    """The 1-based iteration counts after which the step size is reconsidered."""
    first, minimum, decrease = schedule(n_iter)
    out, at, k = [], 0, first
    while at + k <= n_iter:
        at += k
        out.append(at)
        k = max(k - decrease, minimum)
    return out


def dlr_loss(logits, y):
    """Per-example DLR loss [B] (to be maximised; positive once misclassified)."""
    logits = tf.cast(logits, tf.float32)
    top = tf.math.top_k(logits, k=3).values  # z_pi1 >= z_pi2 >= z_pi3
    return -_util.margin(logits, y) / (top[:, 0] - top[:, 2] + DENOMINATOR_EPS)


def targeted_dlr_loss(logits, y, target):
    """Per-example targeted DLR loss [B] toward class ``target`` (needs >= 4 classes)."""
    logits = tf.cast(logits, tf.float32)
    top = tf.math.top_k(logits, k=4).values
    true = tf.gather(logits, y, batch_dims=1)
    tgt = tf.gather(logits, target, batch_dims=1)
    return -(true - tgt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DENOMINATOR_EPS)


def ce_loss(logits, y):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32),
                                                          tf.cast(logits, tf.float32))


def per_example_loss(loss_id, logits, y, target):
    """The loss ``LOSSES[loss_id]`` per example. ``loss_id`` may be a scalar tensor, so one
    graph serves all three losses: each is computed (a few ops on the logits) and the
    others get a zero gradient (their denominators are at least 1e-12, so it stays finite).
    """
    loss_id = tf.cast(loss_id, tf.int32)
    n_classes = logits.shape[-1]
    values = ce_loss(logits, y)
    if n_classes is None or n_classes >= 3:
        values = tf.where(tf.equal(loss_id, 1), dlr_loss(logits, y), values)
    if n_classes is None or n_classes >= 4:
        values = tf.where(tf.equal(loss_id, 2), targeted_dlr_loss(logits, y, target), values)
    return values


# Per-example state of the loop (rows of the batch; dropped once an example is broken).
_ROWS = ("ids", "x", "y", "target", "x_cur", "x_prev", "grad", "step", "x_best",
         "grad_best", "loss_best", "x_adv", "robust", "loss_prev", "n_up",
         "loss_best_at_check", "halved_at_check")


def apgd_graph(model, x, y, target, seed, eps, n_iter, k_first, k_min, k_decrease, loss_id,
               *, compact: bool = True):
    """One APGD run on a batch (graph mode). Returns (x_adv [B,...], robust [B] bool).

    ``x`` float32 images, ``y`` int labels, ``target`` int target classes (used by the
    targeted loss only), ``seed`` int64 [2], ``loss_id`` the index of the loss in
    ``LOSSES``; the other arguments are scalars.

    ``compact``: drop the examples already broken from the batch as the run goes (their
    verdict is final and every example's iterates are independent of the others, so the
    others' are unchanged); shapes then vary, so not under XLA.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    target = tf.cast(target, tf.int32)
    eps = tf.cast(eps, tf.float32)
    rank = len(x.shape)
    axes = list(range(1, rank))

    def evaluate_fn(z, y, target, loss_id):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(z)
            logits = _util.logits_fn(model, z)
            values = per_example_loss(loss_id, logits, y, target)
            total = tf.reduce_sum(values)
        grad = tape.gradient(total, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
        return values, grad, correct

    # Traced once, called before and inside the loop (tracing the model twice was slow).
    evaluate_once = tf.function(evaluate_fn, autograph=False, input_signature=[
        tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)])

    def evaluate(z, y, target):
        return evaluate_once(z, y, target, tf.cast(loss_id, tf.int32))

    noise = tf.random.stateless_uniform(tf.shape(x), seed, minval=-1.0, maxval=1.0)
    scale = tf.reduce_max(tf.abs(noise), axis=axes, keepdims=True) + 1e-12
    x0 = tf.clip_by_value(x + eps * noise / scale, 0.0, 1.0)
    loss0, grad0, correct0 = evaluate(x0, y, target)

    batch = tf.shape(x)[0]
    zeros_b = tf.zeros([batch], tf.float32)
    rows = dict(
        ids=tf.range(batch), x=x, y=y, target=target,
        x_cur=x0, x_prev=x0, grad=grad0,
        step=tf.fill([batch], 2.0 * eps),
        x_best=x0, grad_best=grad0, loss_best=loss0,
        x_adv=x0, robust=correct0,
        loss_prev=zeros_b,  # the reference compares the first iterate's loss with 0
        n_up=zeros_b,  # iterations since the last checkpoint in which the loss went up
        loss_best_at_check=loss0,
        halved_at_check=tf.ones([batch], tf.bool),
    )
    state = dict(rows, i=tf.constant(0, tf.int32), since=tf.constant(0, tf.int32),
                 k=tf.cast(k_first, tf.int32), out_adv=x0, out_robust=correct0)
    n_iter = tf.cast(n_iter, tf.int32)
    k_min = tf.cast(k_min, tf.int32)
    k_decrease = tf.cast(k_decrease, tf.int32)

    def write_out(s):
        """Copy the rows' verdicts and adversarial points into the full-batch outputs."""
        at = s["ids"][:, None]
        return (tf.tensor_scatter_nd_update(s["out_adv"], at, s["x_adv"]),
                tf.tensor_scatter_nd_update(s["out_robust"], at, s["robust"]))

    def drop_broken(s):
        if not compact:
            return s

        def drop():
            out_adv, out_robust = write_out(s)
            keep = tf.reshape(tf.where(s["robust"]), [-1])
            kept = {key: tf.gather(s[key], keep) for key in _ROWS}
            return dict(s, **kept, out_adv=out_adv, out_robust=out_robust)

        return tf.cond(tf.reduce_all(s["robust"]), lambda: dict(s), drop)

    def body(s):
        lower = tf.maximum(s["x"] - eps, 0.0)
        upper = tf.minimum(s["x"] + eps, 1.0)
        alpha = tf.where(s["i"] > 0, MOMENTUM, 1.0)
        step = _util.per_example(s["step"], rank)
        z = tf.clip_by_value(s["x_cur"] + step * tf.sign(s["grad"]), lower, upper)
        x_new = tf.clip_by_value(s["x_cur"] + alpha * (z - s["x_cur"])
                                 + (1.0 - alpha) * (s["x_cur"] - s["x_prev"]), lower, upper)
        values, grad, correct = evaluate(x_new, s["y"], s["target"])

        robust = tf.logical_and(s["robust"], correct)
        wrong = _util.per_example(tf.logical_not(correct), rank)
        x_adv = tf.where(wrong, x_new, s["x_adv"])
        better = values > s["loss_best"]
        better_b = _util.per_example(better, rank)
        x_best = tf.where(better_b, x_new, s["x_best"])
        grad_best = tf.where(better_b, grad, s["grad_best"])
        loss_best = tf.where(better, values, s["loss_best"])
        n_up = s["n_up"] + tf.cast(values > s["loss_prev"], tf.float32)

        since = s["since"] + 1
        at_check = tf.equal(since, s["k"])
        k_float = tf.cast(s["k"], tf.float32)
        oscillating = n_up <= RHO * k_float
        stalled = tf.logical_and(tf.logical_not(s["halved_at_check"]),
                                 s["loss_best_at_check"] >= loss_best)
        halve = tf.logical_and(at_check, tf.logical_or(oscillating, stalled))
        halve_b = _util.per_example(halve, rank)
        new = dict(
            s,
            i=s["i"] + 1,
            x_cur=tf.where(halve_b, x_best, x_new),
            x_prev=s["x_cur"],
            grad=tf.where(halve_b, grad_best, grad),
            step=tf.where(halve, s["step"] * 0.5, s["step"]),
            x_best=x_best, grad_best=grad_best, loss_best=loss_best,
            x_adv=x_adv, robust=robust,
            loss_prev=values,
            n_up=tf.where(at_check, tf.zeros_like(n_up), n_up),
            since=tf.where(at_check, 0, since),
            k=tf.where(at_check, tf.maximum(s["k"] - k_decrease, k_min), s["k"]),
            loss_best_at_check=tf.where(at_check, loss_best, s["loss_best_at_check"]),
            halved_at_check=tf.where(at_check, halve, s["halved_at_check"]),
        )
        return [drop_broken(new)]

    def cond(s):
        # Stop early once every example of the batch is broken: the verdicts are final.
        return tf.logical_and(s["i"] < n_iter, tf.reduce_any(s["robust"]))

    state = drop_broken(state)
    if compact:  # the number of rows shrinks as the loop runs
        invariants = {key: (tf.TensorShape([None]).concatenate(v.shape[1:]) if key in _ROWS
                            else v.shape) for key, v in state.items()}
        (final,) = tf.while_loop(cond, body, [state], shape_invariants=[invariants])
    else:
        (final,) = tf.while_loop(cond, body, [state])
    out_adv, out_robust = write_out(final)
    return out_adv, out_robust


_compiled = _util.Compiled(apgd_graph)


def apgd_batch(model, x, y, target=None, *, eps, n_iter, loss, seed, jit=False):
    """One APGD run (compiled) on one batch: (x_adv, robust) numpy arrays."""
    if loss not in LOSSES:
        raise ValueError(f"unknown APGD loss {loss!r}; choose one of {LOSSES}")
    y = np.asarray(y, np.int32)
    target = y if target is None else np.asarray(target, np.int32)
    k_first, k_min, k_decrease = schedule(int(n_iter))
    x_adv, robust = _compiled(
        jit, model,
        [tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y),
         tf.convert_to_tensor(target)],
        [seed, tf.constant(eps, tf.float32), tf.constant(int(n_iter), tf.int32),
         tf.constant(k_first, tf.int32), tf.constant(k_min, tf.int32),
         tf.constant(k_decrease, tf.int32), tf.constant(LOSSES.index(loss), tf.int32)],
        compact=not jit)
    return np.array(x_adv), np.array(robust)


def apgd(model, x, y, *, eps, n_iter=100, n_restarts=1, loss="ce", seed=0, stream=0,
         jit=False):
    """APGD-CE (``loss="ce"``) or APGD-DLR (``"dlr"``) on one batch of examples that the
    model classifies correctly; ``n_restarts`` runs, each on the examples still robust.
    Returns (x_adv, robust): x_adv holds a misclassified point for broken examples and x
    elsewhere."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    if loss not in ("ce", "dlr"):
        raise ValueError(f"untargeted APGD takes loss 'ce' or 'dlr', got {loss!r}")
    if loss == "dlr":
        n_classes = _util.predict_logits(model, x[:1], batch_size=1, jit=jit).shape[-1]
        if n_classes < 3:
            raise ValueError("the DLR loss needs at least 3 classes")
    x_adv = x.copy()
    robust = np.ones(len(x), bool)
    for restart in range(int(n_restarts)):
        def run(idx, restart=restart):
            adv, still = apgd_batch(model, x[idx], y[idx], eps=eps, n_iter=n_iter, loss=loss,
                                    seed=_util.seed_tensor(seed, stream, restart), jit=jit)
            return adv, ~still

        if not _util.attack_still_robust(x_adv, robust, run):
            break
    return x_adv, robust


def apgd_targeted(model, x, y, *, eps, n_iter=100, n_restarts=1, n_target_classes=9,
                  seed=0, stream=0, jit=False, batch_size=None):
    """APGD-T: APGD on the targeted DLR loss toward the classes with the 2nd, 3rd, ...
    largest clean logit, ``n_target_classes`` of them, each on the examples still robust.
    Returns (x_adv, robust) as `apgd`."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    x_adv = x.copy()
    robust = np.ones(len(x), bool)
    clean_logits = _util.predict_logits(model, x, batch_size=batch_size or max(len(x), 1),
                                        jit=jit)
    n_classes = clean_logits.shape[-1]
    if n_target_classes > n_classes - 1:
        raise ValueError(f"APGD-T with {n_target_classes} target classes needs at least "
                         f"{n_target_classes + 1} classes; the model has {n_classes}")
    if n_classes < 4:
        raise ValueError("the targeted DLR loss needs at least 4 classes")
    for rank in range(2, int(n_target_classes) + 2):
        targets = _util.target_classes(clean_logits, rank)
        for restart in range(int(n_restarts)):
            def run(idx, rank=rank, restart=restart, targets=targets):
                adv, still = apgd_batch(model, x[idx], y[idx], targets[idx], eps=eps,
                                        n_iter=n_iter, loss="dlr-targeted",
                                        seed=_util.seed_tensor(seed, stream, rank, restart),
                                        jit=jit)
                return adv, ~still

            if not _util.attack_still_robust(x_adv, robust, run):
                return x_adv, robust
    return x_adv, robust
