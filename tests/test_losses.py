"""Parity of every loss with the reference formulas of docs/paper.md, written here in numpy."""

import numpy as np
import pytest

from rslad_tf import losses

RNG = np.random.default_rng(0)
B, K = 6, 10
T = RNG.normal(size=(B, K)).astype(np.float32) * 3  # teacher logits
SA = RNG.normal(size=(B, K)).astype(np.float32) * 2  # student logits on x'
SN = RNG.normal(size=(B, K)).astype(np.float32) * 2  # student logits on x
Y = RNG.integers(0, K, size=B)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(z):
    return np.log(softmax(z))


def ref_kl_elementwise(b, a, eps=0.0):
    """PyTorch KLDivLoss(a, b) element-wise, optionally with RSLAD's log(b + 1e-5)."""
    if eps:
        return b * (np.log(b + eps) - a)
    return np.where(b > 0, b * (np.log(np.where(b > 0, b, 1)) - a), 0)


def ref_ce(logits, y):
    return -log_softmax(logits)[np.arange(len(y)), y].mean()


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=tol, atol=tol)


def test_rslad_reference_scale_is_mean_over_batch_and_classes():
    b = softmax(T)
    kl_adv = ref_kl_elementwise(b, log_softmax(SA), 1e-5).mean()
    kl_nat = ref_kl_elementwise(b, log_softmax(SN), 1e-5).mean()
    total, adv, nat = losses.rslad_loss(T, SA, SN)
    close(adv, kl_adv)
    close(nat, kl_nat)
    close(total, 5 / 6 * kl_adv + 1 / 6 * kl_nat)
    # The reference scale is exactly 1/num_classes of the per-sample batch-mean KL.
    total_bm, _, _ = losses.rslad_loss(T, SA, SN, reduction="batchmean")
    close(np.asarray(total_bm) / K, total)


def test_rslad_cifar100_scale():
    total, _, _ = losses.rslad_loss(T, SA, SN)
    total10, _, _ = losses.rslad_loss(T, SA, SN, scale=10.0)
    close(total10, 10 * np.asarray(total))


def test_keras_kldivergence_is_num_classes_times_reference():
    import keras

    total, adv, _ = losses.rslad_loss(T, SA, SN, adv_weight=1.0, nat_weight=0.0)
    keras_kl = keras.losses.KLDivergence()(softmax(T), softmax(SA))
    close(keras_kl, K * np.asarray(adv), tol=1e-3)  # keras clips probabilities at 1e-7


def test_trades_reference_formula():
    p_nat = softmax(SN)
    kl = ref_kl_elementwise(p_nat, log_softmax(SA)).sum(-1).mean()  # size_average=False / B
    total, ce, kl_term = losses.trades_loss(SN, SA, Y, beta=6.0)
    close(ce, ref_ce(SN, Y))
    close(kl_term, kl)
    close(total, ref_ce(SN, Y) + 6.0 * kl)


def test_ard_reference_formula():
    tau, alpha = 30.0, 0.7
    kl = ref_kl_elementwise(softmax(T / tau), log_softmax(SA / tau)).mean()
    total, kl_term, ce = losses.ard_loss(T, SA, SN, Y, alpha=alpha, temperature=tau)
    close(kl_term, kl)
    close(total, alpha * tau * tau * kl + (1 - alpha) * ref_ce(SN, Y))


def test_iad_reference_formula():
    tau, beta = 30.0, 0.1
    t_adv = RNG.normal(size=(B, K)).astype(np.float32)
    distill = ref_kl_elementwise(softmax(T / tau), log_softmax(SA / tau)).mean()
    trust = softmax(t_adv)[np.arange(B), Y] ** beta
    self_kl = ref_kl_elementwise(softmax(SN), log_softmax(SA)).sum(-1)
    expected = tau * tau * distill + np.mean((1 - trust) * self_kl)
    total, d, s = losses.iad_loss(T, t_adv, SA, SN, Y, temperature=tau, beta=beta)
    close(d, distill)
    close(s, np.mean((1 - trust) * self_kl))
    close(total, expected)


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
def test_kl_reductions(reduction):
    b, a = softmax(T), log_softmax(SA)
    el = ref_kl_elementwise(b, a)
    expected = {"mean": el.mean(), "batchmean": el.sum(-1).mean(), "sum": el.sum(),
                "none": el.sum(-1)}[reduction]
    close(losses.kl_divergence(b, a, reduction=reduction), expected)


def test_kl_zero_target_has_finite_value_and_gradient():
    import tensorflow as tf

    target = tf.constant([[1.0, 0.0, 0.0]])
    logits = tf.Variable([[0.5, 0.2, -0.3]])
    with tf.GradientTape() as tape:
        value = losses.kl_divergence(target, tf.nn.log_softmax(logits), reduction="sum")
    grad = tape.gradient(value, logits)
    assert np.isfinite(value.numpy()) and np.all(np.isfinite(grad.numpy()))


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        losses.kl_divergence(softmax(T), log_softmax(SA), reduction="avg")


def test_cw_margin():
    logits = np.array([[5.0, 1.0, 2.0], [0.0, 3.0, 100.0]], np.float32)
    labels = np.array([0, 1])
    # Point 0: margin 5 - 2 = 3 -> loss -3; point 1: margin 3 - 100 = -97, clipped at -50.
    close(losses.cw_margin(logits, labels, kappa=50.0), [-3.0, 50.0])


def test_cross_entropy_matches_reference():
    close(losses.cross_entropy(Y, SN), ref_ce(SN, Y))
    close(losses.cross_entropy(Y, SN, reduction="sum"), ref_ce(SN, Y) * B)
