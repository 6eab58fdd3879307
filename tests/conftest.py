"""Test configuration: quiet TensorFlow, a thread budget that fits 2 CPU cores, markers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

from rslad_tf.common.quiet import import_tensorflow  # noqa: E402

# TensorFlow's C++ start-up lines would otherwise land on the test run's stderr.
tf = import_tensorflow()

# Oversubscribing 2 cores makes CPU TensorFlow many times slower. `make test` runs two
# pytest-xdist workers (most tests are short and bound by Python and TensorFlow start-up,
# so two processes use the 2 cores better than one process with two threads: the default
# suite took 18 min with `-n 2` against 36 min without, on the same busy machine); each
# worker then gets one core.
tf.config.threading.set_intra_op_parallelism_threads(
    1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
tf.config.threading.set_inter_op_parallelism_threads(1)

# The default suite's longest tests (each 30 s to 165 s of a 946 s run of `make test` on
# the 2-core VM), started first: pytest-xdist hands out the rest one by one as workers
# free up, so the run no longer ends with one worker idle while the other finishes a long
# test it picked up late.
LONG_TESTS = (
    "test_pipeline.py::test_run_local_tiny_two_methods",
    "test_backends.py::test_backends_agree_on_rslad",
    "test_reliability.py::test_two_devices_compute_the_same_update_as_one",
    "test_speed_paths.py::test_bench_runs_and_writes_json",
    "test_speed_paths.py::test_mixed_precision_training_with_all_fast_paths",
)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not item.nodeid.split("[")[0].endswith(LONG_TESTS))


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    import keras

    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="session")
def digits_data():
    from rslad_tf.data import load_numpy

    return load_numpy("digits", "train"), load_numpy("digits", "test")


@pytest.fixture(scope="session")
def trained_digits_model(digits_data):
    """A naturally trained narrow digits CNN (about 95% clean test accuracy), built once."""
    import keras

    from rslad_tf import models
    from rslad_tf.data import make_dataset
    from rslad_tf.methods import NaturalModel

    keras.utils.set_random_seed(1)
    (x, y), _ = digits_data
    student = models.create("small_cnn", 10, input_shape=(8, 8, 1), width=16)
    method = NaturalModel(student)
    method.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    method.fit(make_dataset(x, y, 64, shuffle=True, seed=1), epochs=6, verbose=0, shuffle=False)
    return student
