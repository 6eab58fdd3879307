"""An inference-mode view of a model with each BatchNorm folded into the convolution before it.

In inference mode a BatchNorm is an affine map per channel, ``y = gamma * (z - mean) /
sqrt(var + eps) + beta``; after a convolution ``z = W * x + b`` it is the convolution with
kernel ``W * f`` and bias ``(b - mean) * f + beta``, ``f = gamma / sqrt(var + eps)``. PGD calls
the model in inference mode 10-20 times per batch with the same weights, so the training
attack can use the folded network: the same function (up to float rounding), fewer ops, no
float32 round trips around BatchNorm under mixed precision (Keras computes BatchNorm in
float32), and a Conv + BiasAdd + ReLU pattern the CPU graph optimiser fuses. A stride-1
convolution with at most 4 input channels (the first layer: 1 channel on digits, 3 on
CIFAR) also gets its input gradient as one matmul and a shifted sum: the library kernel for
a gradient with so few output channels was the slowest op of the CPU attack (1 ms of 6 per
PGD step on digits). Only the input gradient is defined there: the view is for attacks.

``folded_view(model)`` returns a factory; call it inside the traced training step (outside
the PGD loop) to compute the folded weights once per step from the live variables, then
call the result like the model. Only functional Keras models are folded; a pair is folded
when a ``Conv2D``/``DepthwiseConv2D`` without activation feeds only a channels-last
``BatchNormalization``. Anything else runs through the model's own layers in inference
mode, so the view is exact in structure for any functional model and ``None`` for other
models (callers then use the model itself).
"""

from __future__ import annotations

import keras
from keras import layers, ops


class FoldedModel:
    """The model as ``fn(x, training=False)`` with folded conv/BN pairs (inference mode only)."""

    def __init__(self, plan, weights):
        self._plan = plan
        self._weights = weights

    def __call__(self, x, training=False):
        del training  # always inference mode: that is what makes folding valid
        plan = self._plan
        values = {id(plan.input): x}
        for layer in plan.layers:
            args = _map_structure(lambda t: values[id(t)], plan.inputs[id(layer)])
            if id(layer) in plan.skipped:
                out = args  # a folded BatchNorm: already applied by its convolution
            elif id(layer) in self._weights:
                kernel, bias = self._weights[id(layer)]
                args = ops.cast(args, layer.compute_dtype)
                if isinstance(layer, layers.DepthwiseConv2D):
                    out = ops.depthwise_conv(args, kernel, strides=layer.strides,
                                             padding=layer.padding,
                                             dilation_rate=layer.dilation_rate)
                elif _few_input_channels(layer):
                    out = _conv_with_matmul_input_gradient(args, kernel, layer.padding)
                else:
                    out = ops.conv(args, kernel, strides=layer.strides, padding=layer.padding,
                                   dilation_rate=layer.dilation_rate)
                out = out + bias
            else:
                out = layer(args, training=False)
            values[id(plan.outputs[id(layer)])] = out
        return values[id(plan.output)]


class _Plan:
    """Which layers fold, computed once per model from its functional graph."""

    def __init__(self, model):
        self.layers = [layer for layer in model.layers
                       if not isinstance(layer, layers.InputLayer)]
        self.input = model.inputs[0]
        self.output = model.outputs[0]
        # Each layer's (single) call: its symbolic inputs and output. A shared layer (called
        # more than once) raises here and the model is not folded.
        self.inputs = {id(layer): layer.input for layer in self.layers}
        self.outputs = {id(layer): layer.output for layer in self.layers}
        consumers: dict[int, int] = {}
        for layer in self.layers:
            for tensor in _flatten(self.inputs[id(layer)]):
                consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
        producer = {id(self.outputs[id(layer)]): layer for layer in self.layers}
        self.pairs = {}  # id(conv) -> (conv, bn)
        for layer in self.layers:
            if not isinstance(layer, layers.BatchNormalization):
                continue
            source = self.inputs[id(layer)]
            conv = producer.get(id(source))
            if (_foldable_conv(conv) and _channels_last_bn(layer)
                    and consumers.get(id(source)) == 1 and source is not self.output):
                self.pairs[id(conv)] = (conv, layer)
        self.skipped = {id(bn) for _, bn in self.pairs.values()}


def _foldable_conv(layer) -> bool:
    """A plain Conv2D (no groups) or DepthwiseConv2D, channels last, no activation."""
    if type(layer) is layers.Conv2D:
        if getattr(layer, "groups", 1) != 1:
            return False
    elif type(layer) is not layers.DepthwiseConv2D:
        return False
    return (layer.activation is keras.activations.linear
            and layer.data_format == "channels_last")


def _few_input_channels(layer) -> bool:
    kh, kw, c_in, _ = (int(d) for d in layer.kernel.shape)
    return (c_in <= 4 and tuple(layer.strides) == (1, 1)
            and tuple(layer.dilation_rate) == (1, 1) and kh % 2 == 1 and kw % 2 == 1)


def _conv_with_matmul_input_gradient(x, kernel, padding):
    import tensorflow as tf

    kh, kw, c_in, c_out = (int(d) for d in kernel.shape)

    @tf.custom_gradient
    def conv(x):
        y = tf.nn.conv2d(x, kernel, 1, padding.upper())

        def grad(g):
            # d/dx of a stride-1 conv: each output gradient spreads back through the kernel
            # taps. One matmul [B*H*W, C_out] x [C_out, taps*C_in], then a shifted sum.
            taps = tf.reshape(tf.matmul(tf.reshape(g, [-1, c_out]),
                                        tf.reshape(kernel, [kh * kw * c_in, c_out]),
                                        transpose_b=True),
                              tf.concat([tf.shape(g)[:3], [kh, kw, c_in]], 0))
            total = None
            for i in range(kh):
                for j in range(kw):
                    part = tf.pad(taps[:, :, :, i, j, :],
                                  [[0, 0], [i, kh - 1 - i], [j, kw - 1 - j], [0, 0]])
                    total = part if total is None else total + part
            if padding == "same":
                total = total[:, kh // 2: tf.shape(total)[1] - kh // 2,
                              kw // 2: tf.shape(total)[2] - kw // 2, :]
            return total

        return y, grad

    return conv(x)


def _channels_last_bn(layer) -> bool:
    axis = layer.axis
    rank = len(layer.input.shape)
    return type(layer) is layers.BatchNormalization and axis in (-1, rank - 1)


def _flatten(structure):
    if isinstance(structure, (list, tuple)):
        return [t for item in structure for t in _flatten(item)]
    if isinstance(structure, dict):
        return [t for item in structure.values() for t in _flatten(item)]
    return [structure]


def _map_structure(fn, structure):
    if isinstance(structure, list):
        return [_map_structure(fn, item) for item in structure]
    if isinstance(structure, tuple):
        return tuple(_map_structure(fn, item) for item in structure)
    if isinstance(structure, dict):
        return {k: _map_structure(fn, v) for k, v in structure.items()}
    return fn(structure)


def _folded_weights(conv, bn):
    """(kernel, bias) of conv followed by bn in inference mode, in the conv's compute dtype."""
    factor = ops.rsqrt(ops.cast(bn.moving_variance, "float32") + bn.epsilon)
    if bn.scale:
        factor = factor * ops.cast(bn.gamma, "float32")
    bias = -ops.cast(bn.moving_mean, "float32") * factor
    if bn.center:
        bias = bias + ops.cast(bn.beta, "float32")
    kernel = ops.cast(conv.kernel, "float32")
    if isinstance(conv, layers.DepthwiseConv2D):
        # kernel [kh, kw, in, multiplier]; output channel c = in * multiplier + m.
        kernel = kernel * ops.reshape(factor, tuple(conv.kernel.shape[2:]))
    else:
        kernel = kernel * factor  # [kh, kw, in, out] * [out]
    if conv.use_bias:
        bias = bias + ops.cast(conv.bias, "float32") * factor
    return ops.cast(kernel, conv.compute_dtype), ops.cast(bias, conv.compute_dtype)


def folded_view(model):
    """A factory ``make() -> FoldedModel`` for ``model``, or None if nothing folds or the
    model is not a single-input, single-output functional model."""
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        return None
    try:
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            return None
        plan = _Plan(model)
    except (AttributeError, ValueError, TypeError):
        return None
    if not plan.pairs:
        return None

    def make():
        weights = {id(conv): _folded_weights(conv, bn) for conv, bn in plan.pairs.values()}
        return FoldedModel(plan, weights)

    make.num_folded = len(plan.pairs)
    return make
