"""Reliability: exact resume, atomic files, safe loading, multi-device equality, clear failures."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from rslad_tf.common import fileio
from rslad_tf.methods import saving
from rslad_tf.training import callbacks, loop
from rslad_tf.training import cli as train
from rslad_tf.common.errors import UserError, run_cli

COMMON = ["--preset", "digits-sat", "--max-steps", "4", "--eval-n-examples", "16",
          "--no-final-eval", "--deterministic"]


def _weights(run_dir):
    model = keras.saving.load_model(os.path.join(run_dir, "checkpoints", "last.keras"))
    return [w.numpy() for w in model.weights]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight") / "run")
    assert run_cli(train.main, COMMON + ["--epochs", "2", "--out", out]) == 0
    return _weights(out)


def test_resume_mid_epoch_is_bit_identical(uninterrupted, tmp_path, monkeypatch):
    """A crash after step 3 of epoch 1 (state saved every step), then --resume."""
    out = str(tmp_path / "run")
    original = callbacks.StepGuard.on_train_batch_end

    def crashing(self, batch, logs=None):
        original(self, batch, logs)
        if self.epoch == 1 and self.step == 3:
            raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(callbacks.StepGuard, "on_train_batch_end", crashing)
    assert run_cli(train.main, COMMON + ["--epochs", "2", "--out", out,
                                         "--save-every-steps", "1"]) == 130
    monkeypatch.setattr(callbacks.StepGuard, "on_train_batch_end", original)
    with np.load(os.path.join(out, "checkpoints", "state.npz")) as state:
        assert (int(state["epoch"]), int(state["step"])) == (1, 3)
    assert run_cli(train.main, COMMON + ["--epochs", "2", "--out", out, "--resume"]) == 0
    _assert_same(_weights(out), uninterrupted)


@pytest.mark.slow
def test_sigkill_at_arbitrary_moments_then_resume_is_bit_identical(uninterrupted, tmp_path):
    out = str(tmp_path / "run")
    args = [sys.executable, "-m", "rslad_tf.train"] + COMMON + ["--epochs", "2", "--out", out,
                                                                 "--save-every-steps", "1"]
    rng = np.random.default_rng(0)
    state = os.path.join(out, "checkpoints", "state.npz")
    for attempt in range(2):
        proc = subprocess.Popen(args + (["--resume"] if attempt else []),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mtime = os.path.getmtime(state) if os.path.exists(state) else 0
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(state) and os.path.getmtime(state) != mtime:
                break
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 1.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same(_weights(out), uninterrupted)


def test_kill_during_a_save_leaves_the_old_file(tmp_path):
    path = str(tmp_path / "last.keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    saving.save_model(model, path)
    good = open(path, "rb").read()

    class DiesWhileSaving:
        def save(self, tmp):
            with open(tmp, "wb") as f:
                f.write(good[: len(good) // 2])
            raise KeyboardInterrupt  # killed halfway through the write

    with pytest.raises(KeyboardInterrupt):
        saving.save_model(DiesWhileSaving(), path)
    assert open(path, "rb").read() == good
    assert os.listdir(tmp_path) == ["last.keras"]  # no temporary file left behind


def test_truncated_and_tampered_checkpoints_are_refused(tmp_path):
    path = str(tmp_path / "m.keras")
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(path)
    digest = fileio.sha256(path)
    data = open(path, "rb").read()
    truncated = str(tmp_path / "truncated.keras")
    open(truncated, "wb").write(data[: len(data) // 3])
    with pytest.raises(UserError, match=r"not a Keras \.keras archive \(zip\)"):
        saving.load_model(truncated)
    tampered = str(tmp_path / "tampered.keras")
    open(tampered, "wb").write(data[:-10] + bytes(10))
    with pytest.raises(UserError, match="expected"):
        saving.load_model(tampered, expected_sha256=digest)
    assert saving.load_model(path, expected_sha256=digest) is not None


def test_malicious_pickle_in_resume_state_is_not_unpickled(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli(train.main, COMMON + ["--epochs", "1", "--out", out]) == 0
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    state = os.path.join(out, "checkpoints", "state.npz")
    with open(state, "wb") as f:
        np.savez(f, w0=np.array([Evil()], dtype=object), epoch=np.array(1))
    capsys.readouterr()
    assert run_cli(train.main, COMMON + ["--epochs", "2", "--out", out, "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert not marker.exists()


def test_malicious_keras_file_lambda_is_refused(tmp_path):
    """Safe mode: a .keras file with a Lambda layer (arbitrary code) does not load."""
    path = str(tmp_path / "lambda.keras")
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs)).save(path)
    with pytest.raises(UserError, match="not a loadable Keras model"):
        saving.load_model(path)


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_checkpoint(tmp_path):
    from rslad_tf.config import presets

    out = str(tmp_path / "run")
    # Epoch 1 trains normally; from epoch 2 the learning rate is 5e30 and the loss blows up.
    config = presets.get("digits-sat").replace(epochs=2, max_steps=4, eval_n_examples=16,
                                               lr_milestones=(1,), lr_gamma=1e32)
    with pytest.raises(UserError, match=r"non-finite loss at epoch 2, step \d+"):
        loop.train(config, out)
    last = os.path.join(out, "checkpoints", "last.keras")
    model = saving.load_model(last)  # the last good checkpoint, from epoch 1
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
    with np.load(os.path.join(out, "checkpoints", "state.npz")) as state:
        assert int(state["epoch"]) == 1


def test_full_disk_gives_one_line(tmp_path, capsys, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(fileio, "write_text", no_space)
    code = run_cli(train.main, COMMON + ["--epochs", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "No space left on device" in err and "--out" in err


TWO_DEVICES = textwrap.dedent("""
    import sys, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from rslad_tf.methods import METHODS
    from rslad_tf.data import load_numpy

    def model(seed):
        keras.utils.set_random_seed(seed)
        # No BatchNorm: its batch statistics are per replica (as in the references'
        # DataParallel), so only BN-free models have replica-independent updates.
        return keras.Sequential([keras.Input((8, 8, 1)),
                                 keras.layers.Conv2D(8, 3, activation="relu"),
                                 keras.layers.Flatten(), keras.layers.Dense(10)])

    x, y = load_numpy("digits", "train")
    ds = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(64)
    worst = 0.0
    for name, cls in METHODS.items():
        results = []
        for strategy in (tf.distribute.get_strategy(),
                         tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
            with strategy.scope():
                teacher = model(1) if cls.uses_teacher else None
                kw = {"teacher": teacher} if teacher is not None else {}
                # TRADES' KL objective has a zero gradient at x' = x, so from a start of
                # "none" its sign is rounding noise; its loss scaling is checked without attack.
                steps = 0 if name == "trades" else 3
                method = cls(model(0), epsilon=0.2, step_size=0.05, attack_steps=steps,
                             attack_start="none", weight_decay=5e-4, **kw)
                method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
                assert method.distribute_strategy.num_replicas_in_sync in (1, 2)
            method.fit(ds, epochs=2, verbose=0)
            results.append([w.numpy() for w in method.student.weights])
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*results))
        worst = max(worst, diff)
        print(name, diff)
    sys.exit(0 if worst < 1e-5 else 1)
""")


def test_two_devices_compute_the_same_update_as_one():
    result = subprocess.run([sys.executable, "-c", TWO_DEVICES], capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


def test_refuse_existing_is_one_line_naming_the_path_and_the_option(tmp_path):
    """The one "nothing is overwritten" check the commands share (export, evaluate,
    report, convert_teacher, verify_autoattack): a file, a folder and a dangling link all
    count as existing; a free path passes."""
    from rslad_tf.common import fileio
    from rslad_tf.common.errors import UserError

    fileio.refuse_existing(str(tmp_path / "free.json"), "--out")
    (tmp_path / "taken.json").write_text("{}")
    (tmp_path / "folder").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    for name in ("taken.json", "folder", "dangling"):
        with pytest.raises(UserError) as info:
            fileio.refuse_existing(str(tmp_path / name), "--json")
        message = str(info.value)
        assert name in message and "choose another --json" in message, message
        assert "\n" not in message
    assert (tmp_path / "taken.json").read_text() == "{}"


def test_holds_something_is_what_an_output_directory_may_not_be(tmp_path):
    """The check of the outputs that must be new or empty directories (a local pipeline
    run's --out, a model artifact): a missing path or an empty folder is free; a file, a
    dangling link or a folder with anything in it is not."""
    from rslad_tf.common import fileio

    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / ".hidden").write_text("")
    (tmp_path / "file").write_text("")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    held = {name: fileio.holds_something(str(tmp_path / name))
            for name in ("missing", "empty", "full", "file", "dangling")}
    assert held == {"missing": False, "empty": False, "full": True, "file": True,
                    "dangling": True}
