"""CIFAR ResNet-18 / ResNet-50: the RSLAD ResNet-18 student and the black-box surrogate.

Layout of the ResNet of the RSLAD reference code (`cifar10_models/resnet.py`, itself the
common "kuangliu" CIFAR port of He et al. 2016): a 3x3 stem conv with 64 filters and
stride 1, no max-pool, four stages at widths 64/128/256/512 (stride 1, 2, 2, 2), a
1x1 conv + BN projection shortcut when the shape changes, global average pooling and a
linear classifier. Post-activation blocks (ReLU after the residual add).

Layer names mirror the module paths of the reference PyTorch model, with "." written
as "__" (Keras' torch backend forbids "." in names; no reference name contains "__"):
`layer2.0.shortcut.0.weight` lives in the layer `layer2__0__shortcut__0`. This makes
`rslad_tf.interop.convert_teacher` a name lookup. Layers without weights get names that no
PyTorch key maps to.

Helpers `conv2d` and `batch_norm` are shared with the other CIFAR models of this package.
"""

from __future__ import annotations

import keras
from keras import layers

from rslad_tf.models import register

# PyTorch BatchNorm2d defaults: momentum 0.1 on the new value (= 0.9 on the old one in
# Keras' convention) and epsilon 1e-5 (Keras' default is 1e-3).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def torch_name(path: str) -> str:
    """Keras layer name of the PyTorch module `path`: "layer1.0.conv1" -> "layer1__0__conv1"."""
    return path.replace(".", "__")


def conv2d(x, filters: int, kernel: int, stride: int, path: str, *, padding="torch",
           use_bias: bool = False, depthwise: bool = False):
    """A convolution that reproduces PyTorch's `Conv2d(..., padding=kernel // 2)` exactly.

    Keras' padding="same" pads only bottom/right when the stride is 2 on an even input,
    PyTorch pads both sides: converted weights would then see shifted pixels. So the
    padding is an explicit `ZeroPadding2D` followed by a "valid" convolution.
    `padding` is "torch" (symmetric kernel // 2), or any `ZeroPadding2D` padding spec
    (e.g. ((0, 1), (0, 1)) for DeepMind's TF-style stride-2 padding), or 0.
    """
    name = torch_name(path)
    pad = kernel // 2 if padding == "torch" else padding
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}__pad")(x)
    if depthwise:
        # PyTorch Conv2d(groups=channels): one 3x3 filter per channel.
        return layers.DepthwiseConv2D(kernel, strides=stride, padding="valid",
                                      use_bias=use_bias, name=name)(x)
    return layers.Conv2D(filters, kernel, strides=stride, padding="valid",
                         use_bias=use_bias, name=name)(x)


def batch_norm(x, path: str):
    """PyTorch-equivalent BatchNorm2d (momentum 0.1 there = 0.9 here, epsilon 1e-5)."""
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                     name=torch_name(path))(x)


def _basic_block(x, in_planes: int, planes: int, stride: int, path: str):
    """BasicBlock (expansion 1): conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""
    name = torch_name(path)
    out = conv2d(x, planes, 3, stride, f"{path}.conv1")
    out = layers.ReLU(name=f"{name}__relu1")(batch_norm(out, f"{path}.bn1"))
    out = conv2d(out, planes, 3, 1, f"{path}.conv2")
    out = batch_norm(out, f"{path}.bn2")
    shortcut = x
    if stride != 1 or in_planes != planes:
        shortcut = conv2d(x, planes, 1, stride, f"{path}.shortcut.0", padding=0)
        shortcut = batch_norm(shortcut, f"{path}.shortcut.1")
    out = layers.Add(name=f"{name}__add")([out, shortcut])
    return layers.ReLU(name=f"{name}__relu2")(out)


def _bottleneck(x, in_planes: int, planes: int, stride: int, path: str):
    """Bottleneck (expansion 4): 1x1 reduce, 3x3 (carries the stride), 1x1 expand."""
    name = torch_name(path)
    out_planes = 4 * planes
    out = conv2d(x, planes, 1, 1, f"{path}.conv1", padding=0)
    out = layers.ReLU(name=f"{name}__relu1")(batch_norm(out, f"{path}.bn1"))
    out = conv2d(out, planes, 3, stride, f"{path}.conv2")
    out = layers.ReLU(name=f"{name}__relu2")(batch_norm(out, f"{path}.bn2"))
    out = conv2d(out, out_planes, 1, 1, f"{path}.conv3", padding=0)
    out = batch_norm(out, f"{path}.bn3")
    shortcut = x
    if stride != 1 or in_planes != out_planes:
        shortcut = conv2d(x, out_planes, 1, stride, f"{path}.shortcut.0", padding=0)
        shortcut = batch_norm(shortcut, f"{path}.shortcut.1")
    out = layers.Add(name=f"{name}__add")([out, shortcut])
    return layers.ReLU(name=f"{name}__relu3")(out)


def _resnet(block, expansion: int, num_blocks, num_classes: int, input_shape, name: str,
            base_width: int = 64) -> keras.Model:
    inputs = keras.Input(shape=input_shape, name="image")
    x = conv2d(inputs, base_width, 3, 1, "conv1")
    x = layers.ReLU(name="relu")(batch_norm(x, "bn1"))  # [N, 32, 32, 64]
    in_planes = base_width
    for stage, (n, stride) in enumerate(zip(num_blocks, (1, 2, 2, 2)), start=1):
        planes = base_width * 2 ** (stage - 1)
        for i in range(n):
            x = block(x, in_planes, planes, stride if i == 0 else 1, f"layer{stage}.{i}")
            in_planes = planes * expansion
    # The reference does avg_pool2d(out, 4) on the final 4x4 map: a global average for
    # 32x32 inputs.
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = layers.Dense(num_classes, name="linear")(x)
    return keras.Model(inputs, logits, name=name)


@register("resnet18")
def resnet18(num_classes: int, input_shape=(32, 32, 3), base_width: int = 64) -> keras.Model:
    """CIFAR ResNet-18 (BasicBlocks [2, 2, 2, 2]); 11,173,962 parameters for 10 classes.

    `base_width` (default 64) scales every stage; other values exist for quick tests only.
    """
    return _resnet(_basic_block, 1, (2, 2, 2, 2), num_classes, input_shape, "resnet18",
                   base_width)


@register("resnet50")
def resnet50(num_classes: int, input_shape=(32, 32, 3), base_width: int = 64) -> keras.Model:
    """CIFAR ResNet-50 (Bottlenecks [3, 4, 6, 3], expansion 4); 23,520,842 parameters for
    10 classes. The RSLAD paper's black-box surrogate."""
    return _resnet(_bottleneck, 4, (3, 4, 6, 3), num_classes, input_shape, "resnet50",
                   base_width)
