"""rslad_tf: Robust Soft Label Adversarial Distillation (Zi et al., ICCV 2021) in Keras 3.

Public API: ``RSLADModel`` and the other method classes, ``rslad_tf.models.create``,
``rslad_tf.losses``, ``rslad_tf.attacks``, ``rslad_tf.evaluation.suite.evaluate`` and
``rslad_tf.data.load_numpy``. The method classes are imported lazily so that
``rslad_tf.models`` can be used without TensorFlow (e.g. under Keras' torch backend).
"""

__version__ = "0.1.0"

_METHOD_CLASSES = ("RSLADModel", "ARDModel", "IADModel", "TRADESModel", "SATModel",
                   "NaturalModel", "AdversarialMethod")


def __getattr__(name):
    if name in _METHOD_CLASSES:
        from rslad_tf import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'rslad_tf' has no attribute {name!r}")


__all__ = list(_METHOD_CLASSES)
