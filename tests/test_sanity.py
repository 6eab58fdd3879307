"""Gradient-masking flags on a model built to mask its gradients."""

import keras
import numpy as np
import pytest

from rslad_tf import sanity
from rslad_tf.evaluate import evaluate


@keras.saving.register_keras_serializable(package="rslad_tf_tests")
class Quantize(keras.layers.Layer):
    """Rounds pixels to 2 levels: the gradient through it is zero almost everywhere."""

    def call(self, x):
        # round() has no registered gradient; "+ 0 * x" turns that into an exact zero.
        return keras.ops.round(x) + 0.0 * x


def _masked(model):
    inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, model(Quantize()(inputs)))


def test_masked_model_is_flagged(trained_digits_model):
    masked = _masked(trained_digits_model)
    result = evaluate(masked, dataset="digits", n_examples=128,
                      attacks=["clean", "pgd_sat", "transfer_pgd"],
                      surrogate=trained_digits_model)
    flags = result["sanity"]
    assert flags["zero_gradient_fraction"] == 1.0
    text = " ".join(flags["warnings"])
    assert "all-zero input gradient" in text
    assert "black-box transfer_pgd" in text  # the surrogate's examples get through


def test_healthy_model_has_no_zero_gradient_warning(trained_digits_model):
    result = evaluate(trained_digits_model, dataset="digits", n_examples=128,
                      attacks=["clean", "pgd_sat"])
    assert result["sanity"]["zero_gradient_fraction"] < 0.01
    assert not any("zero input gradient" in w for w in result["sanity"]["warnings"])
    steps = result["sanity"]["pgd_accuracy_by_steps"]
    assert steps["20"] <= steps["5"] + sanity.TOLERANCE


@pytest.mark.parametrize("steps,warned", [({5: 40.0, 20: 30.0}, False), ({5: 30.0, 20: 45.0}, True)])
def test_accuracy_rising_with_steps_is_flagged(steps, warned):
    warnings = sanity.masking_warnings({"pgd_sat_acc": 30.0}, 0.0, steps)
    assert any("rises with more steps" in w for w in warnings) == warned
