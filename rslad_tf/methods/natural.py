"""Natural (standard) training: CE(S(x), y), no attack."""

import keras
from keras import ops

from rslad_tf import losses
from rslad_tf.methods.base import AdversarialMethod


@keras.saving.register_keras_serializable(package="rslad_tf")
class NaturalModel(AdversarialMethod):
    """Standard training of the student on clean images (the paper's "Natural" row)."""

    method_name = "natural"
    default_attack_start = "none"

    def attack(self, x, y, ctx):
        return x  # no inner maximisation

    def loss_terms(self, x, x_adv, y, ctx):
        logits = ops.cast(self.student(x, training=True), "float32")
        return {"loss": losses.cross_entropy(y, logits), "logits": logits}
