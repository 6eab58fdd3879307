"""Checks for likely gradient masking, written into the eval JSON (issue: "sanity flags").

A defence that hides its gradients instead of being robust fools gradient-based attacks
(Athalye et al. 2018, "Obfuscated Gradients Give a False Sense of Security"). AutoAttack
warns in the same spirit (Croce & Hein 2020). Three symptoms are checked:

1. zero input gradients: points whose cross-entropy gradient w.r.t. the input is exactly 0;
2. a black-box attack (transfer or Square) stronger than the white-box ones;
3. accuracy that rises with more PGD steps (a working attack only gets stronger).
"""

from __future__ import annotations

import numpy as np

from rslad_tf.common import vocabulary

# Why the checks are skipped for a classifier without gradients (an exported artifact).
NO_GRADIENTS = ("an exported artifact has no input gradients here; the gradient-masking "
                "checks belong to the float checkpoint's eval")
# Percentage points by which an observation must exceed noise to count.
TOLERANCE = 1.0
ZERO_GRADIENT_FRACTION = 0.01  # AutoAttack warns on any; 1% keeps exact-zero flukes quiet
STEP_CHECK = (5, 20)


def zero_gradient_fraction(model, images, labels, batch_size: int = 256) -> float:
    """Fraction of points whose input gradient of the CE loss is exactly zero everywhere."""
    import tensorflow as tf

    from rslad_tf import losses

    zero = 0
    for start in range(0, len(images), batch_size):
        x = tf.convert_to_tensor(images[start:start + batch_size])
        y = tf.convert_to_tensor(labels[start:start + batch_size])
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            loss = losses.cross_entropy(y, tf.cast(model(x, training=False), tf.float32),
                                        reduction="sum")
        grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        zero += int(tf.reduce_sum(tf.cast(
            tf.reduce_all(tf.equal(tf.reshape(grad, [tf.shape(x)[0], -1]), 0.0), axis=1),
            tf.int32)))
    return zero / max(len(images), 1)


def pgd_steps_accuracy(model, images, labels, *, eps, batch_size=256, seed=0,
                       steps=STEP_CHECK) -> dict:
    """PGD (CE, uniform start, step eps/4) accuracy in percent for each step count."""
    from rslad_tf.attacks import AttackSettings
    from rslad_tf.evaluation.core import accuracy_under_attack

    return {int(k): accuracy_under_attack(
        model, images, labels, eps=eps, batch_size=batch_size, seed=seed,
        attack=AttackSettings(loss="ce", start="uniform", steps=int(k), step_fraction=0.25))
        for k in steps}


def masking_warnings(result: dict, zero_fraction: float | None = None,
                     steps_accuracy: dict | None = None) -> list[str]:
    """The warnings (strings) that an eval result and the two measurements call for."""
    warnings = []
    columns = vocabulary.EVAL_COLUMNS
    white = {c.key: result[c.json_key] for c in columns
             if c.kind == vocabulary.WHITE_BOX and c.json_key in result}
    if white:
        strongest_name = min(white, key=white.get)
        for c in columns:
            if (c.black_box and c.json_key in result
                    and result[c.json_key] < white[strongest_name] - TOLERANCE):
                warnings.append(
                    f"black-box {c.key} ({result[c.json_key]:.2f}%) is stronger than the "
                    f"strongest white-box attack {strongest_name} "
                    f"({white[strongest_name]:.2f}%): likely gradient masking")
    if zero_fraction is not None and zero_fraction >= ZERO_GRADIENT_FRACTION:
        warnings.append(f"{100 * zero_fraction:.1f}% of points have an all-zero input gradient: "
                        "gradient-based attacks cannot move them (likely gradient masking)")
    if steps_accuracy:
        ordered = [steps_accuracy[k] for k in sorted(steps_accuracy)]
        if any(b > a + TOLERANCE for a, b in zip(ordered, ordered[1:])):
            warnings.append(f"PGD accuracy rises with more steps ({steps_accuracy}): the attack "
                            "is not converging (likely gradient masking)")
    return warnings


def check(model, images, labels, result: dict, *, eps, batch_size=256, seed=0,
          max_points: int = 500) -> dict:
    """Run the checks on (at most ``max_points`` of) the evaluated points; returns the
    ``sanity`` object of the eval JSON."""
    images, labels = images[:max_points], np.asarray(labels)[:max_points]
    zero = zero_gradient_fraction(model, images, labels, batch_size)
    steps = pgd_steps_accuracy(model, images, labels, eps=eps, batch_size=batch_size, seed=seed)
    return {
        "n_points": int(len(images)),
        "zero_gradient_fraction": zero,
        "pgd_accuracy_by_steps": {str(k): v for k, v in steps.items()},
        "warnings": masking_warnings(result, zero, steps),
    }


def skipped(reason: str) -> dict:
    """The ``sanity`` object of an evaluation that could not run the checks, and why."""
    return {"n_points": 0, "zero_gradient_fraction": None, "pgd_accuracy_by_steps": None,
            "warnings": [], "skipped": reason}
