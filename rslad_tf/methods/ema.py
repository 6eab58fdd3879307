"""An exponential moving average (EMA) of the student's weights, updated inside the step.

Weight averaging of the student late in training is used by recent robust training and
distillation work (e.g. Gowal et al. 2020, "Uncovering the limits of adversarial training";
Izmailov et al. 2018 for the idea of averaging weights). After every optimizer step

    shadow <- d_t * shadow + (1 - d_t) * weight,   d_t = min(decay, (1 + t) / (10 + t))

for t = the number of updates so far (0 at the first), the warm-up of TensorFlow's
`tf.train.ExponentialMovingAverage(num_updates=...)`: early on the average follows the
weights closely instead of remembering the random initialisation for 1 / (1 - decay) steps.

BatchNorm: every weight of the student is averaged, the moving mean and variance included,
with the same decay. The student's moving statistics are themselves averages of the batch
statistics it saw (clean and adversarial batches, in training mode), so their EMA describes
the same mixture of inputs over the same window of steps as the averaged kernels. The
averaged model therefore needs no extra pass over the data; it is evaluated and saved
exactly like the student.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

WARMUP_OFFSET = 10.0  # d_t = min(decay, (1 + t) / (10 + t)), as tf.train.ExponentialMovingAverage


def check_decay(decay: float) -> float:
    decay = float(decay)
    if not 0.0 < decay < 1.0:
        raise ValueError(f"the EMA decay must be in (0, 1), e.g. 0.999; got {decay}")
    return decay


def decay_at(decay: float, t: int) -> float:
    """The decay used by update number ``t`` (0-based)."""
    return min(decay, (1.0 + t) / (WARMUP_OFFSET + t))


class WeightAverage:
    """Shadow copies of ``model.weights`` (trainable and not), averaged by `update`.

    One device only (the shadow variables are plain, not mirrored)."""

    def __init__(self, model, decay: float):
        self.decay = check_decay(decay)
        self._weights = list(model.weights)
        self.shadow = [tf.Variable(np.asarray(w), trainable=False, dtype=w.dtype,
                                   name=f"ema_{i}") for i, w in enumerate(self._weights)]
        self.num_updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="ema_updates")

    def update(self) -> None:
        """One averaging step from the model's current weights (graph-safe)."""
        t = tf.cast(self.num_updates, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + t) / (WARMUP_OFFSET + t))
        for shadow, weight in zip(self.shadow, self._weights):
            value = tf.cast(weight, shadow.dtype)
            shadow.assign(tf.cast(decay, shadow.dtype) * shadow
                          + tf.cast(1.0 - decay, shadow.dtype) * value)
        self.num_updates.assign_add(1)

    def copy_to(self, model) -> None:
        """Write the averaged weights into ``model`` (same architecture, e.g. a float32 copy)."""
        targets = model.weights
        if len(targets) != len(self.shadow):
            raise ValueError(f"model has {len(targets)} weights, the average {len(self.shadow)}")
        for target, shadow in zip(targets, self.shadow):
            target.assign(tf.cast(shadow, target.dtype))

    # -- resumable state: numpy arrays keyed by name --------------------------------------
    def state(self, prefix: str = "ema") -> dict:
        arrays = {f"{prefix}{i}": np.asarray(v) for i, v in enumerate(self.shadow)}
        arrays[f"{prefix}_updates"] = np.asarray(self.num_updates)
        return arrays

    def restore(self, arrays, prefix: str = "ema") -> None:
        for i, v in enumerate(self.shadow):
            v.assign(arrays[f"{prefix}{i}"])
        self.num_updates.assign(int(arrays[f"{prefix}_updates"]))

