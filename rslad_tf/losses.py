"""Pure loss functions of logits: the outer losses of RSLAD and its baselines.

Every function takes logits (float tensors [batch, classes]) and returns a scalar (or a
per-sample vector with ``reduction="none"``). The default scale is the one of each method's
reference implementation (docs/paper.md sections 1-2); the reduction is always an explicit
argument because it changes the effective learning rate:

- ``"mean"``: average over batch x classes (PyTorch ``KLDivLoss()`` default, used by the
  RSLAD and ARD reference code): 1/num_classes times the per-sample batch mean.
- ``"batchmean"``: sum over classes, mean over the batch (the mathematical KL; TRADES;
  ``keras.losses.KLDivergence``).
- ``"sum"``: sum over batch and classes (used by the inner maximisation).
- ``"none"``: per-sample KL, summed over classes, shape [batch].

Written with ``keras.ops`` so they run under any Keras backend and inside ``tf.function``.
"""

from __future__ import annotations

from keras import ops

REDUCTIONS = ("mean", "batchmean", "sum", "none")

# RSLAD's reference KL adds 1e-5 inside the log of the target (docs/paper.md section 1).
RSLAD_LOG_EPS = 1e-5


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")


def _reduce_elementwise(elementwise, reduction: str):
    """Reduce an element-wise [batch, classes] loss."""
    _check_reduction(reduction)
    if reduction == "mean":
        return ops.mean(elementwise)
    per_sample = ops.sum(elementwise, axis=-1)  # [batch]
    if reduction == "batchmean":
        return ops.mean(per_sample)
    if reduction == "sum":
        return ops.sum(per_sample)
    return per_sample


def kl_divergence(target_probs, log_probs, *, reduction: str = "mean", log_eps: float = 0.0):
    """KL(target || model) from target probabilities and model log-probabilities.

    Element-wise ``b * (log(b + log_eps) - a)`` with ``b = target_probs`` and
    ``a = log_probs``, then reduced. With ``log_eps = 0`` a zero target contributes zero
    (PyTorch's ``KLDivLoss`` convention, ``xlogy``); RSLAD's reference uses ``log_eps=1e-5``.
    """
    target_probs = ops.convert_to_tensor(target_probs)
    if log_eps:
        log_target = ops.log(target_probs + log_eps)
        elementwise = target_probs * (log_target - log_probs)
    else:
        # b * log(b) with 0 * log(0) = 0 and a finite gradient at b = 0.
        safe = ops.where(target_probs > 0, target_probs, ops.ones_like(target_probs))
        elementwise = target_probs * (ops.log(safe) - log_probs)
    return _reduce_elementwise(elementwise, reduction)


def cross_entropy(labels, logits, *, reduction: str = "batchmean"):
    """Softmax cross-entropy with integer labels. ``"mean"`` and ``"batchmean"`` both give
    the batch mean here (CE has one term per sample); ``"sum"``/``"none"`` as usual."""
    _check_reduction(reduction)
    labels = ops.cast(labels, "int32")
    log_probs = ops.log_softmax(logits, axis=-1)
    nll = -ops.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]  # [batch]
    if reduction == "none":
        return nll
    if reduction == "sum":
        return ops.sum(nll)
    return ops.mean(nll)


def rslad_loss(teacher_logits, student_logits_adv, student_logits_nat, *,
               adv_weight: float = 5.0 / 6.0, nat_weight: float = 1.0 / 6.0,
               reduction: str = "mean", scale: float = 1.0):
    """RSLAD outer loss (Zi et al. 2021, eq. 7 and the reference code):

        scale * (5/6 * KL(T(x) || S(x')) + 1/6 * KL(T(x) || S(x)))

    with soft labels T(x) from the teacher on clean images, no temperature and no hard
    labels. Default reduction "mean" (batch x classes) is the reference scale; the
    reference multiplies by ``scale=10`` for CIFAR-100. Returns (total, adv_term, nat_term),
    the terms before weighting and scaling. No gradient flows into the teacher logits.
    """
    soft = ops.stop_gradient(ops.softmax(teacher_logits, axis=-1))
    kl_adv = kl_divergence(soft, ops.log_softmax(student_logits_adv, axis=-1),
                           reduction=reduction, log_eps=RSLAD_LOG_EPS)
    kl_nat = kl_divergence(soft, ops.log_softmax(student_logits_nat, axis=-1),
                           reduction=reduction, log_eps=RSLAD_LOG_EPS)
    total = scale * (adv_weight * kl_adv + nat_weight * kl_nat)
    return total, kl_adv, kl_nat


def trades_loss(logits_nat, logits_adv, labels, *, beta: float = 6.0,
                reduction: str = "batchmean"):
    """TRADES outer loss (Zhang et al. 2019): CE(S(x), y) + beta * KL(S(x) || S(x')).

    The reference sums the KL over classes and divides by the batch size ("batchmean").
    Gradients flow through both S(x) and S(x'), as in the reference. Returns
    (total, ce_term, kl_term).
    """
    ce = cross_entropy(labels, logits_nat, reduction="batchmean" if reduction != "none" else "none")
    kl = kl_divergence(ops.softmax(logits_nat, axis=-1), ops.log_softmax(logits_adv, axis=-1),
                       reduction=reduction)
    return ce + beta * kl, ce, kl


def ard_loss(teacher_logits_nat, student_logits_adv, student_logits_nat, labels, *,
             alpha: float = 1.0, temperature: float = 30.0, reduction: str = "mean"):
    """ARD outer loss (Goldblum et al. 2020):

        alpha * tau^2 * KL(T^tau(x) || S^tau(x')) + (1 - alpha) * CE(S(x), y)

    where ``X^tau`` is softmax(logits / tau). The reference uses PyTorch's ``KLDivLoss()``
    default, i.e. reduction "mean" over batch x classes. Returns (total, kl_term, ce_term).
    """
    tau = float(temperature)
    soft = ops.stop_gradient(ops.softmax(teacher_logits_nat / tau, axis=-1))
    kl = kl_divergence(soft, ops.log_softmax(student_logits_adv / tau, axis=-1),
                       reduction=reduction)
    ce = cross_entropy(labels, student_logits_nat)
    return alpha * tau * tau * kl + (1.0 - alpha) * ce, kl, ce


def iad_loss(teacher_logits_nat, teacher_logits_adv, student_logits_adv, student_logits_nat,
             labels, *, temperature: float = 30.0, beta: float = 0.1, reduction: str = "mean"):
    """IAD-I outer loss (Zhu et al. 2022, "Reliable Adversarial Distillation with Unreliable
    Teachers"), the form used after its warm-up epochs (docs/paper.md section 2):

        tau^2 * KL(T^tau(x) || S^tau(x')) + mean_i (1 - a_i) * KL(S(x_i) || S(x'_i)),
        a_i = softmax(T(x'_i))[y_i] ** beta

    ``a_i`` is the teacher's confidence in the true class on the student's adversarial
    example: the less the teacher is trusted there, the more the student learns from its own
    clean prediction. The first KL uses ``reduction``; the reference (IAD-I.py) sums it over
    classes and divides by the batch, "batchmean", which `IADModel` and the presets pass
    (this function's own default stays "mean"). The second is a per-sample KL weighted and
    averaged over the batch. Returns
    (total, distill_term, self_term).
    """
    tau = float(temperature)
    soft = ops.stop_gradient(ops.softmax(teacher_logits_nat / tau, axis=-1))
    distill = kl_divergence(soft, ops.log_softmax(student_logits_adv / tau, axis=-1),
                            reduction=reduction)
    labels = ops.cast(labels, "int32")
    teacher_adv_probs = ops.stop_gradient(ops.softmax(teacher_logits_adv, axis=-1))
    trust = ops.take_along_axis(teacher_adv_probs, labels[:, None], axis=-1)[:, 0] ** beta
    self_kl = kl_divergence(ops.softmax(student_logits_nat, axis=-1),
                            ops.log_softmax(student_logits_adv, axis=-1), reduction="none")
    self_term = ops.mean((1.0 - trust) * self_kl)
    return tau * tau * distill + self_term, distill, self_term


def cw_margin(logits, labels, *, kappa: float = 50.0):
    """Carlini-Wagner margin loss per sample (the CW_inf attack objective):

        -max(Z_y - max_{j != y} Z_j, -kappa)

    Larger means more misclassified; clipped at kappa so confidently wrong points stop
    contributing. Returns shape [batch]."""
    labels = ops.cast(labels, "int32")
    num_classes = ops.shape(logits)[-1]
    onehot = ops.one_hot(labels, num_classes, dtype=logits.dtype)
    true_logit = ops.sum(onehot * logits, axis=-1)
    # Push the true class far down so it cannot be the "other" maximum.
    other_logit = ops.max(logits - onehot * 1e4, axis=-1)
    return -ops.maximum(true_logit - other_logit, -kappa)
