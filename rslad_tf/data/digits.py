"""scikit-learn's bundled digits: 1,797 real 8x8 grey images, no download.

The train/test split is fixed and stratified (75% / 25%, seed 0), so every run and every
machine sees the same 1,347 training and 450 test images.
"""

from __future__ import annotations

import functools

import numpy as np

from rslad_tf.data import DatasetSpec, register

TEST_FRACTION = 0.25
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # Pixel values are integers 0..16.
    images = (bunch.images.astype(np.float32) / 16.0)[..., None]  # [1797, 8, 8, 1]
    labels = bunch.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def _load(split: str, data_dir: str | None, download: bool):
    del data_dir, download  # embedded: nothing to read or fetch
    images, labels = _split()[split]
    return images.copy(), labels.copy()


# eps = 0.2 (about 3 of the 16 grey levels): PGD-20 at this radius breaks a naturally
# trained CNN (0.4% accuracy) while PGD-trained ones keep about 72% (docs/training.md,
# "The digits demo data and its epsilon").
EPSILON = 0.2

SPEC = register(DatasetSpec(name="digits", num_classes=10, image_shape=(8, 8, 1), loader=_load,
                            epsilon=EPSILON))
