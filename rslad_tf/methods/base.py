"""The shared training machinery of every method: a `keras.Model` around the student.

A method subclass says three things, each in one place:

- ``prepare(x, y)``: what the frozen teacher (or the student in inference mode) provides
  before the attack, e.g. RSLAD's soft labels T(x). Computed once per batch, no gradients.
- ``attack(x, y, ctx)``: the inner maximisation, built on ``rslad_tf.attacks.pgd_graph``.
- ``loss_terms(x, x_adv, y, ctx)``: the outer loss as a dict with key "loss", one entry
  per logged term, and "logits" (the student logits whose accuracy is logged as "acc";
  adversarial ones for adversarial methods), computed with the student in training mode.

`train_step` does the rest: in-batch augmentation on the device, the update of the student
only (teacher frozen and never in training mode), PyTorch-style coupled weight decay, and
loss scaling so N replicas under `tf.distribute` compute the same update as one device.

Every Keras backend: the pieces above are written in ``keras.ops``; the update itself is
written once per backend in `rslad_tf.backends` (TensorFlow: a tape; JAX: the stateless
``train_step(state, data)``; torch: ``torch.autograd.grad``), around the shared
`attack_phase`, `loss_terms`, `with_weight_decay` and `update_metrics`. Under JAX and torch
nothing here imports TensorFlow.

Fast paths (runtime options, off by default, never saved with the model):

- ``attach_device_data(DeviceData)``: batches arrive as ``{"index": [B]}`` and the images
  are gathered from the training set held on the device (`rslad_tf.data.device_data`).
- ``attach_teacher_cache(SoftLabelCache)``: methods whose soft labels are the teacher's
  output on the clean augmented images (ARD, IAD, RSLAD) reuse those logits per (image,
  crop offset, flip); batches must carry ``"index"`` (`rslad_tf.methods.soft_label_cache`).
- ``attach_weight_average(WeightAverage)``: an exponential moving average of the student's
  weights, updated after every optimizer step (`rslad_tf.methods.ema`).
- ``set_attack_batchnorm_folding(True)``: the training attack runs the student with each
  BatchNorm folded into its convolution (inference mode only; same function up to rounding).
- A student built under a mixed precision policy is detected: the attack objective stays
  float32 (scaled for float16), the fraction of zero input gradients is logged as
  ``zero_grad_frac``, and a `keras.optimizers.LossScaleOptimizer` gets its loss scaled.

These fast paths (mixed precision aside) are TensorFlow paths: on JAX and torch the attach
calls refuse with a clear error (folding is skipped with a warning). In-batch augmentation
runs on every backend (`rslad_tf.data.augment`, in ``keras.ops``).
"""

from __future__ import annotations

import sys

import keras
from keras import ops

from rslad_tf import backends, losses
from rslad_tf.attacks import pgd_graph
from rslad_tf.common.model_walk import all_layers
from rslad_tf.transforms.bn_folding import folded_view

# float16 attack objectives are multiplied by this before the input gradient (the step uses
# its sign only): keeps small gradients from underflowing in float16 backprop.
FLOAT16_ATTACK_OBJECTIVE_SCALE = 2.0**10

ATTACK_BATCHNORM_MODES = ("inference", "train")


class _TrainModeView:
    """Calls a model in training mode whatever it is asked: the ARD/IAD reference codes run
    their attack with BatchNorm in training mode (``attack_batchnorm="train"``)."""

    def __init__(self, model):
        self._model = model

    def __call__(self, x, training=False):
        del training
        return self._model(x, training=True)


def student_precision(model) -> str:
    """The lowest compute dtype among a model's layers: "float32", "bfloat16" or "float16"."""
    dtypes = {str(getattr(layer, "compute_dtype", "float32")) for layer in all_layers(model)}
    for low in ("float16", "bfloat16"):
        if low in dtypes:
            return low
    return "float32"


class _EpochCounter(keras.callbacks.Callback):
    """Keeps the method's ``epoch`` variable in step with `fit` (used by IAD's warm-up)."""

    def __init__(self, method):
        super().__init__()
        self._method = method

    def on_epoch_begin(self, epoch, logs=None):
        self._method.epoch.assign(epoch)


class AdversarialMethod(keras.Model):
    """Base class of the training methods. Subclasses set ``method_name`` and ``term_names``.

    Args:
        student: the Keras model being trained (images in [0,1] -> logits).
        teacher: a frozen Keras model (distillation methods only).
        epsilon: L-inf radius of the training attack (8/255 for CIFAR).
        step_size: PGD step (2/255 for CIFAR).
        attack_steps: PGD steps of the training attack (10).
        attack_start: "none", "uniform" or "normal" (the method's reference default if None).
        attack_batchnorm: "inference" (BatchNorm frozen during the attack) or "train"
            (as the ARD/IAD references do; moving statistics then drift during the attack).
        weight_decay: coupled L2 added to the gradients, as PyTorch's SGD(weight_decay=...).
        augment_padding, augment_flip: in-batch pad-crop / flip on the device (0 / False off).
        seed: seed of the method's random generator (attack starts, augmentation).
    """

    method_name = "base"
    term_names: tuple = ()
    default_attack_start = "uniform"
    # Whether the training attack clips its random start to [0, 1] before the first gradient
    # (`attacks.engine.random_start`): Madry's code does (SAT sets True); the ARD, IAD,
    # TRADES, RSLAD and AdaAD references take the first gradient at the unclipped x + noise.
    clip_attack_start = False
    uses_teacher = False
    # True for methods whose `prepare` asks the teacher about the clean augmented batch
    # only (those logits can be cached per image and augmentation): `prepare_batch` then
    # reads them through `clean_teacher_logits`.
    supports_teacher_cache = False

    def __init__(self, student, teacher=None, *, epsilon=8 / 255, step_size=2 / 255,
                 attack_steps=10, attack_start=None, attack_batchnorm="inference",
                 weight_decay=0.0, augment_padding=0, augment_flip=False, seed=0, **kwargs):
        super().__init__(**kwargs)
        if attack_start is None:
            attack_start = self.default_attack_start
        if attack_batchnorm not in ATTACK_BATCHNORM_MODES:
            raise ValueError(f"attack_batchnorm must be one of {ATTACK_BATCHNORM_MODES}, "
                             f"got {attack_batchnorm!r}")
        if self.uses_teacher and teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher model")
        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.student = student
        self.teacher = teacher if self.uses_teacher else None
        if self.teacher is not None:
            self.teacher.trainable = False
        self.epsilon = float(epsilon)
        self.step_size = float(step_size)
        self.attack_steps = int(attack_steps)
        self.attack_start = attack_start
        self.attack_batchnorm = attack_batchnorm
        self.weight_decay = float(weight_decay)
        self.augment_padding = int(augment_padding)
        self.augment_flip = bool(augment_flip)
        self.seed = int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="method_seed")
        # The current epoch, for schedules inside the loss (IAD's warm-up); set by `fit`.
        self.epoch = keras.Variable(0, dtype="int32", trainable=False, name="epoch")
        self.loss_trackers = {name: keras.metrics.Mean(name=name)
                              for name in ("loss",) + tuple(self.term_names)}
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="acc")
        # Mixed precision student (built under a mixed dtype policy): log how many input
        # gradients of the attack are exactly zero (underflow makes them zero).
        self.student_precision = student_precision(student)
        if self.student_precision != "float32":
            self.zero_grad_tracker = keras.metrics.Mean(name="zero_grad_frac")
        # Fast paths: runtime options, not hyperparameters (see the module docstring).
        self._device_data = None
        self._teacher_cache = None
        self._attack_view_factory = None
        self._weight_average = None
        # A functional student is built on creation; mark the wrapper built too, so that its
        # optimizer state is saved and restored with it (an unbuilt wrapper loses it).
        if student.built:
            self.built = True

    # -- Keras plumbing -------------------------------------------------------------------
    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def build(self, input_shape):
        # Build the student (and teacher) so that optimizer state saves and reloads.
        if not self.student.built:
            self.student.build(input_shape)
        self.built = True

    @property
    def metrics(self):
        extra = [self.zero_grad_tracker] if self.student_precision != "float32" else []
        return list(self.loss_trackers.values()) + [self.accuracy_tracker] + extra

    # -- fast paths -----------------------------------------------------------------------
    def _retrace(self):
        # Options are read while the step is traced: trace again after a change.
        self.train_function = None

    @property
    def device_data(self):
        return self._device_data

    @property
    def teacher_cache(self):
        return self._teacher_cache

    def _require_tensorflow(self, what: str) -> None:
        if not backends.is_tensorflow():
            raise ValueError(f"{what} is a TensorFlow path; the {backends.name()} backend "
                             "trains without it (set KERAS_BACKEND=tensorflow to use it)")

    def attach_device_data(self, data) -> None:
        """Train from a `rslad_tf.data.device_data.DeviceData` (or None to detach): `fit`
        then takes its ``index_dataset`` (batches ``{"index": [B]}``) and the step gathers
        the images and labels on the device."""
        if data is not None:
            self._require_tensorflow("device data")
        self._device_data = data
        self._retrace()

    def attach_teacher_cache(self, cache) -> None:
        """Reuse teacher logits through a `SoftLabelCache` (or None to detach). Batches must
        carry the image indices (``{"index": ...}``: device data or ``indexed_dataset``)."""
        if cache is not None and not self.supports_teacher_cache:
            raise ValueError(f"{type(self).__name__} has no cacheable teacher output "
                             "(only methods whose teacher sees clean images only)")
        if cache is not None:
            self._require_tensorflow("the teacher soft-label cache")
            if backends.current().num_replicas() > 1:
                raise ValueError("the teacher soft-label cache works on one device only")
        self._teacher_cache = cache
        self._retrace()

    @property
    def weight_average(self):
        return self._weight_average

    def attach_weight_average(self, average) -> None:
        """Update ``average`` (a `rslad_tf.methods.ema.WeightAverage` of the student, or None
        to detach) after every optimizer step. One device only."""
        if average is not None:
            self._require_tensorflow("the weight average")
            if backends.current().num_replicas() > 1:
                raise ValueError("the weight average works on one device only")
        self._weight_average = average
        self._retrace()

    def set_attack_batchnorm_folding(self, enabled: bool) -> bool:
        """Fold BatchNorm into the convolutions for the training attack (inference-mode
        attacks only). Returns whether anything is folded."""
        factory = None
        if enabled and not backends.is_tensorflow():
            backends.tensorflow_only("BatchNorm folding of the training attack")
        elif enabled and self.attack_batchnorm == "inference":
            factory = folded_view(self.student)
        self._attack_view_factory = factory
        self._retrace()
        return factory is not None

    def fit(self, *args, callbacks=None, **kwargs):
        data = args[0] if args else kwargs.get("x")
        tf = sys.modules.get("tensorflow")  # a tf.data input means TensorFlow is loaded
        if tf is not None and isinstance(data, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)  # a dataset shuffles itself
        callbacks = list(callbacks or []) + [_EpochCounter(self)]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def get_config(self):
        config = {
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": (keras.saving.serialize_keras_object(self.teacher)
                        if self.teacher is not None else None),
            "name": self.name,
        }
        config.update(self.hyperparameters())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        teacher = config.pop("teacher", None)
        if cls.uses_teacher:
            config["teacher"] = keras.saving.deserialize_keras_object(teacher)
        return cls(**config)

    def hyperparameters(self) -> dict:
        """Every constructor hyperparameter (what `get_config` saves besides the models)."""
        return {
            "epsilon": self.epsilon, "step_size": self.step_size,
            "attack_steps": self.attack_steps, "attack_start": self.attack_start,
            "attack_batchnorm": self.attack_batchnorm, "weight_decay": self.weight_decay,
            "augment_padding": self.augment_padding, "augment_flip": self.augment_flip,
            "seed": self.seed,
        }

    # -- pieces a method defines ----------------------------------------------------------
    def prepare(self, x, y):
        """Per-batch inputs of the attack and the loss that need no gradient. Returns a dict."""
        return {}

    def prepare_batch(self, x, y, index=None, variant=None):
        """`prepare` with the batch's image indices [B] and augmentation variants [B] (None
        when the batches carry no indices). Methods with a soft-label cache use them."""
        return self.prepare(x, y)

    def attack(self, x, y, ctx):
        raise NotImplementedError

    def loss_terms(self, x, x_adv, y, ctx):
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------------------
    def student_for_attack(self):
        """The student as the training attack sees it (BatchNorm mode per attack_batchnorm)."""
        if self.attack_batchnorm == "train":
            return _TrainModeView(self.student)
        if self._attack_view_factory is not None:
            return self._attack_view_factory()  # folded weights, computed once per step
        return self.student

    def teacher_logits(self, x):
        """Teacher logits in inference mode, no gradient (the teacher is never trained)."""
        return ops.stop_gradient(ops.cast(self.teacher(x, training=False), "float32"))

    def clean_teacher_logits(self, x, index=None, variant=None):
        """`teacher_logits` of the clean augmented batch ``x``, read from the soft-label
        cache when one is attached and the batch carries its image indices (the cache holds
        what the teacher computed for that image and augmentation, in the batch it was
        first seen in)."""
        if self._teacher_cache is None or index is None:
            return self.teacher_logits(x)
        return ops.stop_gradient(
            self._teacher_cache.lookup(self.teacher_logits, x, index, variant))

    def next_seed(self):
        """A fresh stateless-RNG seed [2] (TensorFlow); distinct per replica under
        `tf.distribute` (replicas share the generator's state, so the replica id is folded
        in)."""
        return backends.current().replica_seed(self.seed_generator.next())

    def attack_seed(self):
        """The seed of the attack's random start: `next_seed` on TensorFlow, the method's
        `SeedGenerator` itself elsewhere (the engine draws from it; under JAX its state is
        part of the step's state and advances with it)."""
        return self.next_seed() if backends.is_tensorflow() else self.seed_generator

    def run_pgd(self, x, y=None, target_probs=None, *, loss="ce", start=None,
                target_model=None):
        """The training attack with this method's eps, step, steps and start.
        ``target_model``: the frozen model of objective "kl_model" (AdaAD's teacher)."""
        start = self.attack_start if start is None else start
        seed = self.attack_seed() if start != "none" else None
        # Shards (process default) are exact only in inference mode: with train-mode
        # BatchNorm each shard would normalise with its own batch statistics.
        shards = 1 if self.attack_batchnorm == "train" else None
        stateful = self.attack_batchnorm == "train"
        if self.student_precision == "float32":
            return pgd_graph(self.student_for_attack(), x, y, target_probs, eps=self.epsilon,
                             step_size=self.step_size, steps=self.attack_steps, loss=loss,
                             start=start, seed=seed, shards=shards, target_model=target_model,
                             stateful_model=stateful, clip_start=self.clip_attack_start)
        scale = FLOAT16_ATTACK_OBJECTIVE_SCALE if self.student_precision == "float16" else 1.0
        x_adv, zero_fraction = pgd_graph(
            self.student_for_attack(), x, y, target_probs, eps=self.epsilon,
            step_size=self.step_size, steps=self.attack_steps, loss=loss, start=start,
            seed=seed, objective_scale=scale, return_zero_fraction=True, shards=shards,
            target_model=target_model, stateful_model=stateful,
            clip_start=self.clip_attack_start)
        self.zero_grad_tracker.update_state(zero_fraction)
        return x_adv

    def augment(self, x):
        """In-batch pad-crop and flip (`rslad_tf.data.augment`), seeded like the attack's
        random start (`attack_seed`)."""
        if not self.augment_padding and not self.augment_flip:
            return x
        from rslad_tf.data import augment

        return augment.pad_crop_flip(x, padding=self.augment_padding, flip=self.augment_flip,
                                     seed=self.attack_seed())

    def augment_with_variant(self, x):
        """`augment` (same seeds, same result) that also returns each image's augmentation
        variant id [B] int32 (crop offset and flip; see `soft_label_cache.variant_ids`)."""
        import tensorflow as tf  # the soft-label cache is a TensorFlow path

        from rslad_tf.methods.soft_label_cache import variant_ids

        if not self.augment_padding and not self.augment_flip:
            return x, tf.zeros([tf.shape(x)[0]], tf.int32)
        from rslad_tf.data import augment

        offsets, flips = augment.draw_params(tf.shape(x)[0], self.augment_padding,
                                             self.augment_flip, self.next_seed())
        x = augment.apply(x, offsets, flips, self.augment_padding)
        return x, variant_ids(offsets, flips, self.augment_padding, self.augment_flip)

    def unpack_batch(self, data):
        """(x, y, index) of a batch: ``(x, y[, w])`` as Keras passes it (index None), or a
        dict with "index" (and "image"/"label", else gathered from the device data)."""
        if isinstance(data, dict) and "index" in data:
            index = ops.cast(data["index"], "int32")
            if "image" in data:
                return data["image"], data.get("label"), index
            if self._device_data is None:
                raise ValueError("batches of indices need attach_device_data(...) first")
            x, y = self._device_data.gather(index)
            return x, y, index
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        return x, y, None

    # -- the step -------------------------------------------------------------------------
    def train_step(self, *args):
        """One optimizer step: ``(data)`` on TensorFlow and torch, ``(state, data)`` on JAX
        (`rslad_tf.backends`, the one per-backend piece)."""
        return backends.current().train_step(self, *args)

    def attack_phase(self, data):
        """(x, y, x_adv, ctx) of a batch: augmentation, `prepare` and the attack (no
        gradient flows out of x_adv)."""
        x, y, index = self.unpack_batch(data)
        x = ops.cast(x, "float32")
        if self._teacher_cache is None:
            x = self.augment(x)
            ctx = self.prepare(x, y)
        else:
            if index is None:
                raise ValueError("the teacher soft-label cache needs batches with image "
                                 "indices: use DeviceData.index_dataset or indexed_dataset")
            x, variant = self.augment_with_variant(x)
            ctx = self.prepare_batch(x, y, index, variant)
        return x, y, ops.stop_gradient(self.attack(x, y, ctx)), ctx

    def with_weight_decay(self, grads, variables, *, replicas=1, loss_scale=None):
        """``grads`` plus the coupled L2 term ``weight_decay * w`` (PyTorch's
        ``SGD(weight_decay=...)``). Replica gradients are summed, so each of ``replicas``
        adds its share; ``loss_scale``: the float16 loss scale the gradients carry."""
        if not self.weight_decay:
            return grads
        decay = self.weight_decay / replicas
        if loss_scale is not None:
            decay = decay * ops.cast(loss_scale, "float32")
        return [g + decay * v for g, v in zip(grads, variables)]

    def update_metrics(self, terms, y):
        """Log the loss terms and the accuracy of ``terms["logits"]``; returns the logs."""
        for name, tracker in self.loss_trackers.items():
            tracker.update_state(terms[name])
        self.accuracy_tracker.update_state(y, terms["logits"])
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, *args):
        """Clean accuracy and cross-entropy of the student in inference mode (``(data)``;
        ``(state, data)`` on JAX)."""
        return backends.current().test_step(self, *args)

    def evaluate_batch(self, data):
        """The metrics of `test_step` for one batch."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        logits = ops.cast(self.student(x, training=False), "float32")
        ce = losses.cross_entropy(y, logits)
        self.loss_trackers["loss"].update_state(ce)
        self.accuracy_tracker.update_state(y, logits)
        return {"loss": self.loss_trackers["loss"].result(), "acc": self.accuracy_tracker.result()}
