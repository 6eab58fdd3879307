"""Batch augmentation on the accelerator: zero-pad + random crop, random horizontal flip.

The paper's CIFAR augmentation (4-pixel zero padding, random 32x32 crop, horizontal flip)
done for a whole batch with two gathers instead of a per-image host loop, so it runs inside
the compiled training step. Stateless RNG: the same seed gives the same augmentation.
"""

from __future__ import annotations

import tensorflow as tf


def draw_params(batch_size, padding: int, flip: bool, seed):
    """Random crop offsets and flip flags for a batch.

    Returns (offsets int32 [B, 2] in [0, 2 * padding], flips bool [B]). ``seed``: int tensor [2].
    """
    seed = tf.cast(seed, tf.int64)
    offsets = tf.random.stateless_uniform([batch_size, 2], seed, minval=0,
                                          maxval=2 * padding + 1, dtype=tf.int32)
    if flip:
        flips = tf.random.stateless_uniform([batch_size], seed + [0, 1]) < 0.5
    else:
        flips = tf.zeros([batch_size], tf.bool)
    return offsets, flips


def apply(images, offsets, flips, padding: int):
    """Crop each zero-padded image at its offset and flip the chosen ones. images [B,H,W,C]."""
    if padding:
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
        rows = offsets[:, 0:1] + tf.range(height)[None, :]  # [B, H]
        cols = offsets[:, 1:2] + tf.range(width)[None, :]  # [B, W]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W + 2p, C]
        images = tf.gather(images, cols, axis=2, batch_dims=1)  # [B, H, W, C]
    return tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)


def pad_crop_flip(images, *, padding: int, flip: bool, seed):
    """Augment a batch [B,H,W,C]: random crop of the zero-padded image, random flip."""
    if not padding and not flip:
        return images
    offsets, flips = draw_params(tf.shape(images)[0], padding, flip, seed)
    return apply(images, offsets, flips, padding)
