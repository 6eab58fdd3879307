"""IAD-I (Zhu et al. 2022): introspective adversarial distillation."""

import keras
from keras import ops

from rslad_tf import backends, losses
from rslad_tf.methods.ard import ARDModel


@keras.saving.register_keras_serializable(package="rslad_tf")
class IADModel(ARDModel):
    """IAD-I: plain ARD for the first ``warmup_epochs`` epochs, then
    tau^2 * KL(T^tau(x) || S^tau(x')) + mean_i (1 - a_i) * KL(S(x_i) || S(x'_i)) with
    a_i = softmax(T(x'_i))[y_i] ** beta (the teacher's trust on the student's adversarial
    example). Reference defaults: warm-up 60 epochs, beta = 0.1, tau = 30, and the
    distillation KL summed over classes and averaged over the batch ("batchmean":
    IAD-I.py divides the per-sample sums by the batch size, in the warm-up too), where ARD
    reduces "mean". The epoch comes from `fit` (the base class keeps the ``epoch`` variable
    in step)."""

    method_name = "iad"
    term_names = ("kl", "ce", "self_kl")

    def __init__(self, student, teacher, *, beta=0.1, warmup_epochs=60, reduction="batchmean",
                 **kwargs):
        super().__init__(student, teacher, reduction=reduction, **kwargs)
        self.beta = float(beta)
        self.warmup_epochs = int(warmup_epochs)

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta": self.beta,
                "warmup_epochs": self.warmup_epochs}

    def loss_terms(self, x, x_adv, y, ctx):
        ard_terms = super().loss_terms(x, x_adv, y, ctx)
        logits_adv, ard_logits_nat = ard_terms["logits"], ard_terms.pop("logits_nat")
        introspective = self.epoch >= self.warmup_epochs
        # The reference (IAD-I.py) evaluates S(x) in training mode a second time for the
        # self-distillation target, and only after the warm-up: then BatchNorm's moving
        # statistics move once more per step; in the warm-up the step is ARD's. The second
        # pass gives the same logits and gradient as ARD's S(x) (training mode normalises
        # with the batch's own statistics), so the warm-up reuses those.
        logits_nat = backends.cond(
            introspective, lambda: ops.cast(self.student(x, training=True), "float32"),
            lambda: ard_logits_nat)
        teacher_adv = self.teacher_logits(x_adv)
        iad_total, _, self_kl = losses.iad_loss(
            ctx["teacher_logits"], teacher_adv, logits_adv, logits_nat, y,
            temperature=self.temperature, beta=self.beta, reduction=self.reduction)
        total = ops.where(introspective, iad_total, ard_terms["loss"])
        return {**ard_terms, "loss": total, "self_kl": self_kl}
