"""IAD-I (Zhu et al. 2022): introspective adversarial distillation."""

import keras
import tensorflow as tf

from rslad_tf import losses
from rslad_tf.methods.ard import ARDModel


@keras.saving.register_keras_serializable(package="rslad_tf")
class IADModel(ARDModel):
    """IAD-I: plain ARD for the first ``warmup_epochs`` epochs, then
    tau^2 * KL(T^tau(x) || S^tau(x')) + mean_i (1 - a_i) * KL(S(x_i) || S(x'_i)) with
    a_i = softmax(T(x'_i))[y_i] ** beta (the teacher's trust on the student's adversarial
    example). Reference defaults: warm-up 60 epochs, beta = 0.1, tau = 30. The epoch comes
    from `fit` (the base class keeps the ``epoch`` variable in step)."""

    method_name = "iad"
    term_names = ("kl", "ce", "self_kl")

    def __init__(self, student, teacher, *, beta=0.1, warmup_epochs=60, **kwargs):
        super().__init__(student, teacher, **kwargs)
        self.beta = float(beta)
        self.warmup_epochs = int(warmup_epochs)

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta": self.beta,
                "warmup_epochs": self.warmup_epochs}

    def loss_terms(self, x, x_adv, y, ctx):
        ard_terms = super().loss_terms(x, x_adv, y, ctx)
        logits_adv = ard_terms["logits"]
        logits_nat = tf.cast(self.student(x, training=True), tf.float32)
        teacher_adv = self.teacher_logits(x_adv)
        iad_total, _, self_kl = losses.iad_loss(
            ctx["teacher_logits"], teacher_adv, logits_adv, logits_nat, y,
            temperature=self.temperature, beta=self.beta, reduction=self.reduction)
        introspective = self.epoch >= self.warmup_epochs
        total = tf.where(introspective, iad_total, ard_terms["loss"])
        return {**ard_terms, "loss": total, "self_kl": self_kl}
