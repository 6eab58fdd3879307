"""The embedded digits data, the tf.data pipeline and in-batch augmentation."""

import numpy as np
import pytest
import tensorflow as tf

from rslad_tf import data
from rslad_tf.data import augment


def test_digits_split_is_fixed_stratified_and_in_unit_range():
    x_tr, y_tr = data.load_numpy("digits", "train")
    x_te, y_te = data.load_numpy("digits", "test")
    assert x_tr.shape == (1347, 8, 8, 1) and x_te.shape == (450, 8, 8, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    # Stratified: every class has about a quarter of its images in the test split.
    counts_tr, counts_te = np.bincount(y_tr), np.bincount(y_te)
    assert np.all(np.abs(counts_te / (counts_tr + counts_te) - 0.25) < 0.02)
    # Fixed: loading again gives the same arrays.
    x_again, _ = data.load_numpy("digits", "train")
    np.testing.assert_array_equal(x_tr, x_again)


def test_unknown_dataset_and_split_are_clear_errors():
    with pytest.raises(data.DataError, match="unknown dataset 'mnist'"):
        data.load_numpy("mnist", "train")
    with pytest.raises(data.DataError, match="unknown split"):
        data.load_numpy("digits", "validation")


def test_make_dataset_batches_everything_once_per_epoch():
    x, y = data.load_numpy("digits", "test")
    ds = data.make_dataset(x, y, 100, shuffle=True, seed=3)
    labels = np.concatenate([b[1].numpy() for b in ds])
    assert len(labels) == len(y) and sorted(labels) == sorted(y)
    assert not np.array_equal(labels, y)  # shuffled


def test_crop_offsets_shift_the_zero_padded_image():
    images = tf.reshape(tf.range(2 * 4 * 4, dtype=tf.float32), [2, 4, 4, 1]) + 1.0
    offsets = tf.constant([[2, 2], [0, 4]])  # centre crop; top row, shifted right by 2
    flips = tf.constant([False, True])
    out = augment.apply(images, offsets, flips, padding=2).numpy()
    np.testing.assert_array_equal(out[0], images[0].numpy())
    padded = np.pad(images[1].numpy(), [[2, 2], [2, 2], [0, 0]])
    np.testing.assert_array_equal(out[1], padded[0:4, 4:8][:, ::-1])


def test_augmentation_is_seeded_and_keeps_shape_and_range():
    x, _ = data.load_numpy("digits", "test")
    x = tf.constant(x[:32])
    seed = tf.constant([1, 2], tf.int64)
    a = augment.pad_crop_flip(x, padding=2, flip=True, seed=seed)
    b = augment.pad_crop_flip(x, padding=2, flip=True, seed=seed)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.shape == x.shape and float(tf.reduce_min(a)) >= 0 and float(tf.reduce_max(a)) <= 1
    assert augment.pad_crop_flip(x, padding=0, flip=False, seed=seed) is x


def test_validation_split_is_stratified_disjoint_and_the_same_for_every_run():
    images, labels = data.load_numpy("digits", "train")
    x_tr, y_tr, x_val, y_val = data.split_validation(images, labels, 0.2)
    assert len(x_tr) + len(x_val) == len(images) and len(x_tr) == len(y_tr)
    assert len(x_val) == sum(round(0.2 * np.sum(labels == c)) for c in range(10))
    # Disjoint and complete, in the original order: images tagged by their index.
    tagged = np.arange(len(labels), dtype=np.float32)
    idx_tr, _, idx_val, _ = data.split_validation(tagged, labels, 0.2)
    assert sorted(np.concatenate([idx_tr, idx_val]).tolist()) == tagged.tolist()
    assert np.all(np.diff(idx_tr) > 0) and np.all(np.diff(idx_val) > 0)
    np.testing.assert_array_equal(x_val, images[idx_val.astype(int)])
    for cls in range(10):  # each class keeps its share on both sides
        share = np.mean(y_val == cls) / np.mean(labels == cls)
        assert 0.9 < share < 1.1, (cls, share)
    again = data.split_validation(images, labels, 0.2)
    np.testing.assert_array_equal(again[2], x_val)
    other = data.split_validation(images, labels, 0.2, seed=1)
    assert not np.array_equal(other[3], y_val) or not np.array_equal(other[2], x_val)


def test_validation_split_that_empties_a_class_is_a_clear_error():
    labels = np.array([0, 0, 0, 1], dtype=np.int32)
    images = np.zeros((4, 8, 8, 1), np.float32)
    with pytest.raises(data.DataError, match="class 1 with 0 of 1"):
        data.split_validation(images, labels, 0.3)
