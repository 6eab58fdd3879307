"""Quiet command lines: TensorFlow's start-up lines are dropped, genuine ones kept, and a
user error is exactly one line on stderr, seen from a subprocess the way a user sees it."""

import os
import subprocess
import sys

import pytest

from rslad_tf.common import quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What TensorFlow 2.21 printed on this project's CPU machine before `rslad_tf.common.quiet`.
STARTUP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796163302.174804    4840 port.cc:153] oneDNN custom operations are on. "
    "You may see slightly different numerical results due to floating-point round-off "
    "errors from different computation orders. To turn them off, set the environment "
    "variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
    "I0000 00:00:1796163302.175361    4840 cudart_stub.cc:31] Could not find cuda "
    "drivers on your machine, GPU will not be used.\n"
    "I0000 00:00:1796163325.698291    5159 cpu_feature_guard.cc:227] This TensorFlow "
    "binary is optimized to use available CPU instructions in performance-critical operations.\n"
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, "
    "rebuild TensorFlow with the appropriate compiler flags.\n"
    "E0000 00:00:1796163310.287181    4840 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
GENUINE = "W0000 00:00:1796163310.3 4840 op_kernel.cc:1857] OP_REQUIRES failed: out of memory\n"


def test_only_the_known_startup_lines_are_dropped():
    assert quiet.filter_noise(STARTUP) == ""
    assert quiet.filter_noise(STARTUP + GENUINE + "error: a real one\n") == \
        GENUINE + "error: a real one\n"
    # The same words inside another message are not noise.
    assert not quiet.is_startup_noise("warning: Could not find cuda drivers? (user text)")


def test_descriptor_2_is_filtered_and_restored(capfd):
    with quiet.native_stderr_filtered():
        os.write(2, (STARTUP + GENUINE + "from python\n").encode())
    os.write(2, b"after the block\n")
    assert capfd.readouterr().err == GENUINE + "from python\nafter the block\n"


def _run(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # a user's shell: nothing set
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=240, **kwargs)


def test_tensorflow_import_keeps_only_genuine_lines():
    """The real import on this machine: its start-up lines go, a line that is not one of
    them (written at the same time) and everything after the import stay."""
    code = ("import os, sys\n"
            "from rslad_tf.common import quiet\n"
            "with quiet.native_stderr_filtered():\n"
            "    import tensorflow as tf\n"
            "    tf.config.list_physical_devices('GPU')\n"
            f"    os.write(2, {GENUINE!r}.encode())\n"
            "tf.constant(1.0) + 1\n"
            "print('after', file=sys.stderr)\n")
    done = _run(["-c", code])
    assert done.returncode == 0, done.stderr
    assert done.stderr == GENUINE + "after\n"


def test_user_error_is_one_line_after_tensorflow_started(tmp_path):
    """evaluate finds that the file is not a .keras archive after importing TensorFlow."""
    fake = tmp_path / "notamodel.keras"
    fake.write_text("hello")
    done = _run(["-m", "rslad_tf.evaluate", str(fake)])
    assert done.returncode == 2
    assert done.stderr == (f"error: checkpoint file {str(fake)!r} is not a Keras .keras "
                           "archive (zip); pass a model saved with model.save('name.keras')\n")


@pytest.mark.slow
def test_teacher_for_other_classes_is_one_line(tmp_path):
    """train finds the mismatch after TensorFlow started and the data are loaded."""
    from rslad_tf import models

    teacher = str(tmp_path / "t5.keras")
    models.create("small_cnn", 5, input_shape=(8, 8, 1), width=4).save(teacher)
    out = tmp_path / "run"
    done = _run(["-m", "rslad_tf.train", "--preset", "digits-rslad", "--teacher", teacher,
                 "--out", str(out), "--epochs", "1", "--max-steps", "1"])
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: teacher") \
        and "predicts 5 classes" in lines[0]
    assert not os.path.exists(out / "checkpoints" / "best.keras")


def test_cifar_missing_from_the_data_dir_is_one_line(tmp_path):
    """An empty --data-dir: no python archive there, so TFDS looks and finds nothing. TFDS
    logged a warning for the folder it probed (before `quiet.library_warnings_muted`: two
    lines); the user sees the one error line, and no run directory is made."""
    empty = tmp_path / "data"
    empty.mkdir()
    out = tmp_path / "run"
    done = _run(["-m", "rslad_tf.train", "--preset", "cifar10-resnet18-sat", "--data-dir",
                 str(empty), "--out", str(out)])
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(
        f"error: cifar10 not found in {empty}; put cifar-10-python.tar.gz"), done.stderr
    assert not os.path.exists(out)


def test_library_warnings_are_muted_in_the_block_only(caplog):
    import logging

    absl = logging.getLogger("absl")
    with caplog.at_level(logging.WARNING, logger="absl"):
        with quiet.library_warnings_muted():
            absl.warning("probed folder is empty")
            absl.error("a genuine error")
        absl.warning("after the block")
    assert [r.getMessage() for r in caplog.records] == ["a genuine error", "after the block"]


def test_missing_and_invalid_teacher_are_one_line(tmp_path):
    fake = tmp_path / "t.keras"
    fake.write_bytes(b"PK not really")
    for teacher, message in ((tmp_path / "none.keras", "does not exist"),
                             (fake, "is not a Keras .keras archive (zip)")):
        done = _run(["-m", "rslad_tf.train", "--preset", "digits-rslad", "--teacher",
                     str(teacher), "--out", str(tmp_path / "o")])
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: teacher file") and message in done.stderr
        assert not os.path.exists(tmp_path / "o")


def test_bench_package_command_line_errors_in_one_line():
    """`python -m rslad_tf.bench` runs the package's `__main__`; a bad count is refused
    before TensorFlow starts, in one line, with nothing on stdout."""
    done = _run(["-m", "rslad_tf.bench", "--repeats", "0"])
    assert done.returncode == 2
    assert done.stderr == "error: --repeats must be positive\n"
    assert done.stdout == ""
