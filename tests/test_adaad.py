"""AdaAD and AdaIAD: the losses against their formulas on fixed logits, the attack against a
hand-written step through both models, and the teacher left untouched."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rslad_tf import models
from rslad_tf.data import make_dataset
from rslad_tf.methods import METHODS, AdaADModel, AdaIADModel
from rslad_tf.methods.adaad import adaad_loss

RNG = np.random.default_rng(7)
B, K = 6, 10
T_ADV, T_NAT, S_ADV, S_NAT = (RNG.normal(size=(B, K)).astype(np.float32) * 3 for _ in range(4))
LABELS = RNG.integers(0, K, size=B)
TOL = 1e-6


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kl_rows(p_logits, q_logits):
    """Per-example KL(softmax(p) || softmax(q)) in float64."""
    p, q = _softmax(p_logits.astype(np.float64)), _softmax(q_logits.astype(np.float64))
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


@pytest.mark.parametrize("reduction, divide", [("mean", B * K), ("batchmean", B)])
def test_adaad_loss_matches_the_formula(reduction, divide):
    alpha = 0.7
    total, kl_adv, kl_nat = adaad_loss(T_ADV, T_NAT, S_ADV, S_NAT, alpha=alpha,
                                       reduction=reduction)
    want_adv = _kl_rows(T_ADV, S_ADV).sum() / divide
    want_nat = _kl_rows(T_NAT, S_NAT).sum() / divide
    np.testing.assert_allclose(float(kl_adv), want_adv, rtol=TOL)
    np.testing.assert_allclose(float(kl_nat), want_nat, rtol=TOL)
    np.testing.assert_allclose(float(total), alpha * want_adv + (1 - alpha) * want_nat, rtol=TOL)
    # Calibration: the clean teacher in the adversarial term (RSLAD's target) is far off.
    wrong = _kl_rows(T_NAT, S_ADV).sum() / divide
    assert abs(float(kl_adv) - wrong) > 100 * TOL * abs(wrong)


def _tiny(width, seed, classes=K):
    keras.utils.set_random_seed(seed)
    return models.create("small_cnn", classes, input_shape=(8, 8, 1), width=width)


class _FixedLogits(keras.Model):
    """A "model" whose logits for the batch are given (for loss parity through a method)."""

    def __init__(self, logits):
        super().__init__()
        self.logits_table = tf.constant(logits)
        self.dense = keras.layers.Dense(1)  # a weight, so the optimizer has something

    def call(self, x, training=False):
        # x carries the row index in its first pixel; logits depend on x only through it.
        index = tf.cast(tf.round(x[:, 0, 0, 0] * 100), tf.int32)
        return tf.gather(self.logits_table, index) + 0.0 * self.dense(tf.reshape(x, [-1, 64]))


def test_adaiad_method_switches_to_the_introspective_loss_at_warmup():
    """Through the method: with the teacher returning T_ADV and the student S_ADV at x' and
    S_NAT at x, the loss is tau^2 * distill before the warm-up and the full IAD form after."""
    x = np.zeros((B, 8, 8, 1), np.float32)
    x[:, 0, 0, 0] = np.arange(B) / 100.0
    x_adv = x.copy()
    x_adv[:, 0, 0, 0] += B / 100.0  # rows B..2B-1 of the tables
    teacher = _FixedLogits(np.concatenate([T_NAT, T_ADV]))
    student = _FixedLogits(np.concatenate([S_NAT, S_ADV]))
    method = AdaIADModel(student, teacher, warmup_epochs=3)
    tau2 = 900.0
    trust = _softmax(T_ADV.astype(np.float64))[np.arange(B), LABELS] ** 0.1
    distill = _kl_rows(T_ADV / 30.0, S_ADV / 30.0).sum() / B
    self_term = ((1 - trust) * _kl_rows(S_NAT, S_ADV)).mean()
    for epoch, want in ((2, tau2 * distill), (3, tau2 * distill + self_term)):
        method.epoch.assign(epoch)
        terms = method.loss_terms(tf.constant(x), tf.constant(x_adv), tf.constant(LABELS), {})
        np.testing.assert_allclose(float(terms["loss"]), want, rtol=1e-5)
        np.testing.assert_allclose(float(terms["self_kl"]), self_term, rtol=1e-5)
    # Calibration: the clean teacher T(x) as the distillation target (IAD's) is far off.
    assert abs(_kl_rows(T_NAT / 30.0, S_ADV / 30.0).sum() / B - distill) > 1e-3 * distill


def _bn_model(width, seed, momentum=0.99):
    """A small CNN with BatchNorm (so a train-mode call would change moving statistics)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(width, 3, padding="same"),
        keras.layers.BatchNormalization(momentum=momentum), keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(K)])


def test_adaad_attack_is_one_engine_step_through_both_models_and_changes_no_weight():
    student, teacher = _bn_model(4, 0), _bn_model(6, 1)
    x = tf.constant(np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32))
    method = AdaADModel(student, teacher, epsilon=0.2, step_size=0.05, attack_steps=1,
                        attack_start="none")
    before = [w.numpy().copy() for w in student.weights + teacher.weights]
    x_adv = method.attack(x, None, method.prepare(x, None))
    for old, new in zip(before, student.weights + teacher.weights):
        np.testing.assert_array_equal(old, new.numpy())

    def step(teacher_gradient):
        with tf.GradientTape() as tape:
            tape.watch(x)
            t = teacher(x, training=False)
            if not teacher_gradient:
                t = tf.stop_gradient(t)
            p = tf.nn.softmax(t)
            log_q = tf.nn.log_softmax(student(x, training=False))
            value = tf.reduce_sum(p * (tf.math.log(p) - log_q))
        g = tape.gradient(value, x)
        return tf.clip_by_value(x + 0.05 * tf.sign(g), 0.0, 1.0)

    np.testing.assert_allclose(x_adv.numpy(), step(True).numpy(), atol=1e-7)
    # The teacher's input gradient matters: without it the step differs.
    assert np.abs(x_adv.numpy() - step(False).numpy()).max() > 0.05


class _TrainingSpy(keras.layers.Layer):
    """Records the `training` flag of every call (at trace time inside `fit`)."""

    seen: list = []

    def call(self, x, training=None):
        _TrainingSpy.seen.append(training)
        return x


def _spied_teacher(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)), _TrainingSpy(),
                             keras.layers.Conv2D(6, 3, padding="same"),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(),
                             keras.layers.Flatten(), keras.layers.Dense(K)])


@pytest.mark.parametrize("name, extra", [
    ("adaad", {"igdm_alpha": 1.0, "igdm_epochs": 2}),  # AdaAD's attack and loss, IGDM
    pytest.param("adaiad", {"warmup_epochs": 0}, marks=pytest.mark.slow),
    pytest.param("rslad", {"igdm_alpha": 1.0, "igdm_epochs": 2}, marks=pytest.mark.slow),
])
def test_teacher_is_bit_identical_and_never_in_training_mode(name, extra, digits_data):
    (x, y), _ = digits_data
    teacher = _spied_teacher(1)
    _TrainingSpy.seen = []
    before = [w.numpy().copy() for w in teacher.weights]
    method = METHODS[name](_bn_model(4, 0), teacher, epsilon=0.2, step_size=0.05,
                           attack_steps=1, **extra)
    method.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    method.fit(make_dataset(x[:64], y[:64], 32, shuffle=False), epochs=1, verbose=0)
    assert _TrainingSpy.seen and True not in _TrainingSpy.seen, _TrainingSpy.seen
    for old, new in zip(before, teacher.weights):
        np.testing.assert_array_equal(old, new.numpy())


@pytest.mark.parametrize("method_cls", [AdaADModel, AdaIADModel])
def test_student_passes_run_clean_then_adversarial_as_the_authors_script(method_cls):
    """The BatchNorm moving statistics after the loss's student passes are those of S(x)
    then S(x'); the other order, which the loss alone cannot tell, leaves others. (A fast
    moving average, momentum 0.5, so that the two orders differ well above rounding.)"""
    student, teacher = _bn_model(4, 0, momentum=0.5), _bn_model(6, 1)
    x = tf.constant(np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32))
    method = method_cls(student, teacher, epsilon=0.2, step_size=0.05, attack_steps=2,
                        attack_start="none")
    ctx = method.prepare(x, None)
    x_adv = method.attack(x, None, ctx)
    start = [w.numpy().copy() for w in student.non_trainable_weights]

    def moving_stats_after(*batches):
        for w, value in zip(student.non_trainable_weights, start):
            w.assign(value)
        for batch in batches:
            student(batch, training=True)
        return [w.numpy().copy() for w in student.non_trainable_weights]

    clean_first, adv_first = moving_stats_after(x, x_adv), moving_stats_after(x_adv, x)
    assert max(np.abs(a - b).max() for a, b in zip(clean_first, adv_first)) > 1e-3
    moving_stats_after()  # back to the start
    method.loss_terms(x, x_adv, tf.constant(LABELS[:5]), ctx)
    for got, want in zip(student.non_trainable_weights, clean_first):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)
