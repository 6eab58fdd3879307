"""A small VGG-style CNN: the digits teacher (wide) and student (narrow)."""

from __future__ import annotations

import keras
from keras import layers

from rslad_tf.models import register


def _conv_bn_relu(x, filters, name):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


@register("small_cnn")
def small_cnn(num_classes: int, input_shape=(8, 8, 1), width: int = 32) -> keras.Model:
    """Four 3x3 conv-BN-ReLU layers (width, width, 2*width, 2*width), one 2x2 max-pool,
    global average pooling and a linear classifier. Logits out.

    BatchNorm momentum 0.9 / epsilon 1e-5 match PyTorch's defaults (momentum 0.1 there),
    as in the reference implementations.
    """
    if int(width) < 1:
        raise ValueError(f"width must be positive, got {width}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = _conv_bn_relu(inputs, width, "block1a")
    x = _conv_bn_relu(x, width, "block1b")
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = _conv_bn_relu(x, 2 * width, "block2a")
    x = _conv_bn_relu(x, 2 * width, "block2b")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=f"small_cnn_w{width}")
