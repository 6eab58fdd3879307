"""RSLAD (Zi et al., ICCV 2021): robust soft label adversarial distillation."""

import keras
from keras import ops

from rslad_tf import losses
from rslad_tf.methods.base import AdversarialMethod
from rslad_tf.methods.igdm import IGDMOption


@keras.saving.register_keras_serializable(package="rslad_tf")
class RSLADModel(IGDMOption, AdversarialMethod):
    """RSLAD: the robust teacher's soft labels T(x) on clean images replace hard labels
    everywhere (Zi et al. 2021, section 4):

    - inner maximisation: x' maximises KL(T(x) || S(x')) (summed over the batch), student
      in inference mode, start x + 0.001 N(0, 1), 10 steps of 2/255;
    - outer loss: 5/6 * KL(T(x) || S(x')) + 1/6 * KL(T(x) || S(x)), no temperature,
      reduction "mean" over batch x classes as in the reference (``scale=10`` for CIFAR-100).

    ``igdm_alpha`` > 0 adds the IGDM term (`rslad_tf.methods.igdm`; RSLAD+IGDM).

    Usable on its own: ``RSLADModel(student, teacher).compile(optimizer=...)`` then
    ``.fit(dataset)`` with a dataset of (images in [0,1], labels); labels only feed the
    logged accuracy, never the loss.
    """

    method_name = "rslad"
    term_names = ("kl_adv", "kl_nat")
    default_attack_start = "normal"
    uses_teacher = True
    supports_teacher_cache = True  # T(x) on clean augmented images only

    def __init__(self, student, teacher, *, adv_weight=5.0 / 6.0, nat_weight=1.0 / 6.0,
                 reduction="mean", scale=1.0, igdm_alpha=0.0, igdm_epochs=None, **kwargs):
        super().__init__(student, teacher, **kwargs)
        self.init_igdm(igdm_alpha, igdm_epochs)
        self.adv_weight = float(adv_weight)
        self.nat_weight = float(nat_weight)
        self.reduction = reduction
        self.scale = float(scale)

    def hyperparameters(self):
        return {**super().hyperparameters(), "adv_weight": self.adv_weight,
                "nat_weight": self.nat_weight, "reduction": self.reduction, "scale": self.scale,
                **self.igdm_hyperparameters()}

    def prepare(self, x, y):
        return self.prepare_batch(x, y)

    def prepare_batch(self, x, y, index=None, variant=None):
        """T(x) on the clean images only, once per batch (from the soft-label cache when
        one is attached), and its softmax: the soft labels."""
        teacher_logits = self.clean_teacher_logits(x, index, variant)
        return {"teacher_logits": teacher_logits,
                "soft_labels": ops.softmax(teacher_logits, axis=-1)}

    def attack(self, x, y, ctx):
        return self.run_pgd(x, target_probs=ctx["soft_labels"], loss="kl")

    def loss_terms(self, x, x_adv, y, ctx):
        logits_adv = ops.cast(self.student(x_adv, training=True), "float32")
        logits_nat = ops.cast(self.student(x, training=True), "float32")
        total, kl_adv, kl_nat = losses.rslad_loss(
            ctx["teacher_logits"], logits_adv, logits_nat, adv_weight=self.adv_weight,
            nat_weight=self.nat_weight, reduction=self.reduction, scale=self.scale)
        terms = {"loss": total, "kl_adv": kl_adv, "kl_nat": kl_nat, "logits": logits_adv}
        return self.with_igdm(terms, x, x_adv, logits_adv)
