"""AdaAD and AdaIAD (Huang et al., "Boosting Accuracy and Robustness of Student Models via
Adaptive Adversarial Distillation", CVPR 2023): the teacher takes part in the inner
maximisation instead of supplying a fixed target."""

import keras
from keras import ops

from rslad_tf import losses
from rslad_tf.methods.base import AdversarialMethod
from rslad_tf.methods.igdm import IGDMOption


def adaad_loss(teacher_logits_adv, teacher_logits_nat, student_logits_adv, student_logits_nat,
               *, alpha: float = 1.0, reduction: str = "mean"):
    """AdaAD's outer loss (Huang et al. 2023, eq. 6):

        alpha * KL(T(x') || S(x')) + (1 - alpha) * KL(T(x) || S(x))

    no temperature. The authors' code reduces with PyTorch's ``KLDivLoss()`` default
    ("mean" over batch x classes) on CIFAR-10 and sums over classes / averages over the
    batch ("batchmean") on CIFAR-100. Returns (total, adv_term, nat_term); no gradient
    flows into the teacher's logits.
    """
    soft_adv = ops.stop_gradient(ops.softmax(teacher_logits_adv, axis=-1))
    soft_nat = ops.stop_gradient(ops.softmax(teacher_logits_nat, axis=-1))
    kl_adv = losses.kl_divergence(soft_adv, ops.log_softmax(student_logits_adv, axis=-1),
                                  reduction=reduction)
    kl_nat = losses.kl_divergence(soft_nat, ops.log_softmax(student_logits_nat, axis=-1),
                                  reduction=reduction)
    return alpha * kl_adv + (1.0 - alpha) * kl_nat, kl_adv, kl_nat


@keras.saving.register_keras_serializable(package="rslad_tf")
class AdaADModel(IGDMOption, AdversarialMethod):
    """AdaAD:

    - inner maximisation: x' maximises sum_i KL(T(x'_i) || S(x'_i)), the teacher queried
      *at x'* and differentiated with respect to its input (inference mode, weights never
      watched or updated), student in inference mode, start x + 0.001 N(0, 1), PGD steps
      of the method's step size (objective "kl_model" of the one PGD engine);
    - outer loss: `adaad_loss` (alpha = 1 by default: the clean term is then logged only).

    ``igdm_alpha`` > 0 adds the IGDM term (`rslad_tf.methods.igdm`).
    """

    method_name = "adaad"
    term_names = ("kl_adv", "kl_nat")
    default_attack_start = "normal"
    uses_teacher = True

    def __init__(self, student, teacher, *, alpha=1.0, reduction="mean", igdm_alpha=0.0,
                 igdm_epochs=None, **kwargs):
        super().__init__(student, teacher, **kwargs)
        self.alpha = float(alpha)
        self.reduction = reduction
        self.init_igdm(igdm_alpha, igdm_epochs)

    def hyperparameters(self):
        return {**super().hyperparameters(), "alpha": self.alpha, "reduction": self.reduction,
                **self.igdm_hyperparameters()}

    def prepare(self, x, y):
        return {"teacher_logits": self.teacher_logits(x)}  # T(x): the clean term

    def attack(self, x, y, ctx):
        return self.run_pgd(x, loss="kl_model", target_model=self.teacher)

    def student_logits(self, x, x_adv):
        """S(x') and S(x) in training mode. The authors' training script computes both every
        step, the clean batch first, so the BatchNorm moving statistics see the clean then
        the adversarial batch whatever alpha is; the order matters to those statistics
        only (each call normalises by its own batch's)."""
        logits_nat = ops.cast(self.student(x, training=True), "float32")
        logits_adv = ops.cast(self.student(x_adv, training=True), "float32")
        return logits_adv, logits_nat

    def loss_terms(self, x, x_adv, y, ctx):
        logits_adv, logits_nat = self.student_logits(x, x_adv)
        teacher_adv = self.teacher_logits(x_adv)
        total, kl_adv, kl_nat = adaad_loss(teacher_adv, ctx["teacher_logits"], logits_adv,
                                           logits_nat, alpha=self.alpha,
                                           reduction=self.reduction)
        terms = {"loss": total, "kl_adv": kl_adv, "kl_nat": kl_nat, "logits": logits_adv}
        return self.with_igdm(terms, x, x_adv, logits_adv, teacher_plus=teacher_adv)


@keras.saving.register_keras_serializable(package="rslad_tf")
class AdaIADModel(AdaADModel):
    """AdaIAD (Huang et al. 2023, section 4): AdaAD's attack with IAD's outer loss, the
    teacher's soft labels taken at x' (Zhu et al. 2022, IAD-I):

        tau^2 KL(T^tau(x') || S^tau(x')) + mean_i (1 - a_i) KL(S(x_i) || S(x'_i)),
        a_i = softmax(T(x'_i))[y_i] ** beta,

    the second term only from epoch ``warmup_epochs`` on (plain tempered distillation
    before). Authors' defaults: tau = 30, beta = 0.1, warm-up 60 epochs, both KLs reduced
    "batchmean". The clean term of AdaAD is not used (``alpha`` is ignored).
    """

    method_name = "adaiad"
    term_names = ("kl", "self_kl")

    def __init__(self, student, teacher, *, temperature=30.0, beta=0.1, warmup_epochs=60,
                 reduction="batchmean", **kwargs):
        super().__init__(student, teacher, reduction=reduction, **kwargs)
        self.temperature = float(temperature)
        self.beta = float(beta)
        self.warmup_epochs = int(warmup_epochs)

    def hyperparameters(self):
        return {**super().hyperparameters(), "temperature": self.temperature,
                "beta": self.beta, "warmup_epochs": self.warmup_epochs}

    def prepare(self, x, y):
        return {}  # the teacher is only needed at x'

    def loss_terms(self, x, x_adv, y, ctx):
        logits_adv, logits_nat = self.student_logits(x, x_adv)
        teacher_adv = self.teacher_logits(x_adv)
        iad_total, distill, self_kl = losses.iad_loss(
            teacher_adv, teacher_adv, logits_adv, logits_nat, y,
            temperature=self.temperature, beta=self.beta, reduction=self.reduction)
        tau2 = self.temperature * self.temperature
        introspective = self.epoch >= self.warmup_epochs
        total = ops.where(introspective, iad_total, tau2 * distill)
        terms = {"loss": total, "kl": distill, "self_kl": self_kl, "logits": logits_adv}
        return self.with_igdm(terms, x, x_adv, logits_adv, teacher_plus=teacher_adv)
