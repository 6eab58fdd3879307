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

Choosing the backend happens before Keras is imported, so this module imports Keras only
inside the functions that need it: `select` (the command lines' ``--backend``),
`selected` and `import_keras` work in a process that has not imported Keras yet.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

SUPPORTED = ("tensorflow", "jax", "torch")
# The Python package each backend needs (the torch backend's is `torch`).
_FRAMEWORK = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


class BackendError(ValueError):
    """An unknown backend, a missing framework, or a backend chosen too late (Keras already
    imported with another one). The command lines turn it into a `UserError`."""


def selected() -> str:
    """The backend Keras runs (once imported) or will run: ``KERAS_BACKEND``, else
    TensorFlow, Keras' default."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow") or "tensorflow"


def select(backend: str | None, *, source: str = "--backend") -> str:
    """Make ``backend`` (None: keep ``KERAS_BACKEND`` or the default) the process's Keras
    backend by setting ``KERAS_BACKEND`` before Keras is imported; returns its name.

    `BackendError` (one line, naming ``source``) for a name outside `SUPPORTED`, for a
    framework that is not installed, and when Keras is already imported with another
    backend (Keras reads the variable once, at import)."""
    if backend is None:
        backend, source = selected(), "KERAS_BACKEND"
    if backend not in SUPPORTED:
        raise BackendError(f"{source}: unknown Keras backend {backend!r}; choose one of: "
                           f"{', '.join(SUPPORTED)}")
    if "keras" in sys.modules and selected() != backend:
        raise BackendError(f"{source} {backend}: Keras is already imported with the "
                           f"{selected()} backend in this process; choose the backend "
                           "before anything imports Keras")
    if importlib.util.find_spec(_FRAMEWORK[backend]) is None:
        raise BackendError(f"{source} {backend}: the {_FRAMEWORK[backend]} package is not "
                           f"installed; install it or choose another backend")
    os.environ["KERAS_BACKEND"] = backend
    return backend


def import_keras():
    """``import keras``, with TensorFlow imported first without its start-up lines
    (`rslad_tf.common.quiet`) when TensorFlow is the backend; under JAX and torch
    TensorFlow is not imported. Returns the module."""
    if "keras" not in sys.modules and selected() == "tensorflow":
        from rslad_tf.common.quiet import import_tensorflow

        import_tensorflow()
    import keras

    return keras


@contextlib.contextmanager
def tensorflow_kept_out():
    """Within the block, Keras treats TensorFlow as absent when this process has not
    imported it (JAX and torch runs): Keras' saving and ``set_random_seed`` otherwise
    import TensorFlow, if it is installed, only to test whether a value is one of its
    types, and a process that never imported TensorFlow holds none. A no-op on the
    TensorFlow backend or once TensorFlow is imported."""
    from keras.src.utils import module_utils

    lazy = module_utils.tensorflow
    if selected() == "tensorflow" or "tensorflow" in sys.modules or lazy.module is not None:
        yield
        return
    saved = lazy._available
    lazy._available = False
    try:
        yield
    finally:
        lazy._available = saved


def name() -> str:
    """The running Keras backend ("tensorflow", "jax" or "torch")."""
    import keras

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
