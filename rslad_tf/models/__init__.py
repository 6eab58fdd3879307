"""Model registry: pure Keras 3 image classifiers that take images in [0,1] and return logits.

This package must not import TensorFlow (docs/design.md): the same `.keras` files load under
Keras' torch and JAX backends. Every model is a functional `keras.Model` built from
`keras.layers` / `keras.ops` only; any input normalisation is a layer inside the model.

Adding a model touches one file: define a builder in a module of this package, decorate it
with `@register("name")`, and import that module at the bottom of this file.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np

_REGISTRY: dict[str, Callable[..., keras.Model]] = {}


def register(name: str):
    """Decorator that adds a model builder `fn(num_classes, input_shape, **kw)` to the registry."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def available() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def create(name: str, num_classes: int, input_shape=(32, 32, 3), **kwargs) -> keras.Model:
    """Build the registered model `name` for `num_classes` classes.

    `input_shape` is (height, width, channels) of images in [0,1]; extra keyword arguments
    go to the builder (e.g. `width=` for `small_cnn`). Raises `ValueError` for an unknown name.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(available())}"
        )
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return _REGISTRY[name](num_classes=int(num_classes), input_shape=tuple(input_shape), **kwargs)


# Builders register themselves on import.
def trainable_parameters(model) -> int:
    """The number of trainable weights of ``model``: what tables call its parameters
    (BatchNorm's moving statistics are state, not parameters)."""
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


from rslad_tf.models import small_cnn  # noqa: E402,F401
from rslad_tf.models import resnet, mobilenetv2, wrn  # noqa: E402,F401
