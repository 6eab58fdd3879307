"""TRADES (Zhang et al. 2019): natural CE plus a KL robustness regulariser."""

import keras
from keras import ops

from rslad_tf import losses
from rslad_tf.methods.base import AdversarialMethod


@keras.saving.register_keras_serializable(package="rslad_tf")
class TRADESModel(AdversarialMethod):
    """TRADES: min CE(S(x), y) + beta * KL(S(x) || S(x')), where x' maximises
    KL(S(x) || S(x')) (S(x) from the student in inference mode) from the start
    x + 0.001 N(0, 1). The KL is summed over classes and averaged over the batch
    ("batchmean") as in the reference; ``reduction`` makes that explicit. As in the
    reference, S(x), S(x') and S(x) again run in training mode (three updates of the
    BatchNorm moving statistics per step)."""

    method_name = "trades"
    term_names = ("ce", "kl")
    default_attack_start = "normal"

    def __init__(self, student, *, beta=6.0, reduction="batchmean", **kwargs):
        super().__init__(student, **kwargs)
        self.beta = float(beta)
        self.reduction = reduction

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta": self.beta, "reduction": self.reduction}

    def prepare(self, x, y):
        clean_probs = ops.softmax(ops.cast(self.student(x, training=False), "float32"))
        return {"clean_probs": ops.stop_gradient(clean_probs)}

    def attack(self, x, y, ctx):
        return self.run_pgd(x, target_probs=ctx["clean_probs"], loss="kl")

    def loss_terms(self, x, x_adv, y, ctx):
        logits_nat = ops.cast(self.student(x, training=True), "float32")
        logits_adv = ops.cast(self.student(x_adv, training=True), "float32")
        # The reference (trades.py) evaluates S(x) in training mode once more, after S(x'),
        # for the KL target. That pass gives the same logits and gradient as the first
        # (training mode normalises with the batch's own statistics), so its output is not
        # used; it is run for its one effect, a third update of BatchNorm's moving
        # statistics, so that they, and the next step's inference-mode attack, follow the
        # reference's (docs/parity.md).
        self.student(x, training=True)
        total, ce, kl = losses.trades_loss(logits_nat, logits_adv, y, beta=self.beta,
                                           reduction=self.reduction)
        return {"loss": total, "ce": ce, "kl": kl, "logits": logits_adv}
