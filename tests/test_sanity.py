"""Gradient-masking flags on a model built to mask its gradients."""

import keras
import pytest

from rslad_tf.evaluation import sanity
from rslad_tf.evaluation.suite import evaluate


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


@pytest.mark.parametrize("steps,warned", [({5: 40.0, 20: 30.0}, False),
                                          ({5: 30.0, 20: 45.0}, True)])
def test_accuracy_rising_with_steps_is_flagged(steps, warned):
    warnings = sanity.masking_warnings({"pgd_sat_acc": 30.0}, 0.0, steps)
    assert any("rises with more steps" in w for w in warnings) == warned


class RoundOnly(keras.layers.Layer):
    """Rounds pixels with no gradient path at all (TensorFlow returns None for it)."""

    def call(self, x):
        return keras.ops.round(x)


def test_model_without_input_gradient_is_attacked_and_flagged(trained_digits_model):
    """No gradient path to the input: the attacks take zero steps instead of failing, and
    the sanity check names the masking."""
    inputs = keras.Input((8, 8, 1))
    masked = keras.Model(inputs, trained_digits_model(RoundOnly()(inputs)))
    result = evaluate(masked, dataset="digits", n_examples=64,
                      attacks=["clean", "fgsm", "pgd_sat", "cw_inf", "autoattack"],
                      autoattack_version="custom", autoattack_attacks=["apgd-ce", "fab-t"],
                      autoattack_options={"n_iter": 3, "n_target_classes": 2})
    assert result["fgsm_acc"] == result["clean_acc"]  # no step without a gradient
    assert result["sanity"]["zero_gradient_fraction"] == 1.0
    assert any("all-zero input gradient" in w for w in result["sanity"]["warnings"])
