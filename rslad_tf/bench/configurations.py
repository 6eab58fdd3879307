"""One configuration of the benchmarked training step: an RSLAD method on a profile's
models, compiled with a set of options, and the iterator its steps read."""

from __future__ import annotations

import numpy as np

from rslad_tf.bench.profiles import Profile


def make_data(profile: Profile, seed: int = 0):
    """(images, labels) of the training set the benchmark uses."""
    if profile.real_digits:
        from rslad_tf.data import load_numpy

        x, y = load_numpy("digits", "train")
        return x[:profile.num_examples], y[:profile.num_examples]
    rng = np.random.default_rng(seed)
    x = rng.random((profile.num_examples,) + tuple(profile.image_shape), dtype=np.float32)
    y = rng.integers(0, profile.num_classes, profile.num_examples).astype(np.int32)
    return x, y


def host_augment_dataset(x, y, profile: Profile, seed: int):
    """The reference input pipeline: shuffled batches from host memory, pad-crop + flip per
    image in a tf.data ``map`` on the host (what a port of the PyTorch loader does)."""
    import tensorflow as tf

    p = profile.augment_padding
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).repeat()
    if p or profile.augment_flip:
        h, w, c = profile.image_shape

        def augment(image, label):
            if p:
                image = tf.image.pad_to_bounding_box(image, p, p, h + 2 * p, w + 2 * p)
                image = tf.image.random_crop(image, [h, w, c])
            if profile.augment_flip:
                image = tf.image.random_flip_left_right(image)
            return image, label

        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(profile.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class TrainStepConfig:
    """One configuration of the training step: its method, iterator and options."""

    def __init__(self, name, profile: Profile, teacher, x, y, *, jit=False, mixed="off",
                 device_data=False, cache=False, fold=False, host_augment=False, shards=1,
                 seed=0):
        import keras

        from rslad_tf import models
        from rslad_tf.data import make_dataset
        from rslad_tf.data.device_data import DeviceData, indexed_dataset
        from rslad_tf.methods import RSLADModel
        from rslad_tf.methods.soft_label_cache import SoftLabelCache
        from rslad_tf.training.fast_paths import MIXED_POLICIES, dtype_policy

        self.name = name
        # shards: the attack shards of the process this configuration runs in
        # (`workers.Layout`).
        self.options = dict(jit=jit, mixed=mixed, device_data=device_data, cache=cache,
                            fold=fold, host_augment=host_augment, shards=shards)
        keras.utils.set_random_seed(seed)
        with dtype_policy(MIXED_POLICIES.get(mixed)):
            student = models.create(profile.student[0], profile.num_classes,
                                    input_shape=profile.image_shape, **profile.student[1])
        # Host augmentation: the method's in-step augmentation is off, the pipeline does it.
        in_step_aug = not host_augment
        method = RSLADModel(student, teacher, epsilon=profile.epsilon,
                            step_size=profile.epsilon / 4, attack_steps=profile.attack_steps,
                            weight_decay=2e-4, seed=seed,
                            augment_padding=profile.augment_padding if in_step_aug else 0,
                            augment_flip=profile.augment_flip if in_step_aug else False)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        if mixed == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        method.compile(optimizer=optimizer, jit_compile=bool(jit))
        method.build((None,) + tuple(profile.image_shape))
        method.optimizer.build(student.trainable_variables)
        self.cache = None
        if device_data:
            data = DeviceData(x, y)
            method.attach_device_data(data)
            dataset = data.index_dataset(profile.batch_size, seed=seed, drop_remainder=True,
                                         repeat=True)
        elif cache:
            dataset = indexed_dataset(x, y, profile.batch_size, seed=seed, drop_remainder=True,
                                      repeat=True)
        elif host_augment:
            dataset = host_augment_dataset(x, y, profile, seed)
        else:
            dataset = make_dataset(x, y, profile.batch_size, shuffle=True, seed=seed,
                                   drop_remainder=True, repeat=True)
        if cache:
            self.cache = SoftLabelCache(len(x), profile.num_classes,
                                        padding=profile.augment_padding,
                                        flip=profile.augment_flip,
                                        buckets=profile.cache_buckets)
            method.attach_teacher_cache(self.cache)
        self.folded = method.set_attack_batchnorm_folding(True) if fold else False
        self.method = method
        self.iterator = iter(dataset)
        method.make_train_function()

    def run(self, steps: int) -> None:
        """Run `steps` training steps and wait until the device has finished them."""
        for _ in range(steps):
            self.method.train_function(self.iterator)
        # Synchronise: reading a weight waits for every step that writes it.
        self.method.student.trainable_variables[0].numpy()

