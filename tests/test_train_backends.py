"""`python -m rslad_tf.train` on the JAX and torch backends: the digits presets train end
to end (checkpoints, history, resume), a CIFAR-shaped run augments inside the step, the
`.keras` files load on TensorFlow, and no TensorFlow is imported.

Each backend runs in its own process (Keras reads the backend once, at import): this file
is also the worker, ``python tests/test_train_backends.py SPEC.json``, which runs the
training command line in-process for each argument list of the spec and then records the
backend's in-batch augmentation and whether TensorFlow was imported.

Resume is checked for exactness: a 2-epoch run equals a 1-epoch run resumed to 2 epochs,
weight for weight (both with the same explicit schedule, so the epoch budget changes
nothing else).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Tiny runs: a width-4 CNN, 2 steps per epoch, a 2-step training attack, 20 selection
# images; an explicit schedule, so that runs of different epoch budgets share it.
TINY = ["--max-steps", "2", "--eval-n-examples", "20", "--no-final-eval",
        "--set", "model_kwargs.width=4", "--set", "attack_steps=2",
        "--set", "lr_milestones=[1]", "--set", "eval_every=1"]
RESUME_ATOL = 1e-6


# -- the worker (one backend per process) -------------------------------------------------
def _augmentation(out):
    """The backend's in-batch augmentation: fixed offsets and flips, and a seeded draw."""
    import keras
    from keras import ops

    from rslad_tf.data import augment

    images = np.arange(2 * 4 * 4, dtype="float32").reshape(2, 4, 4, 1) + 1.0
    offsets = np.array([[2, 2], [0, 4]], "int32")  # centre crop; top row, shifted right 2
    flips = np.array([False, True])
    out["augment/fixed"] = ops.convert_to_numpy(augment.apply(
        ops.convert_to_tensor(images), ops.convert_to_tensor(offsets),
        ops.convert_to_tensor(flips), padding=2))
    for name in ("a", "b"):
        generator = keras.random.SeedGenerator(5)
        out[f"augment/seeded_{name}"] = ops.convert_to_numpy(augment.pad_crop_flip(
            ops.convert_to_tensor(np.repeat(images, 8, axis=0)), padding=2, flip=True,
            seed=generator))


def _worker(spec_path):
    """Run each argument list of the spec through the training command line; record the
    exit codes, the augmentation and ``"tensorflow" in sys.modules`` into spec["out"]."""
    from rslad_tf.common.errors import run_cli
    from rslad_tf.training.cli import main

    with open(spec_path) as f:
        spec = json.load(f)
    out = {"codes": np.asarray([run_cli(main, argv) for argv in spec["runs"]])}
    import keras

    out["backend"] = np.asarray(keras.backend.backend())
    _augmentation(out)
    out["tensorflow_imported"] = np.asarray("tensorflow" in sys.modules)
    np.savez(spec["out"], **out)


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               RSLAD_TF_THREADS="1", XLA_FLAGS="--xla_cpu_multi_thread_eigen=false "
               "intra_op_parallelism_threads=1", PYTHONWARNINGS="ignore",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("KERAS_BACKEND", None)
    env.update(extra)
    return env


def _runs(root, flag, cifar_dir=None):
    """The worker's argument lists (each starting with ``flag``): a teacher in 2 epochs;
    the same teacher in 1 epoch, then resumed to 2; the teacher's first epoch alone (how
    far the second epoch moves the weights); an RSLAD student of the first; a
    CIFAR-10-shaped SAT run (pad-crop and flip in the step) when ``cifar_dir`` is given."""
    runs_dir = os.path.join(root, "runs")
    teacher = flag + ["--preset", "digits-teacher", "--runs-dir", runs_dir] + TINY
    runs = [teacher + ["--epochs", "2", "--save-every-steps", "1"],
            teacher + ["--epochs", "1", "--out", os.path.join(root, "resumed")],
            teacher + ["--epochs", "2", "--out", os.path.join(root, "resumed"), "--resume"],
            teacher + ["--epochs", "1", "--out", os.path.join(root, "one")],
            flag + ["--preset", "digits-rslad", "--runs-dir", runs_dir, "--epochs", "1",
             "--out", os.path.join(root, "student")] + TINY]
    if cifar_dir:
        runs.append(flag + ["--preset", "cifar10-resnet18-sat", "--data-dir", cifar_dir,
                     "--epochs", "1", "--batch-size", "4", "--out", os.path.join(root, "cifar"),
                     "--set", "model=small_cnn"] + TINY)
    return runs


def _run_worker(tmp_path, env, flag=(), cifar=False):
    cifar_dir = None
    if cifar:
        cifar_dir = str(tmp_path / "cifar-data")
        os.makedirs(cifar_dir)
        _write_cifar10(cifar_dir)
    spec = {"runs": _runs(str(tmp_path), list(flag), cifar_dir),
            "out": str(tmp_path / "worker.npz")}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(spec_path)],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(spec["out"]) as result:
        return {k: result[k] for k in result.files}, proc


def _write_cifar10(directory, per_batch=4, n_test=8):
    """A CIFAR-10 python archive of random images (the layout `rslad_tf.data.cifar`
    reads): one training batch file per CIFAR batch name, a test batch."""
    import io
    import pickle
    import tarfile

    rng = np.random.default_rng(0)

    def batch(n):
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": rng.integers(0, 10, n).tolist()}

    members = {f"data_batch_{i}": batch(per_batch) for i in range(1, 6)}
    members["test_batch"] = batch(n_test)
    with tarfile.open(os.path.join(directory, "cifar-10-python.tar.gz"), "w:gz") as tar:
        for name, content in members.items():
            blob = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


# -- the checks -----------------------------------------------------------------------------
def _history(run):
    with open(os.path.join(run, "history.csv")) as f:
        return list(csv.DictReader(f))


def _check(result, root, backend, cifar=False):
    assert str(result["backend"]) == backend
    assert result["codes"].tolist() == [0] * (6 if cifar else 5)
    assert not bool(result["tensorflow_imported"]), f"{backend} imported TensorFlow"
    teacher = os.path.join(root, "runs", "digits-teacher")
    for run, epochs in ((teacher, 2), (os.path.join(root, "resumed"), 2),
                        (os.path.join(root, "student"), 1)):
        for name in ("config.json", "checkpoints/best.keras", "checkpoints/last.keras",
                     "checkpoints/state.npz"):
            assert os.path.exists(os.path.join(run, name)), (run, name)
        rows = _history(run)
        assert [int(r["epoch"]) for r in rows] == list(range(epochs))
        assert all(np.isfinite(float(r["loss"])) for r in rows)
        assert all(0.0 <= float(r["pgd20_acc"]) <= 100.0 for r in rows)
    # The checkpoints load on TensorFlow (this process) and predict.
    from rslad_tf.data import load_numpy
    from rslad_tf.methods import saving

    x, _ = load_numpy("digits", "test")
    weights = {}
    for run in ("runs/digits-teacher", "resumed", "one", "student"):
        model = saving.load_model(os.path.join(root, run, "checkpoints", "last.keras"))
        assert model(x[:8], training=False).shape == (8, 10)
        weights[run] = model.get_weights()
    # Resume is exact: 2 epochs in one go equal 1 epoch resumed to 2, while the second
    # epoch moves the weights far more than that tolerance (a resume that lost it fails).
    for a, b in zip(weights["runs/digits-teacher"], weights["resumed"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=RESUME_ATOL)
    moved = max(float(np.abs(a - b).max())
                for a, b in zip(weights["runs/digits-teacher"], weights["one"]))
    assert moved > 100 * RESUME_ATOL
    if cifar:
        assert len(_history(os.path.join(root, "cifar"))) == 1
    _check_augmentation(result)


def _check_augmentation(result):
    images = np.arange(2 * 4 * 4, dtype="float32").reshape(2, 4, 4, 1) + 1.0
    fixed = result["augment/fixed"]
    np.testing.assert_array_equal(fixed[0], images[0])
    padded = np.pad(images[1], [[2, 2], [2, 2], [0, 0]])
    np.testing.assert_array_equal(fixed[1], padded[0:4, 4:8][:, ::-1])
    # Seeded: the same seed gives the same batch, and the 16 images are not all alike.
    np.testing.assert_array_equal(result["augment/seeded_a"], result["augment/seeded_b"])
    assert len({result["augment/seeded_a"][i].tobytes() for i in range(16)}) > 2


def test_torch_trains_the_digits_presets_and_cifar_from_archives(tmp_path):
    """The flag wins over KERAS_BACKEND (set to tensorflow here)."""
    result, proc = _run_worker(tmp_path, _env(KERAS_BACKEND="tensorflow"),
                               flag=("--backend", "torch"), cifar=True)
    assert "backend torch: numpy batches" in proc.stdout
    _check(result, tmp_path, "torch", cifar=True)


@pytest.mark.slow
def test_jax_trains_the_digits_presets(tmp_path):
    """KERAS_BACKEND alone picks the backend. Slow: JAX compiles every new shape (8 minutes
    on the loaded 2-core machine, next to another test run)."""
    result, _ = _run_worker(tmp_path, _env(KERAS_BACKEND="jax"), cifar=True)
    _check(result, tmp_path, "jax", cifar=True)


@pytest.mark.parametrize("flag, env, needle", [
    (["--backend", "mxnet"], {}, "--backend: unknown Keras backend 'mxnet'"),
    ([], {"KERAS_BACKEND": "theano"}, "KERAS_BACKEND: unknown Keras backend 'theano'"),
])
def test_a_bad_backend_is_one_line(flag, env, needle):
    proc = subprocess.run([sys.executable, "-m", "rslad_tf.train", "--preset", "digits-teacher"]
                          + flag, env=_env(**env), capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "tensorflow, jax, torch" in lines[0]
    assert "Traceback" not in proc.stderr


def test_a_backend_chosen_after_keras_is_imported_is_refused():
    """This process runs Keras on TensorFlow (tests/conftest.py): another backend cannot
    be chosen any more, the running one can."""
    import keras  # noqa: F401

    from rslad_tf import backends

    with pytest.raises(backends.BackendError, match="already imported with the tensorflow"):
        backends.select("jax")
    assert backends.select("tensorflow") == "tensorflow"


if __name__ == "__main__":
    _worker(sys.argv[1])
