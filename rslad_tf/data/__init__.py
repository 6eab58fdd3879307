"""Datasets as numpy arrays and `tf.data` pipelines.

Every dataset yields float32 images in [0,1], NHWC, and int32 labels. A dataset is a
`DatasetSpec` in `_REGISTRY`: adding one touches one module (register it with `register`).

`load_numpy` and `numpy_batches` import no TensorFlow (what the JAX and torch backends
train from); `make_dataset` builds the tf.data pipeline (the TensorFlow backend's).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from rslad_tf.common.errors import UserError

SPLITS = ("train", "test")


class DataError(UserError, ValueError):
    """A dataset cannot be loaded as asked (unknown name, missing files, bad split)."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the rest of the toolkit needs to know about a dataset."""

    name: str
    num_classes: int
    image_shape: tuple  # (H, W, C)
    # loader(split, data_dir, download) -> (images float32 [N,H,W,C] in [0,1], labels int32
    # [N]); `download`: whether it may fetch missing files (datasets without files ignore it)
    loader: Callable[[str, str | None, bool], tuple[np.ndarray, np.ndarray]]
    # The L-inf radius of the threat model on this dataset (8/255 for CIFAR, docs/paper.md).
    epsilon: float = 8 / 255
    # Paper augmentation (pad-crop + flip) applies to natural images, not to 8x8 digits.
    augment_padding: int = 0
    augment_flip: bool = False


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def available() -> list[str]:
    return sorted(_REGISTRY)


def spec(name: str) -> DatasetSpec:
    """The `DatasetSpec` of `name`; `DataError` naming the known datasets otherwise."""
    if name not in _REGISTRY:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(available())}")
    return _REGISTRY[name]


def check_model_fits(model, data_spec: DatasetSpec, what: str, fix: str, *,
                     require_shapes: bool = True) -> None:
    """`UserError` unless ``model`` takes ``data_spec``'s images and predicts its classes.

    ``what`` names the model in the message (``"teacher 't.keras'"``), ``fix`` says what
    to do instead. A model without static shapes (a subclassed one) is refused when
    ``require_shapes``, else let through for its first call to tell.
    """
    try:
        in_shape = tuple(model.input_shape[1:])
        classes = model.output_shape[-1]
    except (AttributeError, ValueError, TypeError):
        if require_shapes:
            raise UserError(f"{what} is not a classifier model") from None
        return
    image_shape = tuple(data_spec.image_shape)
    if in_shape != image_shape or classes != data_spec.num_classes:
        raise UserError(f"{what} takes {in_shape} and predicts {classes} classes, but "
                        f"{data_spec.name} has images {image_shape} and "
                        f"{data_spec.num_classes} classes; {fix}")


def load_numpy(name: str, split: str, data_dir: str | None = None, *,
               download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return `(images, labels)` of a split as numpy arrays.

    images: float32 [N, H, W, C] in [0,1]; labels: int32 [N]. `split` is "train" or "test".
    `data_dir` points at local data for datasets that need files (see each dataset).
    `download`: fetch missing files (CIFAR through TFDS, needs internet); off by default,
    because without network a download attempt retries for minutes before it fails.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    images, labels = spec(name).loader(split, data_dir, bool(download))
    return np.ascontiguousarray(images, dtype=np.float32), np.asarray(labels, dtype=np.int32)


# The validation split is the same for every run seed: hyperparameters chosen on it are
# compared on the same held-out images.
VALIDATION_SEED = 0


def split_validation(images: np.ndarray, labels: np.ndarray, fraction: float, *,
                     seed: int = VALIDATION_SEED):
    """Hold out ``fraction`` of a training split, stratified by label (each class keeps
    its share, rounded per class), by a fixed permutation of ``seed``. Returns
    ``(train_images, train_labels, val_images, val_labels)``, each part in its original
    order. `DataError` when a class would be left with no training or no validation image."""
    rng = np.random.default_rng(seed)
    val_index = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_val = int(round(fraction * len(members)))
        if not 0 < n_val < len(members):
            raise DataError(f"validation_fraction {fraction} leaves class {cls} with "
                            f"{n_val} of {len(members)} images held out; choose a fraction "
                            "that keeps at least one image of every class on each side")
        val_index.append(rng.permutation(members)[:n_val])
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[np.concatenate(val_index)] = True
    return images[~is_val], labels[~is_val], images[is_val], labels[is_val]


def make_dataset(images, labels, batch_size: int, *, shuffle: bool, seed: int = 0,
                 drop_remainder: bool = False, repeat: bool = False):
    """A `tf.data.Dataset` of `(images, labels)` batches: shuffled per epoch (seeded),
    batched and prefetched. Augmentation is not done here: it runs in batch on the
    accelerator inside the training step (`rslad_tf.data.augment`)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = shuffle_and_batch(ds, len(images), batch_size, shuffle=shuffle, seed=seed,
                           drop_remainder=drop_remainder, repeat=repeat)
    return ds.prefetch(tf.data.AUTOTUNE)


def numpy_batches(images, labels, batch_size: int, *, seed: int, start: int = 0,
                  stop: int | None = None):
    """One epoch of ``(images, labels)`` batches as numpy arrays, in a random order drawn
    by numpy from ``seed`` (the training data of the JAX and torch backends: another
    order than `make_dataset`'s, which is tf.data's). Batches ``start`` to ``stop``
    (None: to the end; the last batch may be partial), so an epoch resumed in the middle
    skips the batches it already trained on. A generator: nothing is copied but the
    batch being yielded."""
    order = np.random.default_rng(seed).permutation(len(images))
    num_batches = -(-len(images) // batch_size)
    for b in range(start, num_batches if stop is None else min(stop, num_batches)):
        index = order[b * batch_size:(b + 1) * batch_size]
        yield images[index], labels[index]


def shuffle_and_batch(ds, num_examples: int, batch_size: int, *, shuffle: bool, seed: int,
                      drop_remainder: bool, repeat: bool):
    """Seeded per-epoch shuffle, optional repeat, batching: the one ordering that every
    training data path shares (device-resident index batches rely on giving the same
    order as `make_dataset` for the same seed)."""
    if shuffle:
        ds = ds.shuffle(num_examples, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=drop_remainder)


# Datasets register themselves on import.
from rslad_tf.data import digits  # noqa: E402,F401
from rslad_tf.data import cifar  # noqa: E402,F401
