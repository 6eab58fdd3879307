"""FAB-T (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast
adaptive boundary attack"): the targeted fast adaptive boundary attack, L-infinity.

FAB looks for the adversarial point closest to x. At the iterate x^(i) the decision
boundary between the true class y and the target class t is linearised,

    pi = { z : f(x^(i)) + <g, z - x^(i)> = 0 },  f = z_t - z_y,  g = grad f(x^(i)),

and both the iterate and the original point are projected on pi inside the box [0,1]
(minimal L-inf distance; `project_linf`), giving the steps d1 and d2. The next iterate is
a biased combination, with overshoot eta = 1.05:

    x^(i+1) = clip_[0,1]( (1 - a) (x^(i) + eta d1) + a (x + eta d2) ),
    a = min( ||d1|| / (||d1|| + ||d2||), alpha_max = 0.1 ).

When x^(i+1) is misclassified (any wrong class) it is kept if it is the closest found so
far, and the iterate moves back toward x: x^(i+1) <- x + beta (x^(i+1) - x), beta = 0.9.
100 iterations. An example is broken when the closest adversarial point found lies within
eps of x. The standard version of AutoAttack uses the targeted version with one start at x
itself (no random start) and 9 targets: the classes with the 2nd ... 10th largest clean
logit, each on the examples not yet broken.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rslad_tf.attacks.autoattack import _util

ALPHA_MAX = 0.1
ETA = 1.05
BETA = 0.9
NOT_FOUND = 1e10


def project_linf(points, w, b):
    """Minimal L-inf steps onto hyperplanes inside the box [0,1].

    For each row: the ``d`` of smallest ``||d||_inf`` with ``<w, p + d> = b`` and
    ``0 <= p + d <= 1``; when the box does not reach the hyperplane, the box corner that
    comes closest. points, w: [N, D]; b: [N]. Returns d [N, D].

    Moving every coordinate by at most ``lam`` toward the hyperplane changes ``<w, p>`` by
    ``g(lam) = sum_i |w_i| min(lam, c_i)``, ``c_i`` being the room left in the box in the
    useful direction. ``g`` is piecewise linear, increasing and concave with breakpoints at
    the ``c_i``: sort them, evaluate ``g`` at each, and solve the linear piece that holds
    the needed change exactly.
    """
    points = tf.convert_to_tensor(points, tf.float32)
    w = tf.convert_to_tensor(w, tf.float32)
    b = tf.convert_to_tensor(b, tf.float32)
    gap = tf.reduce_sum(w * points, axis=1) - b  # <w, p> - b: must move by -gap
    flip = tf.where(gap >= 0.0, 1.0, -1.0)
    w = w * flip[:, None]  # now <w, p> must decrease by `need` >= 0
    need = gap * flip
    # Decreasing <w, p>: coordinates with w > 0 go down (room p), w < 0 go up (room 1 - p).
    room = tf.where(w > 0.0, points, 1.0 - points)
    weight = tf.abs(w)
    order = tf.argsort(room, axis=1, stable=True)
    room_s = tf.gather(room, order, batch_dims=1)
    weight_s = tf.gather(weight, order, batch_dims=1)
    total = tf.reduce_sum(weight, axis=1, keepdims=True)
    done = tf.cumsum(weight_s * room_s, axis=1)  # change from the saturated coordinates
    rest = total - tf.cumsum(weight_s, axis=1)  # weight of the coordinates beyond
    at_breaks = done + room_s * rest  # g at each breakpoint, non-decreasing
    m = tf.reduce_sum(tf.cast(at_breaks < need[:, None], tf.int32), axis=1)  # pieces passed
    d_count = tf.shape(points)[1]
    zero = tf.zeros_like(total)
    done_ex = tf.concat([zero, done], axis=1)  # before breakpoint m
    rest_ex = tf.concat([total, rest], axis=1)
    lam = tf.math.divide_no_nan(need - tf.gather(done_ex, m, batch_dims=1),
                                tf.gather(rest_ex, m, batch_dims=1))
    lam = tf.maximum(lam, 0.0)
    infeasible = tf.equal(m, d_count)
    lam = tf.where(infeasible, tf.constant(np.inf, tf.float32), lam)
    move = tf.minimum(lam[:, None], room)
    d = tf.where(w > 0.0, -move, move)
    return tf.where(tf.equal(w, 0.0), tf.zeros_like(d), d)


def fab_targeted_graph(model, x, start, y, target, n_iter, eps):
    """One targeted FAB run from ``start`` (x itself in the standard version), graph mode.

    Returns (x_adv, distance): the closest misclassified point found and its L-inf
    distance from x (``NOT_FOUND`` and x where none was found). ``eps`` only stops the
    loop early once every example has an adversarial point within eps (that verdict can
    no longer change)."""
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    target = tf.cast(target, tf.int32)
    eps = tf.cast(eps, tf.float32)
    rank = len(x.shape)
    axes = list(range(1, rank))
    batch = tf.shape(x)[0]
    flat_x = tf.reshape(x, [batch, -1])

    def linearise(z):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(z)
            logits = _util.logits_fn(model, z)
            f = tf.gather(logits, target, batch_dims=1) - tf.gather(logits, y, batch_dims=1)
            total = tf.reduce_sum(f)
        return f, tape.gradient(total, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def body(i, x1, best, dist):
        f, g = linearise(x1)
        w = tf.reshape(g, [batch, -1])
        b = tf.reduce_sum(w * tf.reshape(x1, [batch, -1]), axis=1) - f
        d = project_linf(tf.concat([tf.reshape(x1, [batch, -1]), flat_x], axis=0),
                         tf.concat([w, w], axis=0), tf.concat([b, b], axis=0))
        norms = tf.maximum(tf.reduce_max(tf.abs(d), axis=1), 1e-8)
        n1, n2 = norms[:batch], norms[batch:]
        alpha = tf.clip_by_value(n1 / (n1 + n2), 0.0, ALPHA_MAX)
        alpha = _util.per_example(alpha, rank)
        d1 = tf.reshape(d[:batch], tf.shape(x))
        d2 = tf.reshape(d[batch:], tf.shape(x))
        x1 = tf.clip_by_value((x1 + ETA * d1) * (1.0 - alpha) + (x + ETA * d2) * alpha,
                              0.0, 1.0)
        pred = tf.argmax(_util.logits_fn(model, x1), axis=-1, output_type=tf.int32)
        is_adv = tf.not_equal(pred, y)
        t = tf.reduce_max(tf.abs(x1 - x), axis=axes)
        closer = tf.logical_and(is_adv, t < dist)
        best = tf.where(_util.per_example(closer, rank), x1, best)
        dist = tf.where(closer, t, dist)
        x1 = tf.where(_util.per_example(is_adv, rank), x + (x1 - x) * BETA, x1)
        return i + 1, x1, best, dist

    def cond(i, x1, best, dist):
        return tf.logical_and(i < n_iter, tf.reduce_any(dist > eps))

    dist0 = tf.fill([batch], tf.constant(NOT_FOUND, tf.float32))
    start = tf.convert_to_tensor(start, tf.float32)
    _, _, best, dist = tf.while_loop(cond, body,
                                     (tf.constant(0, tf.int32), start, x, dist0))
    return best, dist


_compiled = _util.Compiled(fab_targeted_graph)


def fab_batch(model, x, y, target, *, eps, n_iter, start=None, jit=False):
    """One targeted FAB run (compiled) on one batch: (x_adv, distance) numpy arrays."""
    start = x if start is None else start
    best, dist = _compiled(
        jit, model,
        [tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(start, tf.float32),
         tf.convert_to_tensor(np.asarray(y, np.int32)),
         tf.convert_to_tensor(np.asarray(target, np.int32))],
        [tf.constant(int(n_iter), tf.int32), tf.constant(eps, tf.float32)])
    return np.asarray(best), np.asarray(dist)


def fab_targeted(model, x, y, *, eps, n_iter=100, n_target_classes=9, n_restarts=1,
                 seed=0, stream=0, jit=False):
    """FAB-T on one batch of correctly classified examples. Returns (x_adv, robust).

    ``n_restarts`` > 1 adds runs from random points at L-inf distance eps/2 around x (the
    reference's restarts; the standard version uses one run)."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    x_adv = x.copy()
    robust = np.ones(len(x), bool)
    clean_logits = _util.predict_logits(model, x, batch_size=max(len(x), 1), jit=jit)
    n_classes = clean_logits.shape[-1]
    if n_target_classes > n_classes - 1:
        raise ValueError(f"FAB-T with {n_target_classes} target classes needs at least "
                         f"{n_target_classes + 1} classes; the model has {n_classes}")
    for rank in range(2, int(n_target_classes) + 2):
        targets = _util.target_classes(clean_logits, rank)
        for restart in range(int(n_restarts)):
            def run(idx, rank=rank, restart=restart, targets=targets):
                start = x[idx]
                if restart > 0:
                    start = _random_start(start, eps,
                                          _util.seed_tensor(seed, stream, rank, restart))
                adv, dist = fab_batch(model, x[idx], y[idx], targets[idx], eps=eps,
                                      n_iter=n_iter, start=start, jit=jit)
                found = dist < NOT_FOUND
                pred = np.argmax(_util.predict_logits(model, adv, batch_size=max(len(adv), 1),
                                                      jit=jit), axis=-1)
                return adv, found & (pred != y[idx]) & (dist <= eps)

            if not _util.attack_still_robust(x_adv, robust, run):
                return x_adv, robust
    return x_adv, robust


def _random_start(x, eps, seed):
    t = tf.random.stateless_uniform(tf.shape(x), seed, minval=-1.0, maxval=1.0)
    axes = list(range(1, len(x.shape)))
    t = t / tf.reduce_max(tf.abs(t), axis=axes, keepdims=True)
    return np.asarray(tf.clip_by_value(x + 0.5 * eps * t, 0.0, 1.0))
