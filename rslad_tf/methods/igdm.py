"""IGDM (Lee et al., "Indirect Gradient Matching for Adversarial Robust Distillation",
arXiv 2312.03286): a plug-in term for distillation methods, written once and used by RSLAD
and AdaAD (and so AdaIAD) through the field ``igdm_alpha`` (0 = off).

An adversarially trained model is nearly linear around a clean point x, so matching the
teacher's and the student's output *differences* across the perturbation d = x' - x
matches their input gradients without computing them (the paper's first-order Taylor
argument):

    L_IGDM = alpha (epoch / E) KL(softmax(T(x + d) - T(x - d)) || softmax(S(x + d) - S(x - d)))

with the epoch counted from 1 to E (the run's number of epochs), so the weight ramps up
linearly. x - d is not clipped to [0, 1]: it is a probe of the local slope, not an image
the model must classify. The KL is summed over classes and averaged over the batch
("batchmean", the reduction of the authors' public implementation).
"""

from __future__ import annotations

import keras
from keras import ops

from rslad_tf import losses

IGDM_REDUCTION = "batchmean"


def igdm_divergence(teacher_plus, teacher_minus, student_plus, student_minus, *,
                    reduction: str = IGDM_REDUCTION):
    """KL(softmax(T(x+d) - T(x-d)) || softmax(S(x+d) - S(x-d))) from the four logits [B, K]
    (Lee et al. 2023, eq. 9). No gradient flows into the teacher's logits."""
    target = ops.stop_gradient(ops.softmax(teacher_plus - teacher_minus, axis=-1))
    return losses.kl_divergence(target, ops.log_softmax(student_plus - student_minus, axis=-1),
                                reduction=reduction)


def igdm_weight(alpha: float, epoch, total_epochs: int):
    """alpha * (epoch + 1) / E for the 0-based ``epoch`` (the paper counts epochs from 1)."""
    return float(alpha) * ops.cast(epoch + 1, "float32") / float(total_epochs)


class IGDMOption:
    """Mixin of an `AdversarialMethod` with a teacher: the IGDM term as a field.

    A method calls `init_igdm` after the base constructor, adds `igdm_hyperparameters()` to
    its hyperparameters and passes its loss terms through `with_igdm`.
    """

    def init_igdm(self, igdm_alpha=0.0, igdm_epochs=None) -> None:
        self.igdm_alpha = float(igdm_alpha)
        self.igdm_epochs = None if igdm_epochs is None else int(igdm_epochs)
        if self.igdm_alpha < 0:
            raise ValueError(f"igdm_alpha must be >= 0, got {igdm_alpha}")
        if self.igdm_alpha and (self.igdm_epochs is None or self.igdm_epochs <= 0):
            raise ValueError("IGDM's weight ramps over the run: pass igdm_epochs = the "
                             "number of training epochs E (the trainer fills it in)")
        if self.igdm_alpha:
            self.loss_trackers["igdm"] = keras.metrics.Mean(name="igdm")

    def igdm_hyperparameters(self) -> dict:
        return {"igdm_alpha": self.igdm_alpha, "igdm_epochs": self.igdm_epochs}

    def with_igdm(self, terms: dict, x, x_adv, student_plus, teacher_plus=None) -> dict:
        """``terms`` with alpha (epoch / E) L_IGDM added to "loss" and logged as "igdm".

        ``student_plus``: S(x') in training mode, already computed by the method's loss;
        ``teacher_plus``: T(x') if the method has it (AdaAD). Costs up to two teacher
        forward passes (T(x'), T(x - d)) and one student pass S(x - d).
        """
        if not self.igdm_alpha:
            return terms
        delta = x_adv - x
        x_minus = x - delta
        if teacher_plus is None:
            teacher_plus = self.teacher_logits(x_adv)
        teacher_minus = self.teacher_logits(x_minus)
        student_minus = ops.cast(self.student(x_minus, training=True), "float32")
        term = igdm_divergence(teacher_plus, teacher_minus, student_plus, student_minus)
        weight = igdm_weight(self.igdm_alpha, self.epoch, self.igdm_epochs)
        return {**terms, "loss": terms["loss"] + weight * term, "igdm": term}
