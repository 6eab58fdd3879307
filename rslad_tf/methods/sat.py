"""SAT / PGD-AT (Madry et al. 2018): train on PGD examples with hard labels."""

import keras
from keras import ops

from rslad_tf import losses
from rslad_tf.methods.base import AdversarialMethod


@keras.saving.register_keras_serializable(package="rslad_tf")
class SATModel(AdversarialMethod):
    """Madry's PGD adversarial training: min CE(S(x'), y), x' = PGD on CE(S(.), y) with a
    uniform random start clipped to [0, 1] before the first step, 10 steps of 2/255,
    BatchNorm frozen during the attack."""

    method_name = "sat"
    default_attack_start = "uniform"
    clip_attack_start = True  # Madry's code clips x + U(-eps, eps) to [0, 1] first

    def attack(self, x, y, ctx):
        return self.run_pgd(x, y, loss="ce")

    def loss_terms(self, x, x_adv, y, ctx):
        logits_adv = ops.cast(self.student(x_adv, training=True), "float32")
        return {"loss": losses.cross_entropy(y, logits_adv), "logits": logits_adv}
