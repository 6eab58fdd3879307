"""ARD (Goldblum et al. 2020): adversarially robust distillation with tempered soft labels."""

import keras
from keras import ops

from rslad_tf import losses
from rslad_tf.methods.base import AdversarialMethod


@keras.saving.register_keras_serializable(package="rslad_tf")
class ARDModel(AdversarialMethod):
    """ARD: min alpha * tau^2 * KL(T^tau(x) || S^tau(x')) + (1 - alpha) * CE(S(x), y),
    x' = PGD on CE(S(.), y) with a uniform start. Reference defaults: tau = 30, alpha = 1,
    KL reduction "mean" (batch x classes). The reference runs the attack with BatchNorm in
    training mode: pass ``attack_batchnorm="train"`` for that (the presets do)."""

    method_name = "ard"
    term_names = ("kl", "ce")
    default_attack_start = "uniform"
    uses_teacher = True
    supports_teacher_cache = True  # T(x) on clean augmented images (IAD adds T(x') later)

    def __init__(self, student, teacher, *, alpha=1.0, temperature=30.0, reduction="mean",
                 **kwargs):
        super().__init__(student, teacher, **kwargs)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.reduction = reduction

    def hyperparameters(self):
        return {**super().hyperparameters(), "alpha": self.alpha,
                "temperature": self.temperature, "reduction": self.reduction}

    def prepare(self, x, y):
        return self.prepare_batch(x, y)

    def prepare_batch(self, x, y, index=None, variant=None):
        """T(x) on the clean images, once per batch (from the soft-label cache when one is
        attached)."""
        return {"teacher_logits": self.clean_teacher_logits(x, index, variant)}

    def attack(self, x, y, ctx):
        return self.run_pgd(x, y, loss="ce")

    def loss_terms(self, x, x_adv, y, ctx):
        logits_adv = ops.cast(self.student(x_adv, training=True), "float32")
        logits_nat = ops.cast(self.student(x, training=True), "float32")
        total, kl, ce = losses.ard_loss(ctx["teacher_logits"], logits_adv, logits_nat, y,
                                        alpha=self.alpha, temperature=self.temperature,
                                        reduction=self.reduction)
        # logits_nat: for subclasses whose loss also needs S(x) (IAD's self-distillation).
        return {"loss": total, "kl": kl, "ce": ce, "logits": logits_adv,
                "logits_nat": logits_nat}
