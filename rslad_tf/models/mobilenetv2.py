"""CIFAR MobileNetV2: the RSLAD / ARD MobileNetV2 student (2,296,922 parameters for 10 classes).

Layout of the RSLAD reference code (`cifar10_models/mobilenet_v2.py`, the common
"kuangliu" CIFAR port of Sandler et al. 2018):

- stem: 3x3 conv, 32 filters, stride 1 (ImageNet: stride 2), BN, ReLU;
- 17 inverted-residual blocks from the config below, where the second stage has stride 1
  instead of 2 (two fewer downsamplings than ImageNet for 32x32 inputs);
- 1x1 conv to 1280, BN, ReLU, global average pooling, linear.

Details of this port that fix the parameter count (and differ from torchvision's):

- every block has the 1x1 expansion conv, also the first one with expansion 1
  (32 -> 32 channels: 1,024 extra weights + BN);
- ReLU, not ReLU6;
- a residual connection whenever stride is 1; if then the channel counts differ, the
  shortcut is a 1x1 conv + BN projection (4 blocks: 32->16, 16->24, 64->96, 160->320).
  torchvision has no projections and no residual there. Blocks with stride 2 have no
  residual at all.

Layer names mirror the reference PyTorch module paths ("layers.3.conv2" ->
"layers__3__conv2"), see `rslad_tf.models.resnet`.
"""

from __future__ import annotations

import keras
from keras import layers

from rslad_tf.models import register
from rslad_tf.models.resnet import batch_norm, conv2d, torch_name

# (expansion, out_planes, num_blocks, stride of the first block)
CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in the ImageNet model
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _block(x, in_planes: int, out_planes: int, expansion: int, stride: int, path: str):
    """Inverted residual: 1x1 expand - 3x3 depthwise (stride) - 1x1 project (linear)."""
    name = torch_name(path)
    planes = expansion * in_planes
    out = conv2d(x, planes, 1, 1, f"{path}.conv1", padding=0)
    out = layers.ReLU(name=f"{name}__relu1")(batch_norm(out, f"{path}.bn1"))
    out = conv2d(out, planes, 3, stride, f"{path}.conv2", depthwise=True)
    out = layers.ReLU(name=f"{name}__relu2")(batch_norm(out, f"{path}.bn2"))
    out = conv2d(out, out_planes, 1, 1, f"{path}.conv3", padding=0)
    out = batch_norm(out, f"{path}.bn3")
    if stride != 1:
        return out
    shortcut = x
    if in_planes != out_planes:
        shortcut = conv2d(x, out_planes, 1, 1, f"{path}.shortcut.0", padding=0)
        shortcut = batch_norm(shortcut, f"{path}.shortcut.1")
    return layers.Add(name=f"{name}__add")([out, shortcut])


@register("mobilenetv2")
def mobilenetv2(num_classes: int, input_shape=(32, 32, 3)) -> keras.Model:
    """CIFAR MobileNetV2 of the RSLAD/ARD reference; 2,296,922 parameters for 10 classes."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = conv2d(inputs, 32, 3, 1, "conv1")
    x = layers.ReLU(name="relu1")(batch_norm(x, "bn1"))  # [N, 32, 32, 32]
    in_planes, index = 32, 0
    for expansion, out_planes, num_blocks, stride in CFG:
        for i in range(num_blocks):
            x = _block(x, in_planes, out_planes, expansion, stride if i == 0 else 1,
                       f"layers.{index}")
            in_planes, index = out_planes, index + 1
    x = conv2d(x, 1280, 1, 1, "conv2", padding=0)  # [N, 4, 4, 1280]
    x = layers.ReLU(name="relu2")(batch_norm(x, "bn2"))
    # Reference: avg_pool2d(out, 4) on the 4x4 map = global average for 32x32 inputs.
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = layers.Dense(num_classes, name="linear")(x)
    return keras.Model(inputs, logits, name="mobilenetv2")
