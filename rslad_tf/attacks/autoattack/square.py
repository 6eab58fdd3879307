"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), L-infinity.

A score-based black-box attack: random search over perturbations at the corners of the
eps ball, using only the model's outputs (no gradients).

- objective: the margin ``z_y - max_{j != y} z_j``, minimised; an example is broken as soon
  as it is <= 0.
- start: vertical stripes, ``x + eps * s`` with one random sign per column and channel,
  clipped to [0,1].
- each query: pick a random square window of side ``h_i`` (the same place in every
  channel) and a random sign per channel, set the window to ``x +- eps`` (clipped to
  [0,1]) on the best point so far, and keep the candidate when its margin is lower (or
  the example is misclassified). Only examples not yet broken are queried.
- window size: ``h_i = max(round(sqrt(p_i * H * W)), 1)`` (at most the image side), where
  the fraction of pixels ``p_i`` starts at ``p_init = 0.8`` and is halved after queries
  10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (the reference's schedule for 10,000
  queries; AutoAttack's standard version runs 5000 queries on it without rescaling).
- the window's top-left corner is drawn uniformly from ``0 .. side - h_i - 1`` (0 when the
  window covers the image), as in both reference implementations.

The reference PyTorch code draws one window per query for the whole batch; here every
example draws its own (the paper's algorithm): each example's sequence of windows has the
same distribution either way.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rslad_tf.attacks.autoattack import _util

P_INIT = 0.8
N_QUERIES = 5000
# After these many queries the window fraction is halved once more.
P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# Compaction: drop the broken examples from the batch every so many queries.
CHUNK = 500


def p_selection(i, p_init=P_INIT):
    """Fraction of pixels of the window at (0-based) query ``i`` (a tensor)."""
    i = tf.convert_to_tensor(i)
    halvings = tf.zeros([], tf.int32)
    for at in P_SCHEDULE:
        halvings += tf.cast(i > at, tf.int32)
    return tf.cast(p_init, tf.float32) / tf.pow(2.0, tf.cast(halvings, tf.float32))


def window_side(i, height: int, width: int, p_init=P_INIT):
    p = p_selection(i, p_init)
    side = tf.cast(tf.round(tf.sqrt(p * float(height * width))), tf.int32)
    return tf.clip_by_value(side, 1, min(height, width))


def init_graph(model, x, y, seed, eps):
    """The stripes start: (x_best, margin) of a batch."""
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    shape = tf.shape(x)
    u = tf.random.stateless_uniform([shape[0], 1, shape[2], shape[3]], seed)
    signs = tf.where(u < 0.5, -1.0, 1.0)
    x_best = tf.clip_by_value(x + eps * signs, 0.0, 1.0)
    return x_best, _util.margin(_util.logits_fn(model, x_best), y)


def search_graph(model, x, y, x_best, margin, seed, eps, first, last, p_init):
    """Queries ``first`` .. ``last - 1`` of the random search on a batch (graph mode).
    Returns the updated (x_best, margin)."""
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    eps = tf.cast(eps, tf.float32)
    height, width = int(x.shape[1]), int(x.shape[2])
    batch = tf.shape(x)[0]
    channels = int(x.shape[3])
    rows = tf.reshape(tf.range(height), [1, height, 1, 1])
    cols = tf.reshape(tf.range(width), [1, 1, width, 1])

    def body(i, x_best, margin):
        active = margin > 0.0
        side = window_side(i, height, width, p_init)
        key = tf.random.experimental.stateless_fold_in(seed, tf.cast(i, tf.int64))
        u = tf.random.stateless_uniform([batch, 2 + channels], key)
        top = tf.cast(tf.floor(u[:, 0] * tf.cast(height - side, tf.float32)), tf.int32)
        left = tf.cast(tf.floor(u[:, 1] * tf.cast(width - side, tf.float32)), tf.int32)
        top = tf.reshape(top, [-1, 1, 1, 1])
        left = tf.reshape(left, [-1, 1, 1, 1])
        inside = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side))
        signs = tf.reshape(tf.where(u[:, 2:] < 0.5, -1.0, 1.0), [batch, 1, 1, channels])
        x_new = tf.where(inside, tf.clip_by_value(x + eps * signs, 0.0, 1.0), x_best)
        new_margin = _util.margin(_util.logits_fn(model, x_new), y)
        accept = tf.logical_and(active, new_margin < margin)
        margin = tf.where(accept, new_margin, margin)
        x_best = tf.where(tf.reshape(accept, [-1, 1, 1, 1]), x_new, x_best)
        return i + 1, x_best, margin

    def cond(i, x_best, margin):
        return tf.logical_and(i < last, tf.reduce_any(margin > 0.0))

    _, x_best, margin = tf.while_loop(
        cond, body, (tf.cast(first, tf.int32), tf.convert_to_tensor(x_best, tf.float32),
                     tf.convert_to_tensor(margin, tf.float32)))
    return x_best, margin


_init = _util.Compiled(init_graph)
_search = _util.Compiled(search_graph)


def square(model, x, y, *, eps, n_queries=N_QUERIES, p_init=P_INIT, n_restarts=1, seed=0,
           stream=0, jit=False):
    """Square Attack (L-inf) on one batch of correctly classified examples.

    Returns (x_adv, robust): x_adv holds the misclassified point found for broken examples
    and x elsewhere. ``n_queries`` random-search queries after the start (the reference's
    count); each of ``n_restarts`` runs attacks the examples still robust."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    if x.ndim != 4:
        raise ValueError(f"Square attack expects images [N, H, W, C], got shape {x.shape}")
    x_adv = x.copy()
    robust = np.ones(len(x), bool)
    for restart in range(int(n_restarts)):
        def run(idx, restart=restart):
            seed_t = _util.seed_tensor(seed, stream, restart)
            x_run, y_run = x[idx], y[idx]
            best, margin = _init(jit, model, [tf.constant(x_run), tf.constant(y_run)],
                                 [seed_t, tf.constant(eps, tf.float32)])
            best, margin = np.array(best), np.array(margin)
            # Compaction: every CHUNK queries, only the examples not yet broken go on.
            first = 0
            live = np.flatnonzero(margin > 0.0)
            while first < n_queries and len(live):
                last = min(first + CHUNK, int(n_queries))
                b, m = _search(jit, model,
                               [tf.constant(x_run[live]), tf.constant(y_run[live]),
                                tf.constant(best[live]), tf.constant(margin[live])],
                               [seed_t, tf.constant(eps, tf.float32),
                                tf.constant(first, tf.int32), tf.constant(last, tf.int32),
                                tf.constant(p_init, tf.float32)])
                best[live], margin[live] = np.asarray(b), np.asarray(m)
                live = live[margin[live] > 0.0]
                first = last
            pred = np.argmax(_util.predict_logits(model, best, batch_size=max(len(best), 1),
                                                  jit=jit), axis=-1)
            return best, pred != y_run

        if not _util.attack_still_robust(x_adv, robust, run):
            break
    return x_adv, robust
