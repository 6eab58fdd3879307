"""What differs between the Keras backends, written once per backend.

The training methods and the PGD engine are written in ``keras.ops``; two things cannot
be: the gradient with respect to the attack's input, and the update of the student. Each
backend module (`tf_backend`, `jax_backend`, `torch_backend`) defines both, in the form
Keras' own trainers use on that backend:

- ``input_gradient(fn, x)``: the gradient of the scalar ``fn(x)`` with respect to ``x``
  only (TensorFlow: a tape watching ``x`` alone; JAX: ``jax.grad``; torch:
  ``torch.autograd.grad``, which never accumulates into the model's ``.grad``);
- ``train_step(method, ...)``: one optimizer step of an `AdversarialMethod` (TensorFlow
  and torch: ``train_step(method, data)``; JAX: the stateless
  ``train_step(method, state, data)`` returning ``(logs, new_state)``).

`current()` returns the module of the running backend; importing it imports only that
backend's framework (under JAX and torch no TensorFlow is imported).
"""

from __future__ import annotations

import keras

SUPPORTED = ("tensorflow", "jax", "torch")


def name() -> str:
    """The running Keras backend ("tensorflow", "jax" or "torch")."""
    return keras.backend.backend()


def is_tensorflow() -> bool:
    return name() == "tensorflow"


def current():
    """The per-backend module of the running Keras backend."""
    backend = name()
    if backend == "tensorflow":
        from rslad_tf.backends import tf_backend as module
    elif backend == "jax":
        from rslad_tf.backends import jax_backend as module
    elif backend == "torch":
        from rslad_tf.backends import torch_backend as module
    else:
        raise RuntimeError(f"Keras backend {backend!r} is not supported: set KERAS_BACKEND "
                           f"to one of {SUPPORTED}")
    return module


def input_gradient(fn, x):
    """d fn(x) / dx for a scalar-valued ``fn`` (see the module docstring)."""
    return current().input_gradient(fn, x)


_said = set()


def tensorflow_only(feature: str) -> None:
    """Say once per process that ``feature`` is a TensorFlow speed path that another backend
    does without (it then runs the plain computation)."""
    if feature not in _said:
        _said.add(feature)
        import warnings

        warnings.warn(f"{feature} exists on the TensorFlow backend only; the {name()} backend "
                      "runs without it (same results, without the speed-up)", stacklevel=3)


def cond(pred, true_fn, false_fn):
    """``true_fn()`` if the scalar bool ``pred`` else ``false_fn()``, where a branch may
    assign variables (a BatchNorm pass in training mode): only the chosen branch's
    assignments take effect, on every backend (TensorFlow: ``tf.cond``; torch: a Python
    branch; JAX: both branches traced, outputs and assignments selected by ``pred``)."""
    return current().cond(pred, true_fn, false_fn)
