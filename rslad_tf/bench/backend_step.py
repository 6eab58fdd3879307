"""The RSLAD training step through `RSLADModel` on the running Keras backend (TensorFlow,
JAX or torch), built and timed inside one benchmark worker process (`peers`).

Two ways to drive it:

- ``path="step"`` (the GPU profile): batches already on the device, and the step function
  Keras' own ``fit`` loop calls (``train_function``), compiled as the backend compiles it
  (``jit_compile=True``: XLA on JAX and TensorFlow, ``torch.compile`` on torch), called the
  way ``fit`` calls it (JAX: the variable state passed from step to step, never synced back
  to the variables between steps);
- ``path="fit"`` (the CPU paper profile): the public ``RSLADModel(student,
  teacher).compile(optimizer=...).fit(x, y, batch_size=...)`` on numpy arrays with default
  settings, or with the documented TensorFlow speed options (`SPEED_OPTIONS`), timed
  between batch ends by a callback.

Nothing here imports TensorFlow unless the backend is TensorFlow.
"""

from __future__ import annotations

import random
import time

import numpy as np

# The documented speed options of the API user on TensorFlow (docs/speed.md): each a
# keyword of `KerasRunner`. "shards" is a process setting (`runtime.configure`), applied
# by the worker before TensorFlow starts.
SPEED_OPTIONS = ("shards", "device_data", "cache", "fold", "dtype", "jit")


def _sync(value) -> None:
    """Wait until the device has computed ``value`` (a tensor or a nest of them)."""
    import keras

    keras.tree.map_structure(lambda t: np.asarray(keras.ops.convert_to_numpy(t)), value)


def _device() -> str:
    """"gpu" or "cpu": where the running backend puts its tensors by default."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return "cpu" if jax.devices()[0].platform == "cpu" else "gpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


class KerasRunner:
    """An `RSLADModel` on a profile's models (`profiles.Profile`), ready to time.

    ``dtype``: "float32" or "bfloat16" (the student and the teacher built under Keras'
    ``mixed_bfloat16`` policy: bfloat16 compute, float32 weights; the losses in float32).
    ``jit``: ``jit_compile`` for ``compile`` (None: Keras' default, "auto").
    ``device_data``, ``cache``, ``fold``: the TensorFlow fast paths (``path="fit"``).
    """

    def __init__(self, profile, *, path="step", dtype="float32", jit=None, device_data=False,
                 cache=False, fold=False, seed=0, num_batches=4):
        import keras

        from rslad_tf import models
        from rslad_tf.methods import RSLADModel

        self.profile, self.path = profile, path
        self.backend = keras.backend.backend()
        # Keras draws its initial weights from Python's generator (keras.utils'
        # set_random_seed would also import TensorFlow wherever it is installed).
        random.seed(seed)
        np.random.seed(seed)
        policy = {"float32": None, "bfloat16": "mixed_bfloat16"}[dtype]
        previous = keras.config.dtype_policy()
        if policy:
            keras.config.set_dtype_policy(policy)
        try:
            student = models.create(profile.student[0], profile.num_classes,
                                    input_shape=profile.image_shape, **profile.student[1])
            teacher = models.create(profile.teacher[0], profile.num_classes,
                                    input_shape=profile.image_shape, **profile.teacher[1])
        finally:
            keras.config.set_dtype_policy(previous)
        self.method = RSLADModel(student, teacher, epsilon=profile.epsilon,
                                 step_size=profile.epsilon / 4,
                                 attack_steps=profile.attack_steps, weight_decay=2e-4,
                                 seed=seed)
        compile_args = {} if jit is None else {"jit_compile": bool(jit)}
        self.method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), **compile_args)
        self.jit_compile = bool(self.method.jit_compile)
        rng = np.random.default_rng(seed)
        b = profile.batch_size
        n = b * num_batches
        self.x = rng.random((n,) + tuple(profile.image_shape), dtype=np.float32)
        self.y = rng.integers(0, profile.num_classes, n).astype(np.int32)
        self.folded = self.method.set_attack_batchnorm_folding(True) if fold else False
        self.cache = None
        self._fit_data = None
        if path == "fit":
            self._prepare_fit(device_data, cache)
        else:
            self._prepare_step()

    # -- path "step" ----------------------------------------------------------------------
    def _prepare_step(self):
        import keras

        b = self.profile.batch_size
        self.method.build((None,) + tuple(self.profile.image_shape))
        self.method.optimizer.build(self.method.student.trainable_variables)
        # The batches on the device once (convert_to_tensor places them on the default
        # device of every backend).
        self.batches = [(keras.ops.convert_to_tensor(self.x[i:i + b]),
                         keras.ops.convert_to_tensor(self.y[i:i + b]))
                        for i in range(0, len(self.x), b)]
        self._count = 0
        self.method.make_train_function()
        if self.backend == "jax":
            self._state = self.method._get_jax_state(
                trainable_variables=True, non_trainable_variables=True,
                optimizer_variables=True, metrics_variables=True)
        elif self.backend == "tensorflow":
            import tensorflow as tf

            batches = self.batches

            def generate():
                while True:
                    yield from batches

            spec = tuple(tf.TensorSpec(t.shape, t.dtype) for t in batches[0])
            self._iterator = iter(tf.data.Dataset.from_generator(generate,
                                                                 output_signature=spec))

    def _next_batch(self):
        batch = self.batches[self._count % len(self.batches)]
        self._count += 1
        return batch

    def _steps(self, steps: int) -> None:
        method = self.method
        if self.backend == "jax":
            state = self._state
            for _ in range(steps):
                logs, state = method.train_function(state, iter([self._next_batch()]))
            self._state = state
            _sync((logs, state[0][0]))
        elif self.backend == "torch":
            for _ in range(steps):
                logs = method.train_function([self._next_batch()])
            _sync(logs)
        else:
            for _ in range(steps):
                logs = method.train_function(self._iterator)
            _sync(logs)

    # -- path "fit" -----------------------------------------------------------------------
    def _prepare_fit(self, device_data, cache):
        import keras

        b, n = self.profile.batch_size, len(self.x)
        runner = self

        class BatchClock(keras.callbacks.Callback):
            """Times the batch ends of `fit` (reading the loss waits for the step)."""

            def on_train_batch_end(self, batch, logs=None):
                if logs and "loss" in logs:
                    float(logs["loss"])
                runner._batch_ends.append(time.perf_counter())

        self._clock = BatchClock()
        self._batch_ends = []
        if device_data or cache:
            from rslad_tf.data.device_data import DeviceData, indexed_dataset

            if device_data:
                data = DeviceData(self.x, self.y)
                self.method.attach_device_data(data)
                self._fit_data = data.index_dataset(b)
            else:
                self._fit_data = indexed_dataset(self.x, self.y, b)
            if cache:
                from rslad_tf.methods.soft_label_cache import SoftLabelCache

                self.cache = SoftLabelCache(n, self.profile.num_classes)
                self.method.attach_teacher_cache(self.cache)

    def _fit(self, epochs: int = 1) -> None:
        """``epochs`` passes over the runner's training set through the public ``fit``."""
        self._batch_ends = []
        if self._fit_data is not None:
            self.method.fit(self._fit_data, epochs=epochs, verbose=0, callbacks=[self._clock])
        else:
            self.method.fit(self.x, self.y, batch_size=self.profile.batch_size, epochs=epochs,
                            verbose=0, callbacks=[self._clock])

    # -- the worker's calls ---------------------------------------------------------------
    def warm_up(self, steps: int) -> float:
        """Trace / compile (and fill the teacher cache: one pass over the data); seconds."""
        started = time.perf_counter()
        if self.path == "fit":
            self._fit(1)
        else:
            self._steps(steps)
        return time.perf_counter() - started

    def time(self, steps: int):
        """(images/s wall clock, images per CPU second of this process) of ``steps`` steps
        (path "fit": one pass over the data set, the first batch end to the last)."""
        start, start_cpu = time.perf_counter(), time.process_time()
        if self.path == "fit":
            self._fit(1)
            ends = self._batch_ends
            images = (len(ends) - 1) * self.profile.batch_size
            wall = ends[-1] - ends[0]
        else:
            self._steps(steps)
            images = steps * self.profile.batch_size
            wall = time.perf_counter() - start
        cpu = time.process_time() - start_cpu
        return images / wall, images / max(cpu, 1e-9)

    def info(self) -> dict:
        """What this runner is, for the report (FLOPs from the layers' shapes)."""
        import keras

        from rslad_tf.bench.flops import model_flops

        out = {"backend": self.backend, "keras": keras.__version__, "device": _device(),
               "jit_compile": self.jit_compile, "folded": self.folded,
               "student_forward_flops": model_flops(self.method.student),
               "teacher_forward_flops": model_flops(self.method.teacher)}
        if self.cache is not None:
            out["cache_hit_rate"] = self.cache.counters()["hit_rate"]
        return out
