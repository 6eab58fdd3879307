"""Batch augmentation on the accelerator: zero-pad + random crop, random horizontal flip.

The paper's CIFAR augmentation (4-pixel zero padding, random 32x32 crop, horizontal flip)
done for a whole batch with one gather instead of a per-image host loop, so it runs inside
the compiled training step, in ``keras.ops`` on every backend. The random draw is seeded:
on TensorFlow from a stateless seed tensor [2] (what `tf.distribute` replicas fold their
replica id into), elsewhere from a `keras.random.SeedGenerator`, whose state advances
with the step (under JAX, as part of the stateless step's state).
"""

from __future__ import annotations

import keras
from keras import ops


def draw_params(batch_size, padding: int, flip: bool, seed):
    """Random crop offsets and flip flags for a batch.

    Returns (offsets int32 [B, 2] in [0, 2 * padding], flips bool [B]). ``seed``: a
    `keras.random.SeedGenerator` (any backend) or, on TensorFlow, an int tensor [2].
    """
    if isinstance(seed, keras.random.SeedGenerator):
        offsets = keras.random.randint([batch_size, 2], 0, 2 * padding + 1, dtype="int32",
                                       seed=seed)
        if flip:
            flips = keras.random.uniform([batch_size], seed=seed) < 0.5
        else:
            flips = ops.zeros([batch_size], "bool")
        return offsets, flips
    import tensorflow as tf  # a seed tensor: TensorFlow's stateless RNG

    seed = tf.cast(seed, tf.int64)
    offsets = tf.random.stateless_uniform([batch_size, 2], seed, minval=0,
                                          maxval=2 * padding + 1, dtype=tf.int32)
    if flip:
        flips = tf.random.stateless_uniform([batch_size], seed + [0, 1]) < 0.5
    else:
        flips = tf.zeros([batch_size], tf.bool)
    return offsets, flips


def apply(images, offsets, flips, padding: int):
    """Crop each zero-padded image at its offset and flip the chosen ones. images [B,H,W,C].

    One gather from the padded batch: output pixel (b, i, j) is padded pixel
    (b, oy + i, ox + j), or (b, oy + i, ox + W - 1 - j) for a flipped image (the flip of the
    crop). Pure data movement, so every backend gives the same values bit for bit."""
    batch, height, width, channels = ops.shape(images)
    if padding:
        images = ops.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    padded_h, padded_w = height + 2 * padding, width + 2 * padding
    offsets = ops.cast(offsets, "int32")
    rows = offsets[:, 0:1] + ops.arange(height, dtype="int32")[None, :]  # [B, H]
    cols = offsets[:, 1:2] + ops.arange(width, dtype="int32")[None, :]  # [B, W]
    cols = ops.where(flips[:, None], ops.flip(cols, axis=1), cols)
    base = ops.arange(batch, dtype="int32")[:, None, None] * (padded_h * padded_w)
    index = base + rows[:, :, None] * padded_w + cols[:, None, :]  # [B, H, W]
    flat = ops.reshape(images, [-1, channels])
    return ops.take(flat, index, axis=0)  # [B, H, W, C]


def pad_crop_flip(images, *, padding: int, flip: bool, seed):
    """Augment a batch [B,H,W,C]: random crop of the zero-padded image, random flip."""
    if not padding and not flip:
        return images
    offsets, flips = draw_params(ops.shape(images)[0], padding, flip, seed)
    return apply(images, offsets, flips, padding)
