"""Exported artifacts (rslad_tf.interop.export, rslad_tf.interop.artifacts,
rslad_tf.evaluation.artifact_eval): each format's round trip, int8 accuracy, the artifact's
eval JSON against a checkpoint's, the report's artifact rows, and bad inputs (one line,
exit 2, nothing changed)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from rslad_tf.interop import artifacts
from rslad_tf.interop import export as export_lib
from rslad_tf.common.errors import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_NAME = {"saved_model": "model_savedmodel", "litert": "model.tflite",
            "litert-int8": "model_int8.tflite", "onnx": "model.onnx"}
# Few queries and points: these tests check the plumbing, not the robustness.
SMOKE = dict(n_examples=32, batch_size=32, autoattack_options={"n_queries": 20})
ARTIFACT_EXTRAS = {"artifact_format", "artifact_path", "size_bytes", "latency",
                   "source_checkpoint"}


def _keras_logits(model, x):
    return np.concatenate([np.asarray(model(x[i:i + 256], training=False), np.float32)
                           for i in range(0, len(x), 256)])


@pytest.fixture(scope="module")
def exported(trained_digits_model, tmp_path_factory):
    """Every format of the trained digits model, exported once: {format: export record}."""
    out = tmp_path_factory.mktemp("export")
    return {fmt: export_lib.export(trained_digits_model, fmt, str(out / OUT_NAME[fmt]))
            for fmt in artifacts.FORMATS}


@pytest.mark.parametrize("fmt", ["saved_model", "litert", "onnx"])
def test_float_artifact_reproduces_the_keras_logits(fmt, exported, trained_digits_model,
                                                    digits_data):
    _, (x, _) = digits_data
    record = exported[fmt]
    artifact = artifacts.load(record["path"])
    assert artifact.format == fmt
    diff = np.max(np.abs(artifacts.predict_batches(artifact, x)
                         - _keras_logits(trained_digits_model, x)))
    assert diff <= export_lib.FLOAT_TOLERANCE
    assert record["max_logit_diff"] == pytest.approx(diff, abs=1e-7)
    assert record["size_bytes"] == artifacts.size_on_disk(record["path"]) > 0


def test_float_tolerance_catches_a_slightly_wrong_model(exported, trained_digits_model,
                                                        digits_data, tmp_path):
    """The 1e-4 tolerance is tight enough to see a 1e-3 change of one logit's bias, and
    int8 quantisation."""
    import keras

    _, (x, _) = digits_data
    wrong = keras.models.clone_model(trained_digits_model)
    weights = trained_digits_model.get_weights()
    weights[-1] = weights[-1] + np.eye(1, len(weights[-1]), 3, dtype=np.float32)[0] * 1e-3
    wrong.set_weights(weights)
    record = export_lib.export(wrong, "litert", str(tmp_path / "wrong.tflite"))
    wrong_artifact = artifacts.load(record["path"])
    diff = np.max(np.abs(artifacts.predict_batches(wrong_artifact, x)
                         - _keras_logits(trained_digits_model, x)))
    assert diff > export_lib.FLOAT_TOLERANCE
    assert exported["litert-int8"]["max_logit_diff"] > export_lib.FLOAT_TOLERANCE


def test_int8_clean_accuracy_within_two_points_of_float(exported, trained_digits_model,
                                                        digits_data, tmp_path):
    _, (x, y) = digits_data
    artifact = artifacts.load(exported["litert-int8"]["path"])
    assert artifact.format == "litert-int8"
    assert exported["litert-int8"]["calibration"]["split"] == "train"
    float_acc = 100 * np.mean(_keras_logits(trained_digits_model, x).argmax(-1) == y)
    int8_acc = 100 * np.mean(artifacts.predict_batches(artifact, x).argmax(-1) == y)
    assert abs(int8_acc - float_acc) <= 2.0
    # The 2-point bound is not loose: calibrating on blank images (wrong activation
    # ranges) breaks it.
    bad = export_lib.export(trained_digits_model, "litert-int8", str(tmp_path / "bad.tflite"),
                            calibration_data=np.zeros([16, 8, 8, 1], np.float32))
    bad_acc = 100 * np.mean(artifacts.predict_batches(artifacts.load(bad["path"]), x)
                            .argmax(-1) == y)
    assert float_acc - bad_acc > 2.0


@pytest.fixture(scope="module")
def evals(exported, trained_digits_model):
    """The checkpoint's eval JSON and the int8 and SavedModel artifacts' ones."""
    from rslad_tf.evaluation.artifact_eval import evaluate_artifact
    from rslad_tf.evaluation.suite import evaluate

    attacks = ["clean", "pgd_sat", "square"]
    checkpoint = evaluate(trained_digits_model, attacks=attacks, **SMOKE)
    int8 = evaluate_artifact(exported["litert-int8"]["path"], source=trained_digits_model,
                             attacks=attacks, latency_repeats=5, **SMOKE)
    saved = evaluate_artifact(exported["saved_model"]["path"], source=trained_digits_model,
                              attacks=attacks, latency_repeats=5, **SMOKE)
    return checkpoint, int8, saved


def test_artifact_eval_json_has_the_checkpoint_schema(evals):
    checkpoint, int8, _ = evals
    assert set(int8) - set(checkpoint) == ARTIFACT_EXTRAS
    assert set(checkpoint) <= set(int8)
    for name in ("clean", "pgd_sat", "square"):
        assert set(checkpoint["attacks"][name]) <= set(int8["attacks"][name]), name
    assert set(checkpoint["sanity"]) <= set(int8["sanity"])
    assert int8["artifact_format"] == "litert-int8"
    assert int8["latency"]["batch_size"] == 1 and int8["latency"]["threads"] == 1
    assert int8["latency"]["median_ms"] > 0 and int8["size_bytes"] > 0
    assert int8["attacks"]["square"]["n_queries"] == 20
    assert "numpy_function" not in str(int8["attacks"]["square"])  # a plain record


def test_saved_model_artifact_scores_like_its_checkpoint(evals):
    """Same logits (1e-6), same adversarial images crafted on the source: same accuracy."""
    checkpoint, _, saved = evals
    assert saved["clean_acc"] == checkpoint["clean_acc"]
    assert saved["pgd_sat_acc"] == checkpoint["pgd_sat_acc"]
    assert saved["attacks"]["pgd_sat"]["crafted_on"] == saved["source_checkpoint"]


def test_report_puts_each_artifact_row_after_its_float_model(evals):
    from rslad_tf.evaluation import report

    checkpoint, int8, saved = evals
    rows = report.build_table([int8, checkpoint, saved])
    assert [r["artifact_format"] for r in rows] == [None, "saved_model", "litert-int8"]
    text = report.render(rows, "md")
    assert "| Format |" in text and "| keras |" in text and "| litert-int8 |" in text
    assert rows[2]["columns"]["Clean"]["mean"] == int8["clean_acc"]
    assert rows[2]["size_kib"]["mean"] == pytest.approx(int8["size_bytes"] / 1024)


def test_export_command_prints_size_and_logit_difference(trained_digits_model, tmp_path,
                                                         capsys):
    ckpt = tmp_path / "student.keras"
    trained_digits_model.save(ckpt)
    out = tmp_path / "student_sm"
    assert run_cli(export_lib.main, [str(ckpt), "--format", "saved_model",
                                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "KiB on disk" in printed and "largest logit difference" in printed
    assert os.path.isfile(out / artifacts.SAVED_MODEL_FILE)


# -- bad inputs ------------------------------------------------------------------------
def _run(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else ""


def test_export_bad_inputs_one_line_and_nothing_changed(tmp_path, capsys):
    ckpt = tmp_path / "student.keras"
    ckpt.write_bytes(b"not a model")
    taken = tmp_path / "taken.tflite"
    taken.write_bytes(b"keep me")
    cases = [
        (["--format", "tflite", "--out", tmp_path / "a.tflite"], "invalid choice"),
        (["--format", "litert", "--out", taken], "already exists"),
        (["--format", "litert", "--out", tmp_path / "a.bin"], "ending in .tflite"),
    ]
    for args, message in cases:
        code, last = _run("rslad_tf.export", ckpt, *args)
        assert code == 2 and last.startswith("error:") and message in last, last
    assert taken.read_bytes() == b"keep me"
    # Not a model: TensorFlow may be needed to tell, so in this process (it is loaded).
    assert run_cli(export_lib.main, [str(ckpt), "--format", "litert",
                                     "--out", str(tmp_path / "b.tflite")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "not a" in err[0] and "Keras" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.keras", "taken.tflite"]


def test_evaluate_artifact_bad_inputs(tmp_path, trained_digits_model, capsys):
    from rslad_tf.evaluation import cli

    ckpt = tmp_path / "student.keras"
    trained_digits_model.save(ckpt)
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer")
    empty_dir = tmp_path / "not_a_savedmodel"
    empty_dir.mkdir()
    code, last = _run("rslad_tf.evaluate", garbage)
    assert code == 2 and last.startswith("error:") and "--source" in last, last
    code, last = _run("rslad_tf.evaluate", empty_dir, "--source", ckpt)
    assert code == 2 and "saved_model.pb" in last, last
    code, last = _run("rslad_tf.evaluate", ckpt, "--source", ckpt)
    assert code == 2 and "not an artifact" in last, last
    # Not a model: the runtime refuses the file (in-process, TensorFlow is loaded).
    out = tmp_path / "eval.json"
    assert run_cli(cli.main, [str(garbage), "--source", str(ckpt), "--attacks", "clean",
                                   "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "not a loadable LiteRT model" in err[0]
    assert not out.exists() and garbage.read_bytes() == b"not a flatbuffer"


@pytest.mark.slow
def test_evaluate_command_on_an_artifact_writes_the_json(exported, trained_digits_model,
                                                         tmp_path):
    import json

    ckpt = tmp_path / "student.keras"
    trained_digits_model.save(ckpt)
    out = tmp_path / "eval.json"
    code, last = _run("rslad_tf.evaluate", exported["litert-int8"]["path"], "--source", ckpt,
                      "--attacks", "clean,fgsm,square", "--n-examples", 64, "--out", out)
    assert code == 0, last
    with open(out) as f:
        result = json.load(f)
    assert result["artifact_format"] == "litert-int8"
    assert {"clean_acc", "fgsm_acc", "square_acc"} <= set(result)
    assert result["attacks"]["square"]["standard"] is True


# -- the pipeline step -----------------------------------------------------------------
def test_export_student_step_and_its_report_rows(tmp_path, trained_digits_model):
    import json

    from components.common import write_model_artifact
    from components.export_student import export_student_fn, parse_formats
    from components.make_report import make_report_fn
    from components.prepare_data import prepare_data_fn
    from rslad_tf.common.errors import UserError

    def quiet(*_args, **_kwargs):
        pass

    data = str(tmp_path / "data")
    prepare_data_fn(data, dataset="digits", log=quiet)
    keras_file = str(tmp_path / "student.keras")
    trained_digits_model.save(keras_file)
    model_dir = str(tmp_path / "student")
    write_model_artifact(model_dir, keras_file, {"role": "student", "method": "natural",
                                                 "model_name": "small_cnn",
                                                 "checkpoint": "best"})
    step = dict(attacks="clean,square", n_examples=32, batch_size=32,
                square_options='{"n_queries": 20}', log=quiet)
    results_file = str(tmp_path / "results.json")
    evals = export_student_fn(data, model_dir, "", str(tmp_path / "exports"), results_file,
                              formats="litert-int8", **step)
    assert [e["artifact_format"] for e in evals] == ["litert-int8"]
    assert os.path.isfile(tmp_path / "exports" / "model_int8.tflite")
    with open(tmp_path / "exports" / "exports.json") as f:
        assert json.load(f)[0]["format"] == "litert-int8"
    # No formats (the pipeline's default): an empty list, no TensorFlow work.
    empty_file = str(tmp_path / "empty.json")
    assert export_student_fn(data, model_dir, "", str(tmp_path / "none"), empty_file,
                             formats="", **step) == []
    with pytest.raises(UserError, match="unknown export format"):
        parse_formats("litert,tflite")
    # The report: the float model's row, then the artifact's.
    float_eval = {k: v for k, v in evals[0].items()
                  if k not in ARTIFACT_EXTRAS and k not in ("export", "model_sha256")}
    float_file = tmp_path / "float.json"
    float_file.write_text(json.dumps(float_eval))
    out = [str(tmp_path / n) for n in ("report.md", "table.json", "plot.png")]
    rows = make_report_fn([str(float_file)], [], *out, artifact_files=[results_file, empty_file],
                          log=quiet)
    assert [r.get("artifact_format") for r in rows] == [None, "litert-int8"]
    with open(out[0]) as f:
        assert "| litert-int8 |" in f.read()


def test_export_step_default_attacks_match_the_function():
    """The kfp wrapper carries its default as a literal (it runs without module globals)."""
    import importlib
    import inspect

    step = importlib.import_module("components.export_student")  # the module, not the step

    default = inspect.signature(step.export_student.python_func).parameters["attacks"].default
    assert default == step.DEFAULT_ATTACKS


def test_export_step_without_formats_never_loads_tensorflow(tmp_path):
    """The pipeline's default (no formats) costs the demo a process start, not a
    TensorFlow import (which would also print TensorFlow's start-up lines in its log)."""
    code = ("import os, sys\n"
            "from components.export_student import export_student_fn\n"
            f"out = {str(tmp_path)!r}\n"
            "assert export_student_fn('unused', 'unused', '', os.path.join(out, 'e'),\n"
            "                         os.path.join(out, 'r.json'), formats='',\n"
            "                         log=lambda *a: None) == []\n"
            "print('tensorflow' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.strip() == "False"
    assert (tmp_path / "r.json").read_text().strip() == "[]"
