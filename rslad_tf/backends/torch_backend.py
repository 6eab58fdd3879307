"""PyTorch: ``torch.autograd.grad`` for the attack's input gradient and for the update of
the student; nothing is ever accumulated into the model's ``.grad`` (no ``.backward()``)."""

from __future__ import annotations

import contextlib

import keras
import torch

from rslad_tf.common import onednn

# oneDNN's x86 weight gradient of a strided 1x1 convolution on a channels-last input with
# fewer channels than its register block corrupts the heap or comes out wrong
# (`rslad_tf.common.onednn`, docs/backends.md). Keras' torch backend hands torch
# channels-last views, so a ResNet narrower than 16 meets it: such a student takes its
# weight gradient with oneDNN off (PyTorch's own convolution: slower, exact); every other
# model keeps oneDNN.


def _weight_gradient_context(method, values):
    """Where the student's weight gradient is taken: with oneDNN off on a CPU for a
    student with `onednn.torch_weight_gradient_hazard`, else as torch chooses."""
    # The walk over the student's layers: 0.09 ms for ResNet-18, against seconds for a CPU step.
    if values and values[0].device.type == "cpu" and onednn.torch_weight_gradient_hazard(
            method.student):
        return _onednn_off()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _onednn_off():
    # Only the switch itself: torch.backends.mkldnn.flags would also reset (and warn about)
    # its TF32 and determinism settings.
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def input_gradient(fn, x):
    """d fn(x) / dx for ``x`` alone (zeros where fn has no gradient path to its input)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        value = fn(x)
        if not value.requires_grad:
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(value, [x], allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def train_step(method, data):
    """One step of an `AdversarialMethod`: the attack without a graph over the weights,
    then the gradient of the loss with respect to the student's trainable variables."""
    with torch.no_grad():  # the attack takes its own input gradients (`input_gradient`)
        x, y, x_adv, ctx = method.attack_phase(data)
    variables = method.student.trainable_variables
    optimizer = method.optimizer
    loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    if loss_scaling and not optimizer.built:
        optimizer.build(variables)
    terms = method.loss_terms(x, x_adv, y, ctx)
    loss = optimizer.scale_loss(terms["loss"]) if loss_scaling else terms["loss"]
    values = [v.value for v in variables]
    with _weight_gradient_context(method, values):
        grads = torch.autograd.grad(loss, values, allow_unused=True)
    with torch.no_grad():
        grads = [torch.zeros_like(v) if g is None else g for g, v in zip(grads, values)]
        scale = optimizer.dynamic_scale.value if loss_scaling else None
        grads = method.with_weight_decay(grads, values, loss_scale=scale)
        optimizer.apply(grads, variables)
        terms = {k: v.detach() for k, v in terms.items()}
        return method.update_metrics(terms, y)


def cond(pred, true_fn, false_fn):
    return true_fn() if bool(pred) else false_fn()


def test_step(method, data):
    with torch.no_grad():
        return method.evaluate_batch(data)


def set_threads(threads: int) -> None:
    """torch's intra-op pool: ``threads`` (oversubscribed pools make small CPU runs many
    times slower)."""
    torch.set_num_threads(threads)
