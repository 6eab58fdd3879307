"""IGDM: the term against its formula, zero when the student is the teacher, its linear ramp,
and its composition with RSLAD (the same term added to RSLAD's loss)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rslad_tf.methods import AdaADModel, RSLADModel
from rslad_tf.methods.igdm import igdm_divergence, igdm_weight

RNG = np.random.default_rng(3)
B, K = 5, 10
TP, TM, SP, SM = (RNG.normal(size=(B, K)).astype(np.float32) * 2 for _ in range(4))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kl_batchmean(p_logits, q_logits):
    p, q = _softmax(p_logits.astype(np.float64)), _softmax(q_logits.astype(np.float64))
    return float((p * (np.log(p) - np.log(q))).sum(axis=1).mean())


def test_igdm_divergence_matches_the_formula():
    got = float(igdm_divergence(TP, TM, SP, SM))
    want = _kl_batchmean(TP - TM, SP - SM)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Calibration: matching the outputs at x' only (plain distillation) is a different number.
    assert abs(_kl_batchmean(TP, SP) - got) > 1e-3 * got


def test_igdm_is_zero_when_the_student_equals_the_teacher():
    assert float(igdm_divergence(TP, TM, TP, TM)) == pytest.approx(0.0, abs=1e-7)
    # Only differences matter: a student offset by a constant logit vector matches too.
    offset = RNG.normal(size=(1, K)).astype(np.float32)
    assert float(igdm_divergence(TP, TM, TP + offset, TM + offset)) == pytest.approx(0.0, abs=1e-6)


def test_igdm_weight_ramps_linearly_over_the_run():
    # The paper counts epochs from 1: the 0-based epoch e weighs (e + 1) / E.
    assert [float(igdm_weight(2.0, e, 4)) for e in range(4)] == [0.5, 1.0, 1.5, 2.0]


def _dense_model(seed):
    """No BatchNorm, so that training and inference mode compute the same function."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(16, activation="relu"), keras.layers.Dense(K)])


def _points():
    rng = np.random.default_rng(0)
    x = rng.random((4, 8, 8, 1)).astype(np.float32) * 0.8 + 0.1
    delta = (rng.random(x.shape).astype(np.float32) - 0.5) * 0.2
    return tf.constant(x), tf.constant(x + delta)


@pytest.mark.parametrize("cls", [RSLADModel, AdaADModel])
def test_the_term_vanishes_for_a_student_equal_to_its_teacher(cls):
    teacher = _dense_model(1)
    student = _dense_model(1)  # the same weights
    method = cls(student, teacher, igdm_alpha=1.0, igdm_epochs=10)
    x, x_adv = _points()
    terms = method.loss_terms(x, x_adv, None, method.prepare(x, None))
    assert float(terms["igdm"]) == pytest.approx(0.0, abs=1e-7)


def test_rslad_plus_igdm_adds_the_ramped_term_to_rslad():
    teacher, x_and_adv = _dense_model(1), _points()
    x, x_adv = x_and_adv
    plain = RSLADModel(_dense_model(2), teacher)
    with_igdm = RSLADModel(_dense_model(2), teacher, igdm_alpha=3.0, igdm_epochs=10)
    with_igdm.epoch.assign(4)  # weight 3 * 5 / 10
    base = plain.loss_terms(x, x_adv, None, plain.prepare(x, None))
    terms = with_igdm.loss_terms(x, x_adv, None, with_igdm.prepare(x, None))
    student, delta = with_igdm.student, x_adv - x
    want_term = _kl_batchmean((teacher(x_adv) - teacher(x - delta)).numpy(),
                              (student(x_adv) - student(x - delta)).numpy())
    np.testing.assert_allclose(float(terms["igdm"]), want_term, rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss"]), float(base["loss"]) + 1.5 * want_term,
                               rtol=1e-5)
    assert "igdm" not in base and "igdm" in {m.name for m in with_igdm.metrics}


def test_igdm_needs_the_run_length():
    with pytest.raises(ValueError, match="igdm_epochs"):
        RSLADModel(_dense_model(0), _dense_model(1), igdm_alpha=1.0)
