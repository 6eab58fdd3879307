"""Invariants of the PGD engine and its agreement with cleverhans' implementations."""

import numpy as np
import pytest
import tensorflow as tf

from rslad_tf import attacks
from rslad_tf.evaluation.core import accuracy_under_attack

EPS = 0.2
TOL = 1e-6  # float32 rounding of x +- eps


def _batch(digits_data, n=64):
    _, (x, y) = digits_data
    return x[:n], y[:n]


@pytest.mark.parametrize("loss", ["ce", "kl", "cw"])
@pytest.mark.parametrize("start", ["none", "uniform", "normal"])
def test_perturbation_within_eps_and_images_in_unit_range(trained_digits_model, digits_data,
                                                          loss, start):
    x, y = _batch(digits_data)
    target = tf.nn.softmax(trained_digits_model(x, training=False))
    x_adv = attacks.pgd(trained_digits_model, x, y, eps=EPS, steps=5, loss=loss, start=start,
                        target_probs=target, seed=3).numpy()
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert np.max(np.abs(x_adv - x)) <= EPS + TOL
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.max(np.abs(x_adv - x)) > 0.5 * EPS  # it moved


def test_attack_leaves_weights_and_batchnorm_statistics_untouched(trained_digits_model,
                                                                  digits_data):
    x, y = _batch(digits_data)
    before = [w.numpy().copy() for w in trained_digits_model.weights]
    names = [w.path for w in trained_digits_model.weights]
    assert any("moving_mean" in n for n in names)  # the model has BN statistics
    for settings in attacks.PROTOCOL.values():
        settings.run(trained_digits_model, x, y, eps=EPS, seed=0)
    attacks.pgd(trained_digits_model, x, y, eps=EPS, loss="kl", start="normal", seed=0,
                target_probs=tf.one_hot(y, 10))
    for name, old, new in zip(names, before, trained_digits_model.weights):
        np.testing.assert_array_equal(old, new.numpy(), err_msg=name)


def test_eps_zero_returns_the_input(trained_digits_model, digits_data):
    x, y = _batch(digits_data)
    for start in ("none", "uniform", "normal"):
        x_adv = attacks.pgd(trained_digits_model, x, y, eps=0.0, steps=3, start=start, seed=1)
        np.testing.assert_array_equal(x_adv.numpy(), x)
    np.testing.assert_array_equal(attacks.fgsm(trained_digits_model, x, y, eps=0.0).numpy(), x)


def _sum_model():
    """logits = (sum of the pixels, 0, ..., 0): the input gradient of CE on label 1 is
    softmax(logits)[0] > 0 at every pixel and every point, so each step is known: +step."""
    import keras

    inputs = keras.Input((8, 8, 1))
    dense = keras.layers.Dense(10, use_bias=False)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    kernel = np.zeros((64, 10), np.float32)
    kernel[:, 0] = 1.0
    dense.kernel.assign(kernel)
    return model


@pytest.mark.parametrize("start", ["uniform", "normal"])
def test_clip_start_decides_where_the_first_gradient_is_taken(digits_data, start):
    """``clip_start=True`` clips x + noise before the first step (Madry's code, RSLAD's
    evaluation PGD); ``clip_start=False`` only after it (the ARD, IAD, TRADES, RSLAD and
    AdaAD training attacks): a pixel at 0 with noise -0.15 and a +0.05 step ends at 0, not
    at 0.05. Both results stay in the eps ball and [0, 1], zero steps included."""
    from rslad_tf.attacks.engine import random_start

    x = digits_data[0][0][:16]
    assert (x == 0.0).mean() > 0.2 and (x == 1.0).any()  # digits: many pixels at 0 and 1
    y = np.ones(16, np.int32)
    model, step = _sum_model(), EPS / 4
    raw = random_start(tf.constant(x), EPS, start, 7, clip=False).numpy()
    lower, upper = np.maximum(x - EPS, 0.0), np.minimum(x + EPS, 1.0)
    expected = {True: np.clip(np.clip(raw, lower, upper) + step, lower, upper),
                False: np.clip(raw + step, lower, upper)}
    for clip in (True, False):
        kw = dict(eps=EPS, step_size=step, start=start, seed=7, clip_start=clip)
        got = attacks.pgd_graph(model, x, y, steps=1, **kw).numpy()
        np.testing.assert_allclose(got, expected[clip], atol=TOL, err_msg=str(clip))
        none = attacks.pgd_graph(model, x, y, steps=0, **kw).numpy()
        np.testing.assert_allclose(none, np.clip(raw, lower, upper), atol=TOL)
    # The two differ where the noise pushed a pixel below 0 (or above 1): by up to a step
    # for the uniform start, by the noise itself (about 1e-3) for the normal one.
    assert (np.abs(expected[True] - expected[False]) > TOL).any()


def test_pgd_at_least_as_strong_as_fgsm(trained_digits_model, digits_data):
    _, (x, y) = digits_data
    clean = accuracy_under_attack(trained_digits_model, x, y)
    fgsm = accuracy_under_attack(trained_digits_model, x, y, attack=attacks.PROTOCOL["fgsm"],
                                 eps=0.1)
    pgd = accuracy_under_attack(trained_digits_model, x, y, attack=attacks.PROTOCOL["pgd_sat"],
                                eps=0.1)
    assert clean > 85.0
    assert pgd <= fgsm <= clean


def test_same_seed_same_result_and_seed_generator_advances(trained_digits_model, digits_data):
    import keras

    x, y = _batch(digits_data)
    a = attacks.pgd(trained_digits_model, x, y, eps=EPS, steps=2, seed=7).numpy()
    b = attacks.pgd(trained_digits_model, x, y, eps=EPS, steps=2, seed=7).numpy()
    np.testing.assert_array_equal(a, b)
    gen = keras.random.SeedGenerator(7)
    c = attacks.pgd(trained_digits_model, x, y, eps=EPS, steps=0, seed=gen).numpy()
    d = attacks.pgd(trained_digits_model, x, y, eps=EPS, steps=0, seed=gen).numpy()
    assert not np.array_equal(c, d)


def test_protocol_settings_match_the_paper():
    p = attacks.PROTOCOL
    eps = 8 / 255
    assert (p["fgsm"].steps, p["fgsm"].start, p["fgsm"].step_size(eps)) == (1, "none", eps)
    assert (p["pgd_sat"].steps, p["pgd_sat"].start, p["pgd_sat"].loss) == (20, "uniform", "ce")
    assert p["pgd_sat"].step_size(eps) == pytest.approx(2 / 255)
    assert (p["pgd_trades"].steps, p["pgd_trades"].start) == (20, "uniform")
    assert p["pgd_trades"].step_size(eps) == pytest.approx(0.003)
    assert (p["cw_inf"].loss, p["cw_inf"].steps, p["cw_inf"].kappa) == ("cw", 20, 50.0)
    assert p["cw_inf"].step_size(eps) == pytest.approx(2 / 255)


def test_bad_arguments_are_refused(trained_digits_model, digits_data):
    x, y = _batch(digits_data, 4)
    with pytest.raises(ValueError, match="attack loss"):
        attacks.pgd(trained_digits_model, x, y, eps=EPS, loss="hinge")
    with pytest.raises(ValueError, match="random start"):
        attacks.pgd(trained_digits_model, x, y, eps=EPS, start="gaussian")
    with pytest.raises(ValueError, match="target_probs"):
        attacks.pgd(trained_digits_model, x, y, eps=EPS, loss="kl")


# -- cross-check against cleverhans (an independent implementation named by our user) ----
def _agreement(ours, theirs, eps):
    diff = np.abs(np.asarray(ours) - np.asarray(theirs))
    assert diff.max() <= 2 * eps + TOL
    # Pixels whose input gradient is numerically zero may get a different sign; they are rare.
    return float(np.mean(diff < 1e-6))


def test_fgsm_matches_cleverhans(trained_digits_model, digits_data):
    from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

    x, y = _batch(digits_data)
    ours = attacks.fgsm(trained_digits_model, x, y, eps=EPS)
    theirs = fast_gradient_method(lambda z: trained_digits_model(z, training=False),
                                  tf.constant(x), EPS, np.inf, clip_min=0.0, clip_max=1.0,
                                  y=tf.constant(y), sanity_checks=False)
    assert _agreement(ours, theirs, EPS) > 0.999


def test_pgd_matches_cleverhans(trained_digits_model, digits_data):
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    x, y = _batch(digits_data)
    ours = attacks.pgd(trained_digits_model, x, y, eps=EPS, steps=10, step_size=EPS / 4,
                       start="none")
    theirs = projected_gradient_descent(
        lambda z: trained_digits_model(z, training=False), tf.constant(x), EPS, EPS / 4, 10,
        np.inf, clip_min=0.0, clip_max=1.0, y=tf.constant(y), rand_init=False,
        sanity_checks=False)
    assert _agreement(ours, theirs, EPS) > 0.99
    pred_ours = np.argmax(trained_digits_model(ours, training=False), -1)
    pred_theirs = np.argmax(trained_digits_model(theirs, training=False), -1)
    assert np.mean(pred_ours == pred_theirs) >= 0.95
