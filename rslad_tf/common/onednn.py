"""oneDNN, the x86 kernel library under both PyTorch and TensorFlow on CPUs: the one
bug of it that meets this toolkit's models, and TensorFlow's switch for it.

The bug (uxlfoundation/oneDNN#6035): the weight gradient of a 1x1 convolution with a
stride above 1, when its input has fewer channels than the kernel's register block. A
ResNet narrower than 16 (its 1x1 stride-2 shortcuts) meets it. Measured on this project's
AMD EPYC (AVX2) VM against float64 (docs/backends.md):

- PyTorch 2.13, channels-last inputs (Keras' torch backend): a crash or a hang within a
  few steps of a width-4 ResNet-18 when the input channels are not a multiple of 16, and
  once a silently wrong update. `rslad_tf.backends.torch_backend` takes such a student's
  weight gradient with oneDNN off.
- TensorFlow 2.21 with ``TF_ENABLE_ONEDNN_OPTS=1``: weight gradients 9 to 63 % wrong with 1
  to 5 input channels, right with 6 or more; forward passes and input gradients right
  for every shape tried (1x1 and 3x3, stride 1 and 2, 1 to 24 channels, depthwise too).

On such a CPU (no AVX-512) TensorFlow 2.21 uses oneDNN's kernels only when
``TF_ENABLE_ONEDNN_OPTS=1`` is set before it is imported, and they are worth it: 1.6x for
an epoch of a width-4 digits student, 1.7x for its AutoAttack, 2.6x for the input gradient
of the width-64 teacher (docs/speed.md). The local pipeline sets the switch for its steps
when every model it trains is of an architecture without a strided 1x1 convolution
(`safe_for_tensorflow_kernels`), and `check_tensorflow_training` refuses to train a model
that meets the bug under it, whoever set the switch.
"""

from __future__ import annotations

import os

from rslad_tf.common.errors import UserError
from rslad_tf.common.model_walk import all_layers

TENSORFLOW_SWITCH = "TF_ENABLE_ONEDNN_OPTS"
# TensorFlow's weight gradients were wrong up to 5 input channels, right from 6: 8 is
# the AVX2 register block, and the margin.
TENSORFLOW_MIN_CHANNELS = 8
# PyTorch's channels-last kernel failed below 16 channels and at 12 (not a multiple).
TORCH_CHANNEL_BLOCK = 16
# Architectures of `rslad_tf.models` with no strided 1x1 convolution at any width (the
# strided convolutions of MobileNetV2 are its 3x3 depthwise ones): tests/test_onednn.py
# builds each and walks its layers.
ARCHITECTURES_WITHOUT_STRIDED_POINTWISE = ("small_cnn", "mobilenetv2")


def strided_pointwise_convs(model) -> list[tuple[object, int]]:
    """``(layer, input channels)`` for every 1x1 convolution (``Conv2D`` or
    ``DepthwiseConv2D``, subclasses included) of ``model`` with a stride above 1 on a
    channels-last input."""
    import keras

    found = []
    for layer in all_layers(model):
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            continue
        if (tuple(layer.kernel_size) == (1, 1) and max(layer.strides) > 1
                and layer.data_format == "channels_last"):
            found.append((layer, int(layer.kernel.shape[-2])))
    return found


def torch_weight_gradient_hazard(model) -> bool:
    """Whether PyTorch's oneDNN would take a wrong weight gradient of ``model``: a
    strided 1x1 convolution whose input channels are not a multiple of 16."""
    return any(channels % TORCH_CHANNEL_BLOCK for _, channels in strided_pointwise_convs(model))


def tensorflow_weight_gradient_hazard(model) -> str | None:
    """The first layer of ``model`` whose weight gradient TensorFlow's oneDNN kernels get
    wrong (a strided 1x1 convolution with fewer than 8 input channels), or None."""
    for layer, channels in strided_pointwise_convs(model):
        if channels < TENSORFLOW_MIN_CHANNELS:
            return f"{layer.name} (1x1, stride {max(layer.strides)}, {channels} input channels)"
    return None


def tensorflow_kernels_on() -> bool:
    """Whether this process's TensorFlow uses oneDNN's kernels by request (the switch is
    read once, when TensorFlow is imported)."""
    return os.environ.get(TENSORFLOW_SWITCH) == "1"


def safe_for_tensorflow_kernels(architectures) -> bool:
    """Whether a process that trains only models of ``architectures`` (names of
    `rslad_tf.models`) may run with TensorFlow's oneDNN kernels: each is one of
    `ARCHITECTURES_WITHOUT_STRIDED_POINTWISE`. Evaluation alone is safe with any model."""
    names = list(architectures)
    return bool(names) and all(a in ARCHITECTURES_WITHOUT_STRIDED_POINTWISE for a in names)


def check_tensorflow_training(model) -> None:
    """A one-line error when ``model`` is about to be trained by TensorFlow on a CPU with
    oneDNN's kernels switched on and has a layer whose weight gradient they get wrong."""
    import keras

    if not tensorflow_kernels_on() or keras.backend.backend() != "tensorflow":
        return
    hazard = tensorflow_weight_gradient_hazard(model)
    if hazard is None:
        return
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    raise UserError(f"{TENSORFLOW_SWITCH}=1: TensorFlow's oneDNN kernels compute wrong weight "
                    f"gradients on x86 CPUs for layer {hazard} of {model.name!r} (oneDNN "
                    f"issue 6035); unset {TENSORFLOW_SWITCH} to train this model")
