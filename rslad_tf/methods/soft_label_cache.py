"""Teacher soft-label cache: T(x) of each (image, crop offset, flip) computed once, reused.

The teacher of RSLAD, ARD and IAD is frozen and runs in inference mode, and their soft
labels are its logits on the clean augmented images, so those logits are a pure function
of (training image index, augmentation variant). With pad-crop by ``p`` pixels and an
optional flip there are ``(2p + 1)^2 * (2 if flip else 1)`` variants per image (162 for
CIFAR's p = 4 + flip); without augmentation (digits) one.

The cache is a float32 tensor ``[N * variants, K]`` of logits plus a filled mask
``[N * variants]``, both device variables. Per batch, the rows already filled are read back
bit for bit; the misses are computed by the teacher and written, and nothing else is
written (a filled entry is never recomputed, so a value never changes once stored). The
teacher runs on the misses only, rounded up to a quarter of the batch (``buckets``): each
bucket is a fixed-shape branch of a ``tf.switch_case``, so the step still compiles under
XLA, and a batch with no misses skips the teacher entirely.

Exactness: BatchNorm in inference mode makes every teacher row independent of the rest of
its batch, so the cached logits equal what the teacher computes for the same batch up to
the kernels' rounding, which can depend on the batch size (TensorFlow's CPU kernels do:
docs/speed.md); the tests pin bit-for-bit equality where the sizes match.

Memory: ``N * variants * (4 * K + 4)`` bytes: digits 1,347 x 1 x 10 -> 59 KB; CIFAR-10
50,000 x 162 x 10 -> 356 MB; CIFAR-100 with K = 100 -> 3.3 GB.
"""

from __future__ import annotations

import tensorflow as tf

DEFAULT_BUCKETS = 4


def num_variants(padding: int, flip: bool) -> int:
    """Augmentation variants of one image: crop offsets in [0, 2p]^2 times flip or not."""
    return (2 * int(padding) + 1) ** 2 * (2 if flip else 1)


def variant_ids(offsets, flips, padding: int, flip: bool):
    """The variant id [B] int32 of each image from its crop offsets [B, 2] and flips [B]."""
    side = 2 * int(padding) + 1
    offsets = tf.cast(offsets, tf.int32)
    ids = offsets[:, 0] * side + offsets[:, 1]
    if flip:
        ids = ids * 2 + tf.cast(flips, tf.int32)
    return ids


def cache_bytes(num_examples: int, variants: int, num_classes: int) -> int:
    """Bytes of the logits table plus the filled mask."""
    return int(num_examples) * int(variants) * (4 * int(num_classes) + 4)


class SoftLabelCache:
    """Teacher logits per (image index, augmentation variant), filled on first use.

    Args:
        num_examples: training set size N (image indices are 0..N-1).
        num_classes: K.
        padding, flip: the augmentation (see ``num_variants``).
        buckets: granularity of the teacher call on the misses (a multiple of B / buckets).
    """

    def __init__(self, num_examples: int, num_classes: int, *, padding: int = 0,
                 flip: bool = False, buckets: int = DEFAULT_BUCKETS):
        if num_examples <= 0 or num_classes <= 0:
            raise ValueError("num_examples and num_classes must be positive")
        self.num_examples = int(num_examples)
        self.num_classes = int(num_classes)
        self.padding = int(padding)
        self.flip = bool(flip)
        self.variants = num_variants(padding, flip)
        self.buckets = max(1, int(buckets))
        if self.num_examples * self.variants >= 2**31:
            raise ValueError("cache too large: more than 2^31 entries")
        rows = self.num_examples * self.variants
        # Plain tf.Variables (not Keras weights): derived data, never saved with the model.
        self.logits = tf.Variable(tf.zeros([rows, self.num_classes], tf.float32),
                                  trainable=False, name="soft_label_cache")
        self.filled = tf.Variable(tf.zeros([rows], tf.float32), trainable=False,
                                  name="soft_label_cache_filled")
        # Counters since the last `reset_counters` (per epoch in training).
        self.lookups = tf.Variable(0.0, trainable=False, name="soft_label_cache_lookups")
        self.misses = tf.Variable(0.0, trainable=False, name="soft_label_cache_misses")
        self.teacher_rows = tf.Variable(0.0, trainable=False, name="soft_label_cache_rows")

    # -- reporting ------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return cache_bytes(self.num_examples, self.variants, self.num_classes)

    def describe(self) -> str:
        return (f"teacher soft-label cache: {self.num_examples} images x {self.variants} "
                f"variants x {self.num_classes} classes, float32 = {self.nbytes / 2**20:.1f} MiB")

    def filled_fraction(self) -> float:
        return float(tf.reduce_mean(self.filled))

    def counters(self) -> dict:
        """Lookups, misses and teacher rows computed since the last reset, and hit rate."""
        lookups, misses = float(self.lookups.numpy()), float(self.misses.numpy())
        return {"lookups": lookups, "misses": misses,
                "teacher_rows": float(self.teacher_rows.numpy()),
                "hit_rate": 1.0 - misses / lookups if lookups else 0.0}

    def reset_counters(self) -> None:
        for v in (self.lookups, self.misses, self.teacher_rows):
            v.assign(0.0)

    def clear(self) -> None:
        self.filled.assign(tf.zeros_like(self.filled))
        self.reset_counters()

    # -- the lookup (inside the training step) ------------------------------------------
    def keys(self, index, variant):
        return tf.cast(index, tf.int32) * self.variants + tf.cast(variant, tf.int32)

    def lookup(self, teacher_fn, images, index, variant):
        """Teacher logits [B, K] float32 of ``images`` (the augmented batch), whose rows are
        training image ``index`` [B] under augmentation ``variant`` [B]. ``teacher_fn(x)``
        returns float32 logits; it is called on the misses only (or not at all)."""
        keys = self.keys(index, variant)
        batch = tf.shape(keys)[0]
        have = tf.gather(self.filled, keys) > 0.5
        n_miss = tf.reduce_sum(tf.cast(tf.logical_not(have), tf.int32))
        # Misses first, so the first n_miss rows of `order` are the misses.
        order = tf.argsort(tf.cast(have, tf.float32), stable=True)
        chunk = (batch + self.buckets - 1) // self.buckets
        bucket = tf.minimum((n_miss + chunk - 1) // chunk, self.buckets)

        def branch(k):
            def run():
                if k == 0:
                    return tf.zeros([batch, self.num_classes], tf.float32)
                size = tf.minimum(k * chunk, batch)
                rows = order[:size]
                computed = tf.cast(teacher_fn(tf.gather(images, rows)), tf.float32)
                # Same shape in every branch (XLA conditionals need it): pad to [B, K].
                return tf.pad(computed, [[0, batch - size], [0, 0]])
            return run

        computed = tf.switch_case(bucket, [branch(k) for k in range(self.buckets + 1)])
        computed = tf.ensure_shape(computed, [None, self.num_classes])
        ordered_keys = tf.gather(keys, order)
        is_miss = tf.range(batch) < n_miss
        # Write the misses; every other row writes back what it holds (no value changes).
        previous = tf.gather(self.logits, ordered_keys)
        self.logits.scatter_nd_update(ordered_keys[:, None],
                                      tf.where(is_miss[:, None], computed, previous))
        self.filled.scatter_nd_update(keys[:, None], tf.ones([batch], tf.float32))
        self.lookups.assign_add(tf.cast(batch, tf.float32))
        self.misses.assign_add(tf.cast(n_miss, tf.float32))
        self.teacher_rows.assign_add(tf.cast(tf.minimum(bucket * chunk, batch), tf.float32))
        return tf.gather(self.logits, keys)
