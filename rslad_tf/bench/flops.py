"""FLOPs counted analytically from a model's layers, multiply-adds x 2 (for TFLOP/s).

Conv2D ``2 * H_out * W_out * k_h * k_w * C_in / groups * C_out``; DepthwiseConv2D
``2 * H_out * W_out * k_h * k_w * C_in * multiplier``; Dense ``2 * inputs * units`` per
position; BatchNorm, activations, pooling and additions are ignored (a few percent). A
forward pass costs F; its gradient with respect to the input another F; a training
backward pass (input and weight gradients) 2F. RSLAD step per image:
``steps * 2 F_s`` (attack) ``+ 2 * 3 F_s`` (two training passes) ``+ r * F_t`` (teacher, r =
fraction of rows the teacher computes: 1 without the cache). PGD-k per image: ``k * 2 F_s``.
"""

from __future__ import annotations

import numpy as np


def _shape(tensor):
    """Per-image shape of a layer output (the batch dimension dropped)."""
    return tuple(int(d) if d is not None else 1 for d in tensor.shape[1:])


def model_flops(model) -> int:
    """Forward FLOPs of one image (conv and dense layers, 2 per multiply-add; nested
    models are counted through their layers)."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if getattr(layer, "layers", None):
            total += model_flops(layer)
        elif isinstance(layer, layers.DepthwiseConv2D):
            h, w, _ = _shape(layer.output)
            kh, kw, c_in, multiplier = (int(d) for d in layer.kernel.shape)
            total += 2 * h * w * kh * kw * c_in * multiplier
        elif isinstance(layer, layers.Conv2D):
            h, w, c_out = _shape(layer.output)
            kh, kw, c_in_per_group, _ = (int(d) for d in layer.kernel.shape)
            total += 2 * h * w * kh * kw * c_in_per_group * c_out
        elif isinstance(layer, layers.Dense):
            positions = int(np.prod(_shape(layer.output)[:-1]))  # 1 for [B, units]
            total += 2 * positions * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    return int(total)


def step_flops(student_flops: int, teacher_flops: int, attack_steps: int,
               teacher_fraction: float = 1.0) -> float:
    """FLOPs of one RSLAD training step per image (see the module docstring)."""
    return ((2 * attack_steps + 6) * student_flops) + teacher_fraction * teacher_flops


def pgd_flops(student_flops: int, steps: int) -> int:
    """FLOPs of PGD-`steps` per image (a forward and an input gradient per step)."""
    return steps * 2 * student_flops
