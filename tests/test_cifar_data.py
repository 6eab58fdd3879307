"""CIFAR-10/100 loading: original python archives (read with a restricted unpickler),
TFDS (mocked), and fast, download-free failures."""

from __future__ import annotations

import inspect
import io
import os
import pickle
import tarfile
import time

import numpy as np
import pytest

from rslad_tf.data import DataError, load_numpy, spec
from rslad_tf.data import cifar


def _batch(n, num_classes, label_key, seed):
    """One batch dict in the original format: uint8 rows of 1024 R, 1024 G, 1024 B."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).tolist()
    data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    batch = {b"batch_label": b"testing batch", b"data": data, label_key: labels,
             b"filenames": [b"img%d.png" % i for i in range(n)]}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [y // 5 for y in labels]
    return batch, images, np.array(labels)


def _write_archive(directory, archive, folder, members, *, extract=False, protocol=2):
    """Write `archive` (tar.gz) holding folder/member pickles; or the extracted folder."""
    blobs = {m: pickle.dumps(b, protocol=protocol) for m, b in members.items()}
    if extract:
        os.makedirs(os.path.join(directory, folder))
        for m, blob in blobs.items():
            with open(os.path.join(directory, folder, m), "wb") as f:
                f.write(blob)
        return
    with tarfile.open(os.path.join(directory, archive), "w:gz") as tar:
        for m, blob in blobs.items():
            info = tarfile.TarInfo(f"{folder}/{m}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _cifar10_members(sizes=(3, 2, 4, 1, 2), test_size=5):
    members, train_x, train_y = {}, [], []
    for i, n in enumerate(sizes, start=1):
        b, x, y = _batch(n, 10, b"labels", seed=i)
        members[f"data_batch_{i}"] = b
        train_x.append(x)
        train_y.append(y)
    b, test_x, test_y = _batch(test_size, 10, b"labels", seed=99)
    members["test_batch"] = b
    members["batches.meta"] = {b"label_names": [b"airplane"] * 10}
    return members, (np.concatenate(train_x), np.concatenate(train_y)), (test_x, test_y)


@pytest.mark.parametrize("extract", [False, True], ids=["tar.gz", "extracted"])
def test_cifar10_python_archive(tmp_path, extract):
    members, (train_x, train_y), (test_x, test_y) = _cifar10_members()
    _write_archive(tmp_path, "cifar-10-python.tar.gz", "cifar-10-batches-py", members,
                   extract=extract)
    x, y = load_numpy("cifar10", "train", data_dir=str(tmp_path))
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(x, train_x.astype(np.float32) / 255.0)  # batch order kept
    np.testing.assert_array_equal(y, train_y)
    x, y = load_numpy("cifar10", "test", data_dir=str(tmp_path))
    np.testing.assert_array_equal(x, test_x / np.float32(255.0))
    np.testing.assert_array_equal(y, test_y)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_extracted_folder_given_directly(tmp_path):
    members, (train_x, _), _ = _cifar10_members()
    _write_archive(tmp_path, "", "cifar-10-batches-py", members, extract=True)
    x, _ = load_numpy("cifar10", "train", data_dir=str(tmp_path / "cifar-10-batches-py"))
    assert x.shape == train_x.shape


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar100_python_archive_fine_labels(tmp_path, protocol):
    train, train_x, train_y = _batch(6, 100, b"fine_labels", seed=1)
    test, test_x, test_y = _batch(4, 100, b"fine_labels", seed=2)
    _write_archive(tmp_path, "cifar-100-python.tar.gz", "cifar-100-python",
                   {"train": train, "test": test, "meta": {b"fine_label_names": []}},
                   protocol=protocol)
    x, y = load_numpy("cifar100", "train", data_dir=str(tmp_path))
    np.testing.assert_array_equal(x, train_x / np.float32(255.0))
    np.testing.assert_array_equal(y, train_y)  # fine, not coarse, labels
    x, y = load_numpy("cifar100", "test", data_dir=str(tmp_path))
    np.testing.assert_array_equal(y, test_y)


class _Payload:
    """Unpickling this would call os.system: what the restricted unpickler must stop."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_forbidden_global_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    members, _, _ = _cifar10_members()
    members["test_batch"][b"extra"] = _Payload()
    _write_archive(tmp_path, "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"forbidden global (posix|os|nt)\.system"):
        load_numpy("cifar10", "test", data_dir=str(tmp_path))
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        cifar.safe_load_pickle(b"cbuiltins\neval\n(S'1+1'\ntR.")


def test_corrupt_archive_gives_data_error(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="not a complete CIFAR python archive"):
        load_numpy("cifar10", "train", data_dir=str(tmp_path))


def test_missing_data_fails_fast_without_download(tmp_path, monkeypatch):
    """No archive and no prepared TFDS data: one-line DataError in well under the minutes a
    TFDS download attempt would take, and tfds.load is called with download=False."""
    import tensorflow_datasets as tfds

    calls = []
    real_load = tfds.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("download"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(tfds, "load", spy)
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_numpy("cifar10", "train", data_dir=str(tmp_path))
    assert time.monotonic() - start < 30
    assert calls == [False]
    message = str(info.value)
    assert "\n" not in message
    assert "cifar-10-python.tar.gz" in message and "--download" in message


def test_data_dir_must_exist(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_numpy("cifar100", "test", data_dir=str(tmp_path / "nope"))


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_path_with_mock_data(tmp_path, name, num_classes):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        x, y = load_numpy(name, "test", data_dir=str(tmp_path))
    assert x.shape == (6, 32, 32, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.dtype == np.int32 and 0 <= y.min() and y.max() < num_classes


def test_specs():
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        s = spec(name)
        assert (s.num_classes, s.image_shape) == (classes, (32, 32, 3))
        assert s.augment_padding == 4 and s.augment_flip
    # Nothing downloads unless a caller asks: the loaders' default is no download.
    assert inspect.signature(load_numpy).parameters["download"].default is False
    assert inspect.signature(cifar.load).parameters["download"].default is False


def test_download_is_passed_to_tfds_only_when_asked(tmp_path, monkeypatch):
    """`load_numpy(..., download=True)` reaches tfds.load (here refused, as without network)
    and a failed download names itself; the default call asks TFDS for no download."""
    import tensorflow_datasets as tfds

    calls = []

    def refuse(*args, **kwargs):
        calls.append(kwargs.get("download"))
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds, "load", refuse)
    with pytest.raises(DataError, match="TFDS download/preparation failed"):
        load_numpy("cifar100", "train", data_dir=str(tmp_path), download=True)
    with pytest.raises(DataError, match="not found in"):
        load_numpy("cifar100", "train", data_dir=str(tmp_path))
    assert calls == [True, False]


def test_train_download_flag_reaches_the_loader(tmp_path, monkeypatch):
    """`python -m rslad_tf.train --download` asks the loader for a download (and only
    then); a loader's DataError still ends the command with one line and exit status 2."""
    from rslad_tf import data, train
    from rslad_tf.common.errors import run_cli

    asked = []

    def loader_spy(name, split, data_dir=None, *, download=False):
        asked.append(download)
        raise DataError(f"{name} {split}: stopped by the test")

    monkeypatch.setattr(data, "load_numpy", loader_spy)
    for flags, expected in (([], [False]), (["--download"], [False, True])):
        argv = ["--preset", "digits-natural", "--out", str(tmp_path / f"o{len(flags)}")]
        assert run_cli(train.main, argv + flags) == 2
        assert asked == expected
