"""Training methods: one `keras.Model` subclass each, registered by name in `METHODS`."""

from rslad_tf.methods.adaad import AdaADModel, AdaIADModel
from rslad_tf.methods.ard import ARDModel
from rslad_tf.methods.base import AdversarialMethod
from rslad_tf.methods.iad import IADModel
from rslad_tf.methods.natural import NaturalModel
from rslad_tf.methods.rslad import RSLADModel
from rslad_tf.methods.sat import SATModel
from rslad_tf.methods.trades import TRADESModel

METHODS = {cls.method_name: cls for cls in
           (NaturalModel, SATModel, TRADESModel, ARDModel, IADModel, RSLADModel,
            AdaADModel, AdaIADModel)}

__all__ = ["METHODS", "AdversarialMethod", "NaturalModel", "SATModel", "TRADESModel",
           "ARDModel", "IADModel", "RSLADModel", "AdaADModel", "AdaIADModel"]
