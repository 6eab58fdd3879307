"""Wide ResNets of the RSLAD teachers: TRADES WRN-34-10 and DeepMind WRN-70-16 (Swish).

Both are pre-activation wide ResNets (Zagoruyko & Komodakis 2016) with three groups of
(depth - 4) / 6 blocks at widths 16k, 32k, 64k (strides 1, 2, 2) after a 3x3 stem conv
with 16 filters, then BN, activation, global average pooling and a linear layer. A block
is BN-act-conv3x3(stride)-BN-act-conv3x3 plus a shortcut; when the channel count changes
the shortcut is a 1x1 conv (stride) applied to the *pre-activated* input, otherwise the
raw input. They differ in:

- `wrn34_10` follows TRADES (Zhang et al. 2019, `models/wideresnet.py` of the TRADES and
  RSLAD repositories): ReLU, symmetric padding 1 for every 3x3 conv, no input
  normalisation. That file also defines a `sub_block1` (a copy of block1) that `forward`
  never calls: its weights are in the checkpoint but have no effect. We build the network
  that `forward` computes; `rslad_tf.interop.convert_teacher` skips the `sub_block1.*` keys.
  Counted without sub_block1 the model has 46,160,474 parameters for 10 classes, the
  46.16 M the RSLAD paper gives for its WRN-34-10 teacher (with sub_block1: 46,882,394).
- `wrn70_16` follows DeepMind's PyTorch port for Gowal et al. 2020 ("Uncovering the
  limits of adversarial training ...", `adversarial_robustness/pytorch/model_zoo.py`,
  also RobustBench's `DMWideResNet`): Swish (= SiLU) activations, TF-style "SAME"
  padding for the stride-2 convs (pad bottom/right only), and the input normalisation
  (x - mean) / std inside the model. About 266.8 M parameters for 100 classes.

Layer names mirror the reference PyTorch module paths ("block1.layer.0.bn1" ->
"block1__layer__0__bn1", "layer.1.block.0.conv_0" -> "layer__1__block__0__conv_0").
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from rslad_tf.models import register
from rslad_tf.models.resnet import batch_norm, conv2d, torch_name

# Statistics used by DeepMind's model zoo (and RobustBench) for input normalisation.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
NORMALIZATIONS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}


def _activation(x, kind: str, name: str):
    if kind == "relu":
        return layers.ReLU(name=name)(x)
    # Swish x * sigmoid(x); Keras calls it "silu".
    return layers.Activation("silu", name=name)(x)


def _check_depth(depth: int, widen_factor: int) -> int:
    if (int(depth) - 4) % 6 != 0 or int(depth) < 10:
        raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
    if int(widen_factor) < 1:
        raise ValueError(f"widen_factor must be positive, got {widen_factor}")
    return (int(depth) - 4) // 6


# --- TRADES WRN ---------------------------------------------------------------------


def _trades_block(x, in_planes: int, out_planes: int, stride: int, path: str):
    """TRADES `BasicBlock` (dropRate 0)."""
    name = torch_name(path)
    equal_in_out = in_planes == out_planes
    if equal_in_out and stride != 1:
        raise ValueError("a block with stride != 1 must change the channel count")
    out = layers.ReLU(name=f"{name}__relu1")(batch_norm(x, f"{path}.bn1"))
    if not equal_in_out:
        x = out  # the projection shortcut sees the pre-activated input
    out = conv2d(out, out_planes, 3, stride, f"{path}.conv1")
    out = layers.ReLU(name=f"{name}__relu2")(batch_norm(out, f"{path}.bn2"))
    out = conv2d(out, out_planes, 3, 1, f"{path}.conv2")
    shortcut = x if equal_in_out else conv2d(x, out_planes, 1, stride,
                                             f"{path}.convShortcut", padding=0)
    return layers.Add(name=f"{name}__add")([shortcut, out])


@register("wrn34_10")
def wrn34_10(num_classes: int, input_shape=(32, 32, 3), depth: int = 34,
             widen_factor: int = 10) -> keras.Model:
    """TRADES WideResNet (default WRN-34-10: 46,160,474 parameters for 10 classes).

    `depth` / `widen_factor` change the size with the same layout (tests use WRN-10-2).
    Inputs in [0,1], no normalisation, as the TRADES checkpoint expects.
    """
    n = _check_depth(depth, widen_factor)
    channels = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    inputs = keras.Input(shape=input_shape, name="image")
    x = conv2d(inputs, channels[0], 3, 1, "conv1")
    for group, stride in enumerate((1, 2, 2), start=1):
        for i in range(n):
            x = _trades_block(x, channels[group - 1] if i == 0 else channels[group],
                              channels[group], stride if i == 0 else 1,
                              f"block{group}.layer.{i}")
    x = layers.ReLU(name="relu")(batch_norm(x, "bn1"))  # [N, 8, 8, 64k]
    # Reference: avg_pool2d(out, 8) on the 8x8 map = global average for 32x32 inputs.
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, logits, name=f"wrn{depth}_{widen_factor}")


# --- DeepMind WRN -------------------------------------------------------------------


def resolve_normalization(normalization, num_classes: int):
    """(mean, std) tuples for `normalization`, or None for no normalisation layer.

    `normalization` is "cifar10", "cifar100", None / "none", "auto" (CIFAR-100 statistics
    for 100 classes, CIFAR-10 statistics otherwise), or an explicit `(mean, std)` pair of
    per-channel sequences.
    """
    if normalization is None or normalization == "none":
        return None
    if normalization == "auto":
        normalization = "cifar100" if int(num_classes) == 100 else "cifar10"
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; use cifar10, "
                             "cifar100, none or auto")
        return NORMALIZATIONS[normalization]
    mean, std = normalization
    mean = tuple(float(v) for v in np.ravel(mean))
    std = tuple(float(v) for v in np.ravel(std))
    if len(mean) != len(std) or min(std) <= 0:
        raise ValueError(f"bad normalization statistics: mean {mean}, std {std}")
    return mean, std


def _dm_block(x, in_planes: int, out_planes: int, stride: int, path: str, act: str):
    """DeepMind `_Block`: like TRADES' block, but stride 2 pads TF-style (bottom/right)."""
    name = torch_name(path)
    has_shortcut = in_planes != out_planes
    if not has_shortcut and stride != 1:
        raise ValueError("a block with stride != 1 must change the channel count")
    out = _activation(batch_norm(x, f"{path}.batchnorm_0"), act, f"{name}__act_0")
    if has_shortcut:
        x = out  # the shortcut conv sees the pre-activated input
    # PyTorch: F.pad(v, (1, 1, 1, 1)) for stride 1, F.pad(v, (0, 1, 0, 1)) for stride 2.
    pad = 1 if stride == 1 else ((0, 1), (0, 1))
    out = conv2d(out, out_planes, 3, stride, f"{path}.conv_0", padding=pad)
    out = _activation(batch_norm(out, f"{path}.batchnorm_1"), act, f"{name}__act_1")
    out = conv2d(out, out_planes, 3, 1, f"{path}.conv_1")
    shortcut = conv2d(x, out_planes, 1, stride, f"{path}.shortcut", padding=0) \
        if has_shortcut else x
    return layers.Add(name=f"{name}__add")([shortcut, out])


def dm_wide_resnet(num_classes: int, input_shape=(32, 32, 3), depth: int = 70,
                   widen_factor: int = 16, activation: str = "swish",
                   normalization="auto") -> keras.Model:
    """DeepMind WideResNet (Gowal et al. 2020) with normalisation inside the model.

    `normalization`: see `resolve_normalization`. The statistics are a
    `keras.layers.Normalization` layer (constants in the saved config), so attacks work
    on [0,1] pixels.
    """
    if activation not in ("swish", "relu"):
        raise ValueError(f"activation must be 'swish' or 'relu', got {activation!r}")
    n = _check_depth(depth, widen_factor)
    stats = resolve_normalization(normalization, num_classes)
    channels = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if stats is not None:
        mean, std = stats
        # Normalization divides by sqrt(variance): (x - mean) / std.
        x = layers.Normalization(mean=list(mean), variance=[s * s for s in std],
                                 name="normalize")(x)
    x = conv2d(x, channels[0], 3, 1, "init_conv")
    for group, stride in enumerate((1, 2, 2)):
        for i in range(n):
            x = _dm_block(x, channels[group] if i == 0 else channels[group + 1],
                          channels[group + 1], stride if i == 0 else 1,
                          f"layer.{group}.block.{i}", activation)
    x = _activation(batch_norm(x, "batchnorm"), activation, "act")  # [N, 8, 8, 64k]
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=f"dm_wrn{depth}_{widen_factor}")


@register("wrn70_16")
def wrn70_16(num_classes: int, input_shape=(32, 32, 3), depth: int = 70,
             widen_factor: int = 16, normalization="auto",
             activation: str = "swish") -> keras.Model:
    """DeepMind WRN-70-16 with Swish (about 266.8 M parameters for 100 classes).

    `normalization` picks the statistics of the normalisation layer: "cifar100" (what
    the checkpoint's authors used for CIFAR-100), "cifar10" (what the RSLAD reference
    used for its CIFAR-100 teacher), None, or "auto" (CIFAR-100 statistics for 100
    classes, else CIFAR-10). `depth` / `widen_factor` exist for reduced test variants.
    """
    return dm_wide_resnet(num_classes, input_shape, depth, widen_factor, activation,
                          normalization)
