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
        logits_adv = ard_terms["logits"]
        ard_terms.pop("logits_nat")
        introspective = self.epoch >= self.warmup_epochs

        def introspective_terms():
            # The reference (IAD-I.py) evaluates S(x) in training mode a second time for
            # the self-distillation target, and only after the warm-up: then BatchNorm's
            # moving statistics move once more per step. The teacher's trust T(x') is
            # asked for only here too: in the warm-up the step is ARD's, and skipping the
            # teacher's pass on x' there saves a quarter of a digits IAD warm-up epoch
            # (1.75 -> 1.33 s, width-4 student, one core: docs/speed.md).
            logits_nat = ops.cast(self.student(x, training=True), "float32")
            total, _, self_kl = losses.iad_loss(
                ctx["teacher_logits"], self.teacher_logits(x_adv), logits_adv, logits_nat,
                y, temperature=self.temperature, beta=self.beta, reduction=self.reduction)
            return total, self_kl

        def warmup_terms():
            return ard_terms["loss"], ops.zeros_like(ard_terms["loss"])

        # self_kl is the loss's self-distillation term: 0 in the warm-up, where it is absent.
        total, self_kl = backends.cond(introspective, introspective_terms, warmup_terms)
        return {**ard_terms, "loss": total, "self_kl": self_kl}
