"""Evaluation: accuracy of a model on clean and attacked images.

`accuracy_under_attack` is the core used both by training (per-epoch checkpoint
selection) and by the evaluation suite. The model is always called in inference mode and
in float32.
"""

from __future__ import annotations

import numpy as np


def predict_labels(model, images, batch_size: int = 256) -> np.ndarray:
    """Arg-max predictions of ``model`` in inference mode, batch by batch. [N] int."""
    import tensorflow as tf

    out = []
    for start in range(0, len(images), batch_size):
        logits = model(tf.convert_to_tensor(images[start:start + batch_size]), training=False)
        out.append(np.argmax(np.asarray(logits, dtype=np.float32), axis=-1))
    return np.concatenate(out) if out else np.zeros([0], np.int64)


def accuracy_under_attack(model, images, labels, *, attack=None, eps: float = 0.0,
                          batch_size: int = 256, seed: int = 0) -> float:
    """Accuracy in percent of ``model`` on ``images`` attacked by ``attack``.

    ``attack``: an `rslad_tf.attacks.AttackSettings` (e.g. ``PROTOCOL["pgd_trades"]``) or
    None for clean accuracy. One seeded generator serves all batches, so the result is
    reproducible for a given seed and batch size.
    """
    import keras

    labels = np.asarray(labels)
    if len(images) == 0:
        raise ValueError("no examples to evaluate")
    correct = 0
    generator = keras.random.SeedGenerator(seed) if attack is not None else None
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        y = labels[start:start + batch_size]
        if attack is not None:
            x = attack.run(model, x, y, eps=eps, seed=generator).numpy()
        correct += int(np.sum(predict_labels(model, x, batch_size) == y))
    return 100.0 * correct / len(images)
