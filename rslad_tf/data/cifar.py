"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): 32x32 RGB, 50,000 train / 10,000 test images.

Two sources, tried in this order:

1. The original *python* archives in `data_dir`: `cifar-10-python.tar.gz` /
   `cifar-100-python.tar.gz`, or their extracted folders `cifar-10-batches-py/` /
   `cifar-100-python/`. Those are pickles; they are read with `SafeUnpickler`, which
   only rebuilds numpy arrays and plain containers and refuses every other global, so a
   tampered file cannot run code. CIFAR-100 labels are the `fine_labels` (100 classes).
2. TensorFlow Datasets (`tfds.load(name, data_dir=data_dir)`), with `download=False`
   unless asked: without network TFDS retries for minutes, so a default path never
   downloads. Ask for a download with `load_numpy(..., download=True)` (what a
   `--download` command-line flag passes). TensorFlow backend only: TFDS imports
   TensorFlow, so under JAX and torch the archives are the one source.

Missing data gives a one-line `DataError` that says how to get it.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import tarfile

import numpy as np

from rslad_tf.data import DataError, DatasetSpec, register

_LAYOUT = {
    # name: (archive, folder inside/extracted, train members, test members, label key)
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python",
                 ("train",), ("test",), "fine_labels"),
}


def _numpy_global(module: str, name: str):
    """Resolve a numpy global under its numpy 1.x or 2.x module path."""
    for candidate in (module, module.replace("numpy.core", "numpy._core"),
                      module.replace("numpy._core", "numpy.core")):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"cannot resolve {module}.{name}")


class SafeUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batches: dicts of numpy arrays, lists, ints and bytes.

    `find_class` admits only what rebuilding a numpy array needs; any other global
    (`os.system`, `builtins.eval`, ...) raises `pickle.UnpicklingError` before it is called.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # arrays, pickle protocols 0-4
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),      # arrays, pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name} in a CIFAR batch")
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":
            return _latin1_bytes
        return _numpy_global(module, name)


def _latin1_bytes(text, encoding="latin1"):
    """Stand-in for `_codecs.encode` that only does what pickle uses it for."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({encoding!r}) in a CIFAR batch")
    return text.encode("latin1")


def safe_load_pickle(data: bytes):
    """Unpickle `data` with `SafeUnpickler`; Python-2 strings come back as bytes."""
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError:
        raise
    except Exception as e:  # truncated or corrupt file
        raise pickle.UnpicklingError(f"not a CIFAR batch pickle: {e}") from None


def _decode_batch(batch, label_key: str, member: str):
    """(uint8 images [N, 32, 32, 3], int labels [N]) from one unpickled batch dict."""
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR batch {member} is not a dict")
    # Python-2 pickles decode their str keys as bytes; accept str keys too.
    get = lambda k: batch.get(k.encode(), batch.get(k))  # noqa: E731
    data, labels = get("data"), get(label_key)
    if data is None or labels is None:
        raise DataError(f"CIFAR batch {member} lacks 'data' or {label_key!r}")
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"CIFAR batch {member}: data {data.shape}, labels {labels.shape}")
    # Each row holds the 1024 red, then green, then blue values of a row-major 32x32 image.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def _read_members(name: str, split: str, data_dir: str):
    """Raw bytes of the split's batch files from the archive or extracted folder, or None."""
    archive, folder, train, test, _ = _LAYOUT[name]
    members = train if split == "train" else test
    for base in (data_dir, os.path.join(data_dir, folder)):
        paths = [os.path.join(base, m) for m in members]
        if os.path.basename(base) == folder and all(os.path.isfile(p) for p in paths):
            out = []
            for p in paths:
                with open(p, "rb") as f:
                    out.append((p, f.read()))
            return out
    tar_path = os.path.join(data_dir, archive)
    if os.path.isfile(tar_path):
        out = []
        try:
            # Members are read in memory, never extracted to disk.
            with tarfile.open(tar_path, "r:gz") as tar:
                for m in members:
                    f = tar.extractfile(f"{folder}/{m}")
                    if f is None:
                        raise KeyError(m)
                    out.append((f"{archive}:{folder}/{m}", f.read()))
        except (KeyError, tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{tar_path} is not a complete CIFAR python archive ({e})") from None
        return out
    return None


def _load_python_archive(name: str, split: str, data_dir: str):
    raw = _read_members(name, split, data_dir)
    if raw is None:
        return None
    label_key = _LAYOUT[name][4]
    images, labels = [], []
    for member, data in raw:
        try:
            batch = safe_load_pickle(data)
        except pickle.UnpicklingError as e:
            raise DataError(f"refusing {member}: {e}") from None
        x, y = _decode_batch(batch, label_key, member)
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def _load_tfds(name: str, split: str, data_dir: str | None, download: bool):
    from rslad_tf.common import quiet

    # TFDS imports TensorFlow on first use: through `quiet`, so that a step which has not
    # started TensorFlow yet (prepare_data) prints none of its start-up lines either.
    quiet.import_tensorflow()
    with quiet.library_warnings_muted():
        return _read_tfds(name, split, data_dir, download)


def _read_tfds(name: str, split: str, data_dir: str | None, download: bool):
    import tensorflow_datasets as tfds

    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=download,
                       as_supervised=True)
    except Exception as e:  # AssertionError "could not find data", DatasetNotFoundError
        where = data_dir or "the default TFDS directory (~/tensorflow_datasets)"
        archive = _LAYOUT[name][0]
        hint = (f"put {archive} (from https://www.cs.toronto.edu/~kriz/cifar.html) in a "
                f"directory and pass it as --data-dir, or run once with internet access "
                f"and --download")
        if download:
            raise DataError(f"{name}: TFDS download/preparation failed "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                            f"{hint}") from None
        raise DataError(f"{name} not found in {where}; {hint}") from None
    images, labels = [], []
    # batch_size=-1 in tfds.load needs split sizes (absent under tfds.testing.mock_data).
    for x, y in tfds.as_numpy(ds.batch(10_000)):
        images.append(x)
        labels.append(y)
    if not images:
        raise DataError(f"{name} {split}: TFDS returned no examples")
    return np.concatenate(images), np.concatenate(labels)


def load(name: str, split: str, data_dir: str | None = None, download: bool = False):
    """`(images float32 [N,32,32,3] in [0,1], labels int32 [N])` of CIFAR-10 / CIFAR-100.

    Reads the python archives in `data_dir` when present, else TFDS, which downloads the
    dataset only when `download` is true.
    """
    if name not in _LAYOUT:
        raise DataError(f"unknown CIFAR dataset {name!r}")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    loaded = None
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise DataError(f"--data-dir {data_dir} is not a directory")
        loaded = _load_python_archive(name, split, data_dir)
    if loaded is None:
        from rslad_tf import backends

        if backends.selected() != "tensorflow":
            # TFDS imports TensorFlow, which JAX and torch runs keep out of the process.
            where = f"in {data_dir}" if data_dir else "(no --data-dir given)"
            raise DataError(f"{name}: no python archive {where}; under the "
                            f"{backends.selected()} backend CIFAR is read from "
                            f"{_LAYOUT[name][0]} only (TFDS needs TensorFlow): put it in a "
                            "directory and pass it as --data-dir")
        loaded = _load_tfds(name, split, data_dir, bool(download))
    images, labels = loaded
    num_classes = 10 if name == "cifar10" else 100
    if images.shape[1:] != (32, 32, 3) or labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{name} {split}: unexpected images {images.shape} or labels "
                        f"outside 0..{num_classes - 1}")
    return images.astype(np.float32) / 255.0, labels.astype(np.int32)


def _loader(name):
    return lambda split, data_dir, download: load(name, split, data_dir, download)


CIFAR10 = register(DatasetSpec(name="cifar10", num_classes=10, image_shape=(32, 32, 3),
                               loader=_loader("cifar10"), augment_padding=4,
                               augment_flip=True))
CIFAR100 = register(DatasetSpec(name="cifar100", num_classes=100, image_shape=(32, 32, 3),
                                loader=_loader("cifar100"), augment_padding=4,
                                augment_flip=True))
