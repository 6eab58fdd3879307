"""The methods and the PGD engine on every Keras backend: TensorFlow, JAX and torch agree.

Each backend runs in its own process (``KERAS_BACKEND`` must be set before Keras is
imported): this file is also the worker, ``python tests/test_backends.py OUT.npz``, which
builds the same student and teacher on its backend from weights drawn with numpy, and for
each method records, from the same batch with ``attack_start="none"``:

- the adversarial images of the method's training attack (student in inference mode);
- the loss of `loss_terms` at those images;
- the student's weights after two optimizer steps of ``fit`` (SGD with momentum and coupled
  weight decay), the logged metrics, the epoch counter and the seed generator's state.

The test compares JAX and torch with TensorFlow: at least 99% of the adversarial pixels equal
(the rest may be sign flips of gradients within rounding of zero), the loss within relative
LOSS_RTOL, the two-step update ||dW - dW_tf|| / ||dW_tf|| within UPDATE_RTOL. The tolerances
are calibrated by deliberately wrong variants computed by the JAX worker (one attack step
lost, the student's loss in inference mode, weight decay left out), each of which must miss
its tolerance. The workers also check that under JAX and torch no TensorFlow was imported,
and pass a `.keras` file along: saved by TensorFlow, trained and saved by JAX, then by torch,
and trained once more by TensorFlow here. The slow test also checks, on every backend,
`evaluate` and validation metrics, the public `pgd` with a seeded uniform start, a float16
student with loss scaling, and the seed's state after TRADES' random starts.

TRADES: its attack objective KL(S(x) || S(x')) has a zero gradient at x' = x, so from x the
first step follows rounding noise (tests/test_step_parity.py); its parity runs attack from
the same shifted point x + d on every backend (`_SharedStartTRADES`, test-only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

B, H, K = 16, 8, 10
EPS, STEP, STEPS = 0.2, 0.05, 3
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 2e-2
PIXEL_AGREEMENT = 0.99
LOSS_RTOL = 1e-4
UPDATE_RTOL = 1e-3
# name, constructor options (all methods made portable; IAD and AdaIAD also after warm-up).
# ARD, IAD and AdaIAD at temperature 4 rather than their 30: at tau = 30 the tempered
# distributions of these untrained models are nearly uniform and their KL (about 1e-5)
# is computed with a cancellation that leaves float32 a relative error near 1e-4 on any
# backend.
TAU = {"temperature": 4.0}
CASES = (
    ("natural", {}), ("sat", {}), ("trades", {}), ("ard", TAU),
    ("ard", {**TAU, "attack_batchnorm": "train"}), ("iad", TAU),
    ("iad", {**TAU, "warmup_epochs": 0}), ("rslad", {}),
    ("rslad", {"igdm_alpha": 1.0, "igdm_epochs": 4}), ("adaad", {}), ("adaiad", TAU),
    ("adaiad", {**TAU, "warmup_epochs": 0}))
# The default suite's subset: plain RSLAD (the slow test runs every case above).
FAST_CASES = (CASES.index(("rslad", {})),)
BACKENDS = ("tensorflow", "jax", "torch")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def case_key(index):
    name, options = CASES[index]
    return f"{index}_{name}" + ("_" + "_".join(sorted(options)) if options else "")


# -- the worker (one backend per process) -------------------------------------------------
def _set_weights(model, seed):
    """Weights drawn with numpy in the model's weight order: identical on every backend."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        shape, name = tuple(w.shape), w.path
        if "moving_variance" in name or "gamma" in name:
            v = rng.uniform(0.5, 1.5, shape)
        elif "kernel" in name:
            v = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        else:
            v = rng.normal(0.0, 0.1, shape)
        values.append(v.astype("float32"))
    model.set_weights(values)


def _batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (2 * B, H, H, 1)).astype("float32")
    y = rng.integers(0, K, 2 * B).astype("int32")
    return x, y


_models = {}


def _build(name, options, **extra):
    """A compiled method on the running backend, its student and teacher reset to the shared
    numpy weights (both models are built once per process: JAX compiles each new
    initializer shape, which dominates a worker's time otherwise)."""
    import keras

    from rslad_tf import models
    from rslad_tf.methods import METHODS

    if not _models:
        for role, width in (("student", 4), ("teacher", 8)):
            _models[role] = models.create("small_cnn", K, input_shape=(H, H, 1), width=width)
    _set_weights(_models["student"], 3)
    _set_weights(_models["teacher"], 7)
    cls = _shared_start_trades() if name == "trades" else METHODS[name]
    kw = {"teacher": _models["teacher"]} if cls.uses_teacher else {}
    settings = dict(epsilon=EPS, step_size=STEP, attack_steps=STEPS, attack_start="none",
                    weight_decay=WEIGHT_DECAY, seed=11)
    settings.update(options)
    settings.update(extra)
    method = cls(_models["student"], **kw, **settings)
    method.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM))
    return method


def _shared_start_trades():
    from keras import ops

    from rslad_tf.methods import TRADESModel

    class SharedStartTRADES(TRADESModel):
        """TRADES attacking from x + d (the same d on every backend), see the docstring."""

        def attack(self, x, y, ctx):
            shift = ops.convert_to_tensor(_shift(), "float32")[: ops.shape(x)[0]]
            return self.run_pgd(ops.clip(x + shift, 0.0, 1.0),
                                target_probs=ctx["clean_probs"], loss="kl")

    return SharedStartTRADES


def _weights(method):
    return np.concatenate([np.ravel(w) for w in method.student.get_weights()])


def _extras(out):
    """`evaluate` / validation, the public `pgd` with a seeded uniform start, a float16
    student with loss scaling, and TRADES' normal start advancing the seed's state."""
    import keras
    from keras import ops

    from rslad_tf import attacks, models
    from rslad_tf.methods import RSLADModel, TRADESModel

    x, y = _batch()
    method = _build("rslad", {})
    history = method.fit(x, y, batch_size=B, epochs=2, verbose=0, shuffle=False,
                         validation_data=(x, y)).history
    for k in ("val_loss", "val_acc"):
        out[f"extras/{k}"] = np.asarray(history[k])
    out["extras/epoch"] = ops.convert_to_numpy(method.epoch.value)
    out["extras/evaluate"] = np.asarray(method.evaluate(x, y, verbose=0))
    student = _models["student"]
    runs = [ops.convert_to_numpy(attacks.pgd(student, x, y, eps=EPS / 2, steps=STEPS,
                                             start="uniform", seed=3)) for _ in range(2)]
    out["extras/pgd_uniform"], out["extras/pgd_uniform_again"] = runs
    keras.config.set_dtype_policy("mixed_float16")
    try:
        half = models.create("small_cnn", K, input_shape=(H, H, 1), width=4)
    finally:
        keras.config.set_dtype_policy("float32")
    mixed = RSLADModel(half, _models["teacher"], epsilon=EPS, step_size=STEP,
                       attack_steps=STEPS, weight_decay=WEIGHT_DECAY)
    mixed.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LR)))
    out["extras/float16_loss"] = np.asarray(
        mixed.fit(x, y, batch_size=B, epochs=1, verbose=0).history["loss"])
    trades = TRADESModel(_models["student"], epsilon=EPS, attack_steps=2, seed=5)
    trades.compile(optimizer=keras.optimizers.SGD(LR))
    trades.fit(x, y, batch_size=B, epochs=1, verbose=0, shuffle=False)
    out["extras/trades_seed_state"] = ops.convert_to_numpy(
        trades.seed_generator.state.value).astype("int64")


def _worker(out_path, keras_in=None, keras_out=None, only=None, variants=False,
            extras=False):
    """Record one backend's numbers (module docstring) into ``out_path`` (.npz); with
    ``keras_in``, load that `.keras` file, train it one epoch and save it to ``keras_out``."""
    from keras import ops

    x, y = _batch()
    xb, yb = ops.convert_to_tensor(x[:B]), ops.convert_to_tensor(y[:B])
    out = {}
    for index, (name, options) in enumerate(CASES):
        if only is not None and index not in only:
            continue
        key = case_key(index)
        method = _build(name, options)
        ctx = method.prepare(xb, yb)
        x_adv = method.attack(xb, yb, ctx)
        out[f"{key}/x_adv"] = ops.convert_to_numpy(x_adv)
        out[f"{key}/loss"] = ops.convert_to_numpy(method.loss_terms(xb, x_adv, yb, ctx)["loss"])
        method = _build(name, options)
        out[f"{key}/w0"] = _weights(method)
        history = method.fit(x, y, batch_size=B, epochs=1, verbose=0, shuffle=False).history
        out[f"{key}/w2"] = _weights(method)
        for k, v in history.items():
            out[f"{key}/log/{k}"] = np.asarray(v)
        out[f"{key}/epoch"] = ops.convert_to_numpy(method.epoch.value)
        out[f"{key}/seed_state"] = ops.convert_to_numpy(
            method.seed_generator.state.value).astype("int64")
        if variants and index in FAST_CASES:
            wrong = _build(name, options, attack_steps=STEPS - 1)  # one attack step lost
            out[f"{key}/wrong/x_adv"] = ops.convert_to_numpy(wrong.attack(xb, yb, ctx))
            inference = _build(name, options)  # the loss with the training flag lost
            inference.student = _InferenceView(inference.student)
            out[f"{key}/wrong/loss"] = ops.convert_to_numpy(
                inference.loss_terms(xb, x_adv, yb, ctx)["loss"])
            no_decay = _build(name, options, weight_decay=0.0)
            no_decay.fit(x, y, batch_size=B, epochs=1, verbose=0, shuffle=False)
            out[f"{key}/wrong/w2"] = _weights(no_decay)
    if extras:
        _extras(out)
    # Keras' own saving imports TensorFlow where it is installed (its serialisation checks
    # for tf.TensorShape), so the check comes before the `.keras` files.
    out["tensorflow_imported"] = np.asarray("tensorflow" in sys.modules)
    if keras_in:
        out["keras/moved"] = np.asarray(_train_saved(keras_in, save_to=keras_out))
    np.savez(out_path, **out)


def _train_saved(path, save_to=None):
    """Load a `.keras` method, train it one epoch from the batch (optionally save it);
    returns the largest change of a student weight."""
    import keras

    from rslad_tf.methods.saving import load_model

    method = load_model(path)
    method.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM))
    before = method.student.get_weights()
    x, y = _batch()
    history = method.fit(x, y, batch_size=B, epochs=1, verbose=0, shuffle=False).history
    assert np.isfinite(history["loss"]).all()
    if save_to:
        method.save(save_to)
    return max(float(np.abs(a - b).max()) for a, b in zip(before, method.student.get_weights()))


class _InferenceView:
    """A student that ignores ``training=True`` (a wrong variant: the flag lost)."""

    def __init__(self, model):
        self._model = model

    def __call__(self, x, training=False):
        return self._model(x, training=False)


def _shift():
    """TRADES' shared start offset d: +-EPS/2 in a fixed pattern."""
    pattern = np.sign(np.sin(np.arange(2 * B * H * H, dtype="float64") * 1.7))
    return (pattern * EPS / 2).reshape(2 * B, H, H, 1).astype("float32")


# -- the tests ----------------------------------------------------------------------------
def _env(backend):
    return dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1",
                TF_NUM_INTEROP_THREADS="1", XLA_FLAGS="--xla_cpu_multi_thread_eigen=false",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run_workers(tmp_path, cases, saved, extras=False):
    """One worker per backend, at the same time; JAX and torch also train ``saved``."""
    procs = {}
    for backend in BACKENDS:
        kw = {"only": list(cases), "variants": backend == "jax", "extras": extras}
        if backend != "tensorflow":
            kw.update(keras_in=saved, keras_out=str(tmp_path / f"{backend}.keras"))
        out = str(tmp_path / f"{backend}.npz")
        procs[backend] = (out, subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), out, json.dumps(kw)], env=_env(backend),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    results = {}
    for backend, (out, proc) in procs.items():
        _, err = proc.communicate(timeout=1800)
        assert proc.returncode == 0, f"{backend} worker failed:\n{err[-4000:]}"
        results[backend] = dict(np.load(out))
    return results


def _relative(a, b):
    return float(np.linalg.norm(np.asarray(a, "float64") - b) /
                 max(np.linalg.norm(np.asarray(b, "float64")), 1e-30))


def _errors(ref, got, key, variant):
    """Pixel agreement, loss error and update error of ``got``'s run (or its ``variant``)."""
    loss, ref_loss = float(got[f"{key}/{variant}loss"]), float(ref[f"{key}/loss"])
    return {
        "pixels_equal": float(np.mean(
            np.abs(got[f"{key}/{variant}x_adv"] - ref[f"{key}/x_adv"]) <= 1e-6)),
        "loss_rel": abs(loss - ref_loss) / abs(ref_loss),
        "update_rel": _relative(got[f"{key}/{variant}w2"] - got[f"{key}/w0"],
                                ref[f"{key}/w2"] - ref[f"{key}/w0"]),
    }


def compare(results, reference="tensorflow", variants_of="jax"):
    """Measured errors of every backend against ``reference`` (and of the wrong variants)."""
    ref = results[reference]
    report = {}
    for backend, got in results.items():
        if backend == reference:
            continue
        for index in range(len(CASES)):
            key = case_key(index)
            if f"{key}/loss" not in got:
                continue

            row = _errors(ref, got, key, "")
            if backend == variants_of and f"{key}/wrong/loss" in got:
                row["wrong"] = _errors(ref, got, key, "wrong/")
            report[f"{backend}/{key}"] = row
    return report


def _failures(row, where):
    out = []
    if row["pixels_equal"] < PIXEL_AGREEMENT:
        out.append(f"{where}: {row['pixels_equal']:.4f} of adversarial pixels equal")
    if row["loss_rel"] > LOSS_RTOL:
        out.append(f"{where}: loss error {row['loss_rel']:.2e}")
    if row["update_rel"] > UPDATE_RTOL:
        out.append(f"{where}: update error {row['update_rel']:.2e}")
    return out


def _check(results, cases):
    report = compare(results)
    print(json.dumps(report, indent=1))
    assert len(report) == 2 * len(cases)
    failures = []
    for where, row in report.items():
        failures += _failures(row, where)
        if "wrong" in row:  # calibration: each wrong variant misses its tolerance
            assert len(_failures(row["wrong"], where)) == 3, (where, row["wrong"])
    assert not failures, "\n".join(failures)
    ref = results["tensorflow"]
    for backend in ("jax", "torch"):
        got = results[backend]
        assert not bool(got["tensorflow_imported"]), f"{backend} imported TensorFlow"
        for index in cases:
            key = case_key(index)
            # The epoch counter, the seed's state and the logged metrics agree.
            assert int(got[f"{key}/epoch"]) == int(ref[f"{key}/epoch"]) == 0
            np.testing.assert_array_equal(got[f"{key}/seed_state"], ref[f"{key}/seed_state"])
            ref_logs = sorted(k for k in ref if k.startswith(f"{key}/log/"))
            assert sorted(k for k in got if k.startswith(f"{key}/log/")) == ref_logs
            for k in ref_logs:
                np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, err_msg=k)


def _check_extras(results):
    ref = results["tensorflow"]
    x, _ = _batch()
    for backend, got in results.items():
        np.testing.assert_allclose(got["extras/evaluate"], ref["extras/evaluate"], rtol=1e-4)
        for k in ("extras/val_loss", "extras/val_acc"):
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, err_msg=f"{backend} {k}")
        assert int(got["extras/epoch"]) == 1
        x_adv = got["extras/pgd_uniform"]
        assert np.abs(x_adv - x).max() <= EPS / 2 + 1e-6
        assert 0.0 <= x_adv.min() <= x_adv.max() <= 1.0
        assert np.abs(x_adv - x).max() > EPS / 4  # it moved
        np.testing.assert_array_equal(x_adv, got["extras/pgd_uniform_again"])  # seeded
        assert np.isfinite(got["extras/float16_loss"]).all(), backend
        # One draw per step (two steps): the same state on every backend.
        np.testing.assert_array_equal(got["extras/trades_seed_state"], [5, 2])


def _agree(tmp_path, cases, extras=False):
    saved = str(tmp_path / "tensorflow.keras")
    method = _build("rslad", {})  # this process runs TensorFlow (tests/conftest.py)
    method.fit(*_batch(), batch_size=B, epochs=1, verbose=0, shuffle=False)
    method.save(saved)
    results = _run_workers(tmp_path, cases, saved, extras)
    _check(results, cases)
    if extras:
        _check_extras(results)
    # `.keras` files: TensorFlow's trained on JAX and on torch, theirs trained here.
    for backend in ("jax", "torch"):
        assert float(results[backend]["keras/moved"]) > 0.0, f"{backend} did not train"
        assert _train_saved(str(tmp_path / f"{backend}.keras")) > 0.0


def test_backends_agree_on_rslad(tmp_path):
    _agree(tmp_path, FAST_CASES)


@pytest.mark.slow
def test_backends_agree_on_every_method(tmp_path):
    _agree(tmp_path, range(len(CASES)), extras=True)


if __name__ == "__main__":
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    _worker(sys.argv[1], **options)
