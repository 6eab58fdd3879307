"""Test configuration: quiet TensorFlow, a thread budget that fits 2 CPU cores, markers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Oversubscribing 2 cores makes CPU TensorFlow many times slower.
tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(1)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    import keras

    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()
