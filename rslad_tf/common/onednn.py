"""oneDNN, the x86 kernel library under both PyTorch and TensorFlow on CPUs: the one
bug of it that meets this toolkit's models, which CPUs run the code that has it, and
TensorFlow's switch for its kernels.

The bug (uxlfoundation/oneDNN#6035): the weight gradient of a 1x1 convolution with a
stride above 1, when its input has fewer channels than the kernel's register block, in
oneDNN's AVX2 code. A ResNet narrower than 16 (its 1x1 stride-2 shortcuts) meets it.
Measured against float64 (docs/backends.md):

- On an AMD EPYC with AVX2 and no AVX-512: PyTorch 2.13 with channels-last inputs (Keras'
  torch backend) crashed or hung within a few steps of a width-4 ResNet-18 when the input
  channels were not a multiple of 16, and once updated silently wrong;
  `rslad_tf.backends.torch_backend` takes such a student's weight gradient with oneDNN
  off. TensorFlow 2.21 with its oneDNN kernels got weight gradients 9 to 63 % wrong with
  1 to 5 input channels, right with 6 or more; forward passes and input gradients were
  right for every shape tried.
- On an Intel Xeon with AVX-512 (oneDNN's AVX-512 code): both frameworks right for 1 to 24
  input channels, and wrong again, or dead, with oneDNN capped to AVX2
  (``ONEDNN_MAX_CPU_ISA=AVX2``).

TensorFlow 2.21 on Linux uses oneDNN's kernels when ``TF_ENABLE_ONEDNN_OPTS`` says so, and
otherwise by default only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX
(`tensorflow_kernels_on`). On the AVX2 machine they were worth setting: 1.6x for an epoch
of a width-4 digits student, 1.7x for its AutoAttack, 2.6x for the input gradient of the
width-64 teacher (docs/speed.md). The local pipeline sets the switch for its steps when
every model it trains is of an architecture without a strided 1x1 convolution
(`safe_for_tensorflow_kernels`), and `check_tensorflow_training` refuses to train a model
that meets the bug where the kernels are on and run their AVX2 code, whoever turned them on.
"""

from __future__ import annotations

import functools
import os
import platform

from rslad_tf.common.errors import UserError
from rslad_tf.common.model_walk import all_layers

TENSORFLOW_SWITCH = "TF_ENABLE_ONEDNN_OPTS"
# The CPU features for which TensorFlow 2.21 on Linux turns the kernels on when the switch
# is unset (DefaultOneDnnPolicy in tensorflow/core/util/port.cc), as /proc/cpuinfo names them.
TENSORFLOW_DEFAULT_ON_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
                               "amx_int8", "amx_bf16")
# oneDNN's AVX-512 code (its ISA "avx512_core") needs all four; without them x86
# convolutions run its AVX2 code, the one with the bug.
AVX512_CORE_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
# oneDNN's run-time cap of its instruction set (the second name is the older one).
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
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


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo (``avx2``,
    ``avx512f``, ...); empty where that file is missing or lists none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                name, _, value = line.partition(":")
                if name.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def is_x86() -> bool:
    """Whether this machine is x86 (the bug and TensorFlow's default policy are x86's)."""
    return platform.machine().lower() in ("x86_64", "amd64", "x86", "i386", "i686")


def avx2_kernels() -> bool:
    """Whether oneDNN runs its AVX2 convolution code here, the code with the bug: an x86
    CPU without AVX-512 (``AVX512_CORE_FLAGS``), one whose oneDNN is capped below AVX-512
    (``ONEDNN_MAX_CPU_ISA=AVX2``, say), or one whose flags cannot be read (assumed)."""
    if not is_x86():
        return False
    cap = next((os.environ[v] for v in ISA_CAP_VARIABLES if os.environ.get(v)), "")
    if cap and not cap.strip().upper().startswith(("AVX512", "AVX10", "ALL", "DEFAULT")):
        return True
    return not all(flag in cpu_flags() for flag in AVX512_CORE_FLAGS)


def tensorflow_switch() -> bool | None:
    """What ``TF_ENABLE_ONEDNN_OPTS`` asks of TensorFlow, read as TensorFlow reads it: True
    for 1 or true, False for 0 or false (any case), None when unset or anything else
    (TensorFlow then keeps its default)."""
    value = os.environ.get(TENSORFLOW_SWITCH, "").lower()
    return True if value in ("1", "true") else False if value in ("0", "false") else None


def tensorflow_kernels_on() -> bool:
    """Whether TensorFlow 2.21 runs oneDNN's kernels in this process: as the switch says
    (`tensorflow_switch`); otherwise its default, on for Linux CPUs with one of
    ``TENSORFLOW_DEFAULT_ON_FLAGS`` and on Windows x86. TensorFlow reads the switch once,
    when it is imported; tests/test_onednn.py compares this with TensorFlow's own answer."""
    switch = tensorflow_switch()
    if switch is not None:
        return switch
    if not is_x86():
        return False
    if platform.system() == "Windows":
        return True
    return any(flag in cpu_flags() for flag in TENSORFLOW_DEFAULT_ON_FLAGS)


def safe_for_tensorflow_kernels(architectures) -> bool:
    """Whether a process that trains only models of ``architectures`` (names of
    `rslad_tf.models`) may run with TensorFlow's oneDNN kernels: each is one of
    `ARCHITECTURES_WITHOUT_STRIDED_POINTWISE`. Evaluation alone is safe with any model."""
    names = list(architectures)
    return bool(names) and all(a in ARCHITECTURES_WITHOUT_STRIDED_POINTWISE for a in names)


def check_tensorflow_training(model) -> None:
    """A one-line error when ``model`` is about to be trained by TensorFlow on a CPU whose
    oneDNN kernels are on and run their AVX2 code (`avx2_kernels`), and has a layer whose
    weight gradient they get wrong."""
    import keras

    if keras.backend.backend() != "tensorflow" or not tensorflow_kernels_on():
        return
    if not avx2_kernels():
        return
    hazard = tensorflow_weight_gradient_hazard(model)
    if hazard is None:
        return
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    how = (f"{TENSORFLOW_SWITCH}={os.environ[TENSORFLOW_SWITCH]}" if tensorflow_switch()
           else "on by default on this CPU")
    raise UserError(f"TensorFlow's oneDNN kernels ({how}) compute wrong weight gradients on "
                    f"CPUs without AVX-512 for layer {hazard} of {model.name!r} (oneDNN "
                    f"issue 6035); set {TENSORFLOW_SWITCH}=0 to train this model")
