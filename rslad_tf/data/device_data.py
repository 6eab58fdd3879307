"""Device-resident training data: the whole training set on the accelerator, batches by index.

The tf.data path (`rslad_tf.data.make_dataset`) copies every batch from host memory to the
device. Here the images and labels are copied to the device once; what flows through
tf.data is only a batch of int32 indices, and the training step gathers the images on the
device (augmentation already runs in batch on the device, `rslad_tf.data.augment`).

Same order: ``index_dataset(..., seed=s)`` shuffles ``range(N)`` with the same buffer and
seed as ``make_dataset`` shuffles the examples, and tf.data's shuffle order depends only on
the buffer size, the seed and N, so both paths feed the same images in the same batches
(tests pin this), and training is bit-identical.

When the set does not fit (``fits``: more than ``max_bytes``, by default a quarter of the
GPU's memory, or ``DEFAULT_MAX_BYTES`` when that is unknown), use the tf.data path.
"""

from __future__ import annotations

import numpy as np

from rslad_tf.data import shuffle_and_batch

# Fallback budget for device-resident data when the device memory size is unknown
# (CIFAR-10/100 train sets are 614 MB as float32).
DEFAULT_MAX_BYTES = 2 * 2**30
MODES = ("auto", "on", "off")


def default_device() -> str:
    import tensorflow as tf

    return "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"


def device_memory_bytes() -> int | None:
    """Total memory of the first GPU (from ``nvidia-smi``), or None if unknown / no GPU."""
    import shutil
    import subprocess

    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU") or not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
        return int(float(out.strip().splitlines()[0])) * 2**20  # MiB
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def default_max_bytes() -> int:
    """A quarter of the GPU's memory (the models, activations and caches need the rest),
    or `DEFAULT_MAX_BYTES` when unknown (CPU: the data is in host memory anyway)."""
    total = device_memory_bytes()
    return total // 4 if total else DEFAULT_MAX_BYTES


def data_bytes(images, labels) -> int:
    """Bytes of the device copy: float32 images plus int64 labels."""
    return int(np.prod(np.shape(images))) * 4 + int(len(labels)) * 8


def fits(images, labels, max_bytes: int | None = None) -> bool:
    return data_bytes(images, labels) <= (default_max_bytes() if max_bytes is None else max_bytes)


def index_dataset(num_examples: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                  drop_remainder: bool = False, repeat: bool = False):
    """Batches ``{"index": int32 [B]}`` in exactly the order of
    ``make_dataset(images, labels, batch_size, shuffle=..., seed=...)``."""
    import tensorflow as tf

    ds = shuffle_and_batch(tf.data.Dataset.range(num_examples), num_examples, batch_size,
                           shuffle=shuffle, seed=seed, drop_remainder=drop_remainder,
                           repeat=repeat)
    ds = ds.map(lambda i: {"index": tf.cast(i, tf.int32)})
    return ds.prefetch(tf.data.AUTOTUNE)


def indexed_dataset(images, labels, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                    drop_remainder: bool = False, repeat: bool = False):
    """The tf.data path with the image indices: batches ``{"image", "label", "index"}`` in
    the order of ``make_dataset`` (for the teacher soft-label cache without device data)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": labels, "index": np.arange(len(images), dtype=np.int32)})
    ds = shuffle_and_batch(ds, len(images), batch_size, shuffle=shuffle, seed=seed,
                           drop_remainder=drop_remainder, repeat=repeat)
    return ds.prefetch(tf.data.AUTOTUNE)


class DeviceData:
    """A training set copied to the device once. ``gather(index)`` -> (images, labels).

    Images are float32 [N, H, W, C] in [0,1] as `load_numpy` gives them (the same values the
    tf.data path feeds); labels are kept as int64 on the device (GPU gathers of int32 are
    host-bound) and returned as int32, as in the tf.data path.
    """

    def __init__(self, images, labels, *, device: str | None = None):
        import tensorflow as tf

        images = np.asarray(images, dtype=np.float32)
        labels = np.asarray(labels)
        if len(images) != len(labels) or len(images) == 0:
            raise ValueError("images and labels must be non-empty and of the same length")
        self.device = device or default_device()
        self.label_dtype = tf.as_dtype(labels.dtype)
        with tf.device(self.device):
            self.images = tf.identity(tf.constant(images))
            self.labels = tf.identity(tf.constant(labels.astype(np.int64)))
        self.num_examples = len(images)
        self.nbytes = data_bytes(images, labels)

    def gather(self, index):
        import tensorflow as tf

        index = tf.cast(index, tf.int32)
        images = tf.gather(self.images, index)
        labels = tf.cast(tf.gather(self.labels, index), self.label_dtype)
        return images, labels

    def index_dataset(self, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                      drop_remainder: bool = False, repeat: bool = False):
        return index_dataset(self.num_examples, batch_size, shuffle=shuffle, seed=seed,
                             drop_remainder=drop_remainder, repeat=repeat)

    def describe(self) -> str:
        return (f"device-resident data: {self.num_examples} examples, "
                f"{self.nbytes / 2**20:.1f} MiB on {self.device}")
