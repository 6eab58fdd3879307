"""`python -m rslad_tf.train`: every digits preset runs, and bad input gets one clear line."""

import json
import os
import subprocess
import sys

import pytest

from rslad_tf.common import vocabulary
from rslad_tf.training import cli as train
from rslad_tf.common.errors import run_cli

FAST = ["--epochs", "1", "--max-steps", "2", "--eval-n-examples", "32", "--no-final-eval"]


def _run(argv, capsys):
    code = run_cli(train.main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """A runs directory holding a (one-epoch) digits teacher."""
    root = tmp_path_factory.mktemp("runs")
    code = run_cli(train.main, ["--preset", "digits-teacher", "--runs-dir", str(root)] + FAST)
    assert code == 0
    return root


def test_teacher_run_directory_layout(runs_dir):
    run = os.path.join(runs_dir, "digits-teacher")
    for name in ("config.json", "history.csv", "checkpoints/best.keras", "checkpoints/last.keras",
                 "checkpoints/state.npz", "tensorboard"):
        assert os.path.exists(os.path.join(run, name)), name
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["preset"] == "digits-teacher" and config["epochs"] == 1
    header = open(os.path.join(run, "history.csv")).readline().strip().split(",")
    assert {"epoch", "lr", "loss", "acc", "clean_acc", "pgd20_acc", "seconds"} <= set(header)


@pytest.mark.parametrize("method", vocabulary.METHOD_NAMES)
def test_every_student_preset_runs_one_epoch(method, runs_dir, tmp_path, capsys):
    out = os.path.join(tmp_path, "run")
    code, stdout, err = _run(["--preset", f"digits-{method}", "--runs-dir", str(runs_dir),
                              "--out", out] + FAST, capsys)
    assert code == 0, err
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["method"] == method
    assert 0.0 <= summary["last_pgd20_acc"] <= summary["last_clean_acc"] <= 100.0
    assert os.path.exists(os.path.join(out, "checkpoints", "best.keras"))


def test_student_without_teacher_says_how_to_make_one(tmp_path, capsys):
    code, _, err = _run(["--preset", "digits-rslad", "--runs-dir", str(tmp_path),
                         "--out", str(tmp_path / "o")] + FAST, capsys)
    assert code == 2
    assert "--preset digits-teacher" in err and "--teacher" in err
    assert len(err.strip().splitlines()) == 1


def _bad(capsys, argv, match, tmp_path):
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) >= 1 and "Traceback" not in err
    assert match in err, err
    return err


@pytest.mark.parametrize("argv,match", [
    (["--preset", "cifar7-resnet"], "unknown preset"),
    (["--preset", "digits-sat", "--method", "madry"], "unknown method"),
    (["--preset", "digits-sat", "--epochs", "0"], "epochs must be a positive"),
    (["--preset", "digits-sat", "--batch-size", "-3"], "--batch-size must be a positive"),
    (["--preset", "digits-sat", "--epsilon", "0"], "epsilon must be in (0, 1]"),
    (["--preset", "digits-sat", "--epsilon", "1.5"], "epsilon must be in (0, 1]"),
])
def test_bad_arguments(argv, match, capsys, tmp_path):
    _bad(capsys, argv + ["--out", str(tmp_path / "o")], match, tmp_path)
    assert not os.path.exists(tmp_path / "o")


def test_existing_run_is_never_overwritten(runs_dir, capsys, tmp_path):
    run = os.path.join(runs_dir, "digits-teacher")
    before = {f: os.path.getmtime(os.path.join(dp, f)) for dp, _, fs in os.walk(run) for f in fs}
    _bad(capsys, ["--preset", "digits-teacher", "--out", run] + FAST, "already holds a run",
         tmp_path)
    after = {f: os.path.getmtime(os.path.join(dp, f)) for dp, _, fs in os.walk(run) for f in fs}
    assert before == after


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    (b"this is not a zip file", "not a Keras .keras archive (zip)"),
])
def test_bad_teacher_file(content, match, capsys, tmp_path):
    path = tmp_path / "teacher.keras"
    if content is not None:
        path.write_bytes(content)
    _bad(capsys, ["--preset", "digits-rslad", "--teacher", str(path),
                  "--out", str(tmp_path / "o")] + FAST, match, tmp_path)


def test_teacher_with_wrong_number_of_classes(capsys, tmp_path):
    from rslad_tf import models

    path = str(tmp_path / "t5.keras")
    models.create("small_cnn", 5, input_shape=(8, 8, 1), width=4).save(path)
    _bad(capsys, ["--preset", "digits-rslad", "--teacher", path, "--out", str(tmp_path / "o")]
         + FAST, "predicts 5 classes", tmp_path)


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path, capsys):
    """Two epochs in one go == one epoch, then --resume to two epochs (same last.keras)."""
    import keras
    import numpy as np

    # Explicit milestones: a new --epochs scales the preset's (docs/training.md), and
    # --resume keeps the first leg's, so both legs are given the same schedule.
    common = ["--preset", "digits-sat", "--max-steps", "3", "--eval-n-examples", "16",
              "--no-final-eval", "--deterministic", "--set", "lr_milestones=[22,27]"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    assert _run(common + ["--epochs", "2", "--out", straight], capsys)[0] == 0
    assert _run(common + ["--epochs", "1", "--out", split], capsys)[0] == 0
    assert _run(common + ["--epochs", "2", "--out", split, "--resume"], capsys)[0] == 0
    a = keras.saving.load_model(os.path.join(straight, "checkpoints", "last.keras"))
    b = keras.saving.load_model(os.path.join(split, "checkpoints", "last.keras"))
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    rows = open(os.path.join(split, "history.csv")).read().strip().splitlines()
    assert len(rows) == 3  # header + 2 epochs, none duplicated


def test_resume_without_a_run_is_refused(capsys, tmp_path):
    _bad(capsys, ["--preset", "digits-sat", "--resume", "--out", str(tmp_path / "none")],
         "cannot resume", tmp_path)


def test_cli_exit_status_and_one_line_in_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rslad_tf.train", "--preset", "nope",
                             "--out", str(tmp_path / "o")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown preset")
    assert "Traceback" not in result.stderr


def test_list_presets(capsys):
    code, out, _ = _run(["--list-presets"], capsys)
    assert code == 0
    assert "digits-teacher" in out.split() and "digits-rslad" in out.split()


def test_unknown_field_is_one_line_naming_it_and_the_valid_ones(capsys, tmp_path):
    err = _bad(capsys, ["--preset", "digits-sat", "--set", "learning_rat=0.1",
                        "--out", str(tmp_path / "o")], "unknown field 'learning_rat'", tmp_path)
    assert len(err.strip().splitlines()) == 1 and "choose one of: preset, dataset" in err
    assert not os.path.exists(tmp_path / "o")


def test_resume_refuses_a_config_json_with_an_unknown_field(capsys, tmp_path):
    from rslad_tf.config import presets

    run = tmp_path / "run"
    run.mkdir()
    saved = dict(presets.get("digits-sat").to_dict(), warp_speed=True)
    (run / "config.json").write_text(json.dumps(saved))
    err = _bad(capsys, ["--preset", "digits-sat", "--resume", "--out", str(run)] + FAST,
               "unknown configuration field 'warp_speed'; valid fields: preset", tmp_path)
    assert len(err.strip().splitlines()) == 1
    assert os.listdir(run) == ["config.json"]


def test_validation_run_never_reads_the_test_set(tmp_path, capsys, monkeypatch):
    """``validation_fraction`` selects and reports on held-out training images; the test
    split is not loaded, and the final evaluation (on the test set) is skipped."""
    from rslad_tf import data

    load = data.load_numpy

    def no_test(name, split, *args, **kwargs):
        assert split != "test", "a validation run loaded the test set"
        return load(name, split, *args, **kwargs)

    monkeypatch.setattr(data, "load_numpy", no_test)
    out = tmp_path / "val"
    code, stdout, err = _run(["--preset", "digits-sat", "--epochs", "1", "--max-steps", "1",
                              "--set", "validation_fraction=0.2", "--out", str(out)], capsys)
    assert code == 0, err
    assert "1078 training images, 269 held out" in stdout
    assert "val clean" in stdout and "final evaluation on the test set is skipped" in stdout
    assert not (out / "eval_last.json").exists()
    assert json.load(open(out / "config.json"))["validation_fraction"] == 0.2
