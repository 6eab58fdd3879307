"""Accuracy under attack: the small core of evaluation that training shares (its
PGD-20 checkpoint selection) and that the suite and the sanity checks build on."""

from __future__ import annotations

import numpy as np


def predict_labels(model, images, batch_size: int = 256) -> np.ndarray:
    """Arg-max predictions of ``model`` in inference mode, batch by batch. [N] int. Any
    Keras backend."""
    from keras import ops

    out = []
    for start in range(0, len(images), batch_size):
        logits = model(ops.convert_to_tensor(images[start:start + batch_size]), training=False)
        out.append(np.argmax(ops.convert_to_numpy(ops.cast(logits, "float32")), axis=-1))
    return np.concatenate(out) if out else np.zeros([0], np.int64)


def adversarial_examples(source, images, labels, *, attack, eps: float,
                         batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """The images ``attack`` (an `rslad_tf.attacks.AttackSettings`) crafts on ``source``,
    batch by batch. One generator seeded with ``seed`` serves all batches, so a given seed
    and batch size give the same random starts whatever else is evaluated."""
    import keras
    from keras import ops

    labels = np.asarray(labels)
    generator = keras.random.SeedGenerator(seed)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        y = labels[start:start + batch_size]
        size = len(x)
        if len(images) > batch_size and size < batch_size:
            # Pad the last batch to the full size so the compiled attack is not traced
            # again for one more shape. Each example's attack is independent of the
            # others (loss summed over the batch, inference mode): padding changes nothing
            # but the random-start draw of that batch.
            pad = batch_size - size
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            y = np.concatenate([y, np.repeat(y[-1:], pad, axis=0)])
        out.append(ops.convert_to_numpy(attack.run(source, x, y, eps=eps, seed=generator))[:size])
    return np.concatenate(out)


def correct_under_attack(model, images, labels, *, attack=None, eps: float = 0.0,
                         batch_size: int = 256, seed: int = 0, source_model=None) -> np.ndarray:
    """Per point: does ``model`` classify the attacked image correctly? [N] bool.

    ``attack``: an `rslad_tf.attacks.AttackSettings` or None (clean). ``source_model``: craft
    the attack on this model instead (transfer attack); ``model`` still classifies. The
    images are those of `adversarial_examples` (same seed and batch size, same images).
    """
    labels = np.asarray(labels)
    if len(images) == 0:
        raise ValueError("no examples to evaluate")
    if attack is not None:
        images = adversarial_examples(model if source_model is None else source_model,
                                      images, labels, attack=attack, eps=eps,
                                      batch_size=batch_size, seed=seed)
    return predict_labels(model, images, batch_size) == labels


def accuracy_under_attack(model, images, labels, *, attack=None, eps: float = 0.0,
                          batch_size: int = 256, seed: int = 0) -> float:
    """Accuracy in percent of ``model`` on ``images`` attacked by ``attack``.

    ``attack``: an `rslad_tf.attacks.AttackSettings` (e.g. ``PROTOCOL["pgd_trades"]``) or
    None for clean accuracy. One seeded generator serves all batches, so the result is
    reproducible for a given seed and batch size.
    """
    flags = correct_under_attack(model, images, labels, attack=attack, eps=eps,
                                 batch_size=batch_size, seed=seed)
    return 100.0 * float(np.mean(flags))
