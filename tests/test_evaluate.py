"""The evaluation suite: protocol settings in the JSON, sanity ordering on a trained digits
model, our PGD against a plain implementation written here, AutoAttack / Square through the
torch-backend child, a model that ignores its input, best/last of a run, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from rslad_tf import attacks
from rslad_tf.common import vocabulary
from rslad_tf.evaluation import cli
from rslad_tf.evaluation import suite as ev
from rslad_tf.common.errors import run_cli

N = 96
EPS = 0.2  # the digits threat model
# A reduced AutoAttack for the default tests (the full standard run is a slow test).
FAST_AA = dict(autoattack_version="custom", autoattack_attacks=["apgd-ce", "apgd-t"],
               autoattack_options={"n_iter": 20, "n_target_classes": 3, "n_queries": 200})
PROTOCOL_KEYS = ("clean", "fgsm", "pgd_sat", "pgd_trades", "cw_inf")


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def sat_run(tmp_path_factory):
    """A short PGD-trained (SAT) digits run: run directory with config and checkpoints."""
    from rslad_tf.config import presets
    from rslad_tf.training.loop import train

    out = str(tmp_path_factory.mktemp("evalrun") / "run")
    # Width 16 at 0.05 trains in 3 epochs; the preset's width-4 student at its 0.5 does not
    # (18.75% clean after 3 epochs).
    config = presets.get("digits-sat").replace(epochs=3, eval_n_examples=64,
                                               learning_rate=0.05, model_kwargs={"width": 16})
    train(config, out, log=_quiet)
    return out


@pytest.fixture(scope="module")
def best(sat_run):
    return os.path.join(sat_run, "checkpoints", "best.keras")


@pytest.fixture(scope="module")
def white_box(best):
    return ev.evaluate(best, attacks=list(PROTOCOL_KEYS), n_examples=N, batch_size=64)


@pytest.fixture(scope="module")
def with_aa(best):
    return ev.evaluate(best, attacks=["clean", "pgd_sat", "pgd_trades", "cw_inf", "autoattack",
                                      "square"], n_examples=32, autoattack="reference", **FAST_AA)


def test_json_holds_the_contract_keys_and_the_protocol_settings(white_box, best):
    r = white_box
    for key in ("dataset", "model", "method", "checkpoint", "eps", "n_examples", "seed",
                "batch_size", "attacks", "seconds"):
        assert key in r
    assert (r["dataset"], r["model"], r["method"], r["checkpoint"]) == \
        ("digits", "small_cnn", "sat", "best")
    assert (r["eps"], r["n_examples"], r["seed"], r["batch_size"]) == (EPS, N, 0, 64)
    for name in PROTOCOL_KEYS:
        assert 0.0 <= r[f"{name}_acc"] <= 100.0
        assert r["seconds"][name] >= 0.0
    # Only the attacks that ran.
    for absent in ("autoattack_acc", "transfer_pgd_acc", "transfer_cw_acc", "square_acc",
                   "autoattack_per_attack"):
        assert absent not in r
    a = r["attacks"]
    assert a["fgsm"] == {"loss": "ce", "start": "none", "steps": 1, "step_fraction": 1.0,
                         "step_size": EPS, "eps": EPS, "seed": 0, "batch_size": 64}
    assert (a["pgd_sat"]["loss"], a["pgd_sat"]["start"], a["pgd_sat"]["steps"]) == \
        ("ce", "uniform", 20)
    assert a["pgd_sat"]["step_size"] == pytest.approx(EPS / 4)  # 2/255 at 8/255
    assert (a["pgd_trades"]["loss"], a["pgd_trades"]["start"], a["pgd_trades"]["steps"]) == \
        ("ce", "uniform", 20)
    assert a["pgd_trades"]["step_size"] == pytest.approx(0.003 * EPS / (8 / 255))
    assert (a["cw_inf"]["loss"], a["cw_inf"]["start"], a["cw_inf"]["steps"],
            a["cw_inf"]["kappa"]) == ("cw", "uniform", 20, 50.0)
    assert a["cw_inf"]["step_size"] == pytest.approx(EPS / 4)
    # At the paper's eps the same settings are the paper's numbers.
    assert attacks.PROTOCOL["pgd_trades"].describe(8 / 255)["step_size"] == pytest.approx(0.003)
    assert attacks.PROTOCOL["pgd_sat"].describe(8 / 255)["step_size"] == pytest.approx(2 / 255)
    json.dumps(r)  # serialisable as is


def test_sanity_ordering_on_a_trained_model(white_box, with_aa):
    r = white_box
    assert r["clean_acc"] > 60.0  # a trained model, not chance
    assert r["clean_acc"] >= r["fgsm_acc"]
    assert r["fgsm_acc"] >= r["pgd_sat_acc"] - 2.0
    assert r["pgd_sat_acc"] < r["clean_acc"]
    a = with_aa
    tolerance = 100.0 / a["n_examples"]  # one point
    for pgd in ("pgd_sat", "pgd_trades", "cw_inf"):
        assert a[f"{pgd}_acc"] >= a["autoattack_acc"] - tolerance
    assert a["clean_acc"] >= a["square_acc"]


def test_autoattack_numbers_come_from_the_tensorflow_model_and_agree_with_torch(with_aa):
    info = with_aa["attacks"]["autoattack"]
    assert info["version"] == "custom" and info["standard"] is False
    assert info["attacks"] == ["apgd-ce", "apgd-t"]
    assert (info["seed"], info["batch_size"], info["norm"], info["eps"]) == (0, 256, "Linf", EPS)
    assert info["options"] == FAST_AA["autoattack_options"]
    assert info["clean_prediction_mismatches"] == 0
    assert info["robust_flag_mismatches"] == 0
    assert info["reference_acc"] == with_aa["autoattack_acc"]
    assert info["reference_clean_acc"] == with_aa["clean_acc"]
    assert info["max_perturbation"] <= EPS + 1e-5
    per = with_aa["autoattack_per_attack"]
    assert list(per) == ["apgd-ce", "apgd-t"] and per == info["per_attack"]
    assert per["apgd-ce"] >= per["apgd-t"] == with_aa["autoattack_acc"]
    sq = with_aa["attacks"]["square"]
    assert sq["attacks"] == ["square"] and sq["n_queries"] == 200 and sq["standard"] is False
    assert sq["robust_flag_mismatches"] == 0 and sq["reference_acc"] == with_aa["square_acc"]
    assert set(with_aa["seconds"]) == {"clean", "pgd_sat", "pgd_trades", "cw_inf",
                                       "autoattack", "square"}


def test_transfer_attacks_are_no_stronger_than_white_box(best, trained_digits_model):
    r = ev.evaluate(best, attacks=["pgd_sat", "cw_inf", "transfer_pgd", "transfer_cw"],
                    surrogate=trained_digits_model, n_examples=N)
    assert r["transfer_pgd_acc"] >= r["pgd_sat_acc"] - 2.0
    assert r["transfer_cw_acc"] >= r["cw_inf_acc"] - 2.0
    t = r["attacks"]["transfer_pgd"]
    assert (t["protocol_attack"], t["steps"], t["start"], t["loss"]) == \
        ("pgd_sat", 20, "uniform", "ce")
    assert r["attacks"]["transfer_cw"]["loss"] == "cw"
    # Crafted on the target itself, a transfer attack is the white-box attack, point for point.
    same = ev.evaluate(best, attacks=["pgd_sat", "transfer_pgd"], surrogate=best, n_examples=N)
    assert same["transfer_pgd_acc"] == same["pgd_sat_acc"]
    assert same["surrogate"] == os.path.abspath(best)


# -- our PGD against a plain implementation ------------------------------------------------
def _plain_pgd(model, x, y, *, eps, step, steps, start_noise, loss, kappa=50.0):
    """Madry et al.'s PGD written out directly: eager, one step at a time."""
    x = tf.constant(x)
    y = tf.constant(y, tf.int32)
    x_adv = tf.clip_by_value(tf.minimum(tf.maximum(x + start_noise, x - eps), x + eps), 0., 1.)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = model(x_adv, training=False)
            if loss == "ce":
                value = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            else:
                true = tf.gather(logits, y, batch_dims=1)
                other = tf.reduce_max(tf.where(tf.one_hot(y, 10) > 0, -np.inf, logits), axis=1)
                value = tf.reduce_sum(tf.minimum(other - true, kappa))
        grad = tape.gradient(value, x_adv)
        x_adv = x_adv + step * tf.sign(grad)
        x_adv = tf.minimum(tf.maximum(x_adv, x - eps), x + eps)
        x_adv = tf.clip_by_value(x_adv, 0.0, 1.0)
    return x_adv.numpy()


@pytest.mark.parametrize("loss,start", [("ce", "none"), ("ce", "uniform"), ("cw", "uniform")])
def test_our_pgd_equals_a_plain_implementation(trained_digits_model, digits_data, loss, start):
    _, (x, y) = digits_data
    x, y = x[:64], y[:64]
    seed = 5
    if start == "uniform":  # the same start noise: the engine's stateless draw for an int seed
        noise = tf.random.stateless_uniform(x.shape, [seed, 0], minval=-1.0, maxval=1.0) * EPS
    else:
        noise = tf.zeros_like(x)
    ours = attacks.pgd(trained_digits_model, x, y, eps=EPS, steps=20, step_size=EPS / 4,
                       loss=loss, start=start, seed=seed).numpy()
    plain = _plain_pgd(trained_digits_model, x, y, eps=EPS, step=EPS / 4, steps=20,
                       start_noise=noise, loss=loss)
    # Pixels with a numerically zero gradient may take another sign in one of the two; the
    # images must agree almost everywhere, and the predictions everywhere.
    assert np.mean(np.abs(ours - plain) < 1e-6) > 0.999  # measured: 1.0 (identical)
    np.testing.assert_array_equal(ev.predict_labels(trained_digits_model, ours),
                                  ev.predict_labels(trained_digits_model, plain))


def test_suite_fgsm_equals_a_plain_fgsm(trained_digits_model, digits_data):
    _, (x, y) = digits_data
    x, y = x[:N], y[:N]
    plain = _plain_pgd(trained_digits_model, x, y, eps=EPS, step=EPS, steps=1,
                       start_noise=tf.zeros_like(x), loss="ce")
    expected = 100.0 * np.mean(ev.predict_labels(trained_digits_model, plain) == y)
    r = ev.evaluate(trained_digits_model, attacks=["fgsm"], n_examples=N)
    assert r["fgsm_acc"] == pytest.approx(expected, abs=100.0 / N)


# -- a model that ignores its input ----------------------------------------------------------
def _constant_model():
    import keras

    inputs = keras.Input((8, 8, 1))
    dense = keras.layers.Dense(10, name="bias_only")
    logits = dense(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, logits, name="constant")
    bias = np.linspace(0.0, 1.0, 10).astype(np.float32)[::-1].copy()  # always class 0
    dense.set_weights([np.zeros([64, 10], np.float32), bias])
    return model


@pytest.mark.parametrize("impl", ev.AUTOATTACK_IMPLS)
def test_a_model_that_ignores_its_input_keeps_every_point_it_gets_right(digits_data, impl):
    _, (_, y) = digits_data
    n = 60
    expected = 100.0 * np.mean(y[:n] == 0)
    assert expected > 0
    r = ev.evaluate(_constant_model(), attacks=list(vocabulary.WHITE_BOX_SUITE) + ["square"],
                    n_examples=n, autoattack=impl, autoattack_version="custom",
                    autoattack_attacks=["apgd-ce", "apgd-t", "fab-t", "square"],
                    autoattack_options={"n_iter": 10, "n_target_classes": 3, "n_queries": 100})
    for name in list(vocabulary.WHITE_BOX_SUITE) + ["square"]:
        assert r[f"{name}_acc"] == pytest.approx(expected), name
    assert all(v == pytest.approx(expected) for v in r["autoattack_per_attack"].values())


def test_a_separate_classifier_is_attacked_by_the_native_autoattack_only(
        trained_digits_model):
    """The reference implementation loads a .keras file: it cannot run an artifact."""
    for name in ("autoattack", "square"):
        with pytest.raises(ev.UserError, match="native implementation only"):
            ev.evaluate(trained_digits_model, classifier=trained_digits_model,
                        attacks=["clean", name], autoattack="reference")


# -- float32 ----------------------------------------------------------------------------------
def test_a_mixed_precision_model_is_evaluated_in_float32(digits_data):
    import keras

    from rslad_tf import models

    _, (x, _) = digits_data
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = models.create("small_cnn", 10, input_shape=(8, 8, 1), width=4)
    finally:
        keras.config.set_dtype_policy("float32")
    copy = ev.ensure_float32(mixed)
    assert {layer.compute_dtype for layer in copy.layers} == {"float32"}
    for a, b in zip(mixed.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.asarray(copy(x[:8])), np.asarray(mixed(x[:8]), np.float32),
                               atol=5e-2)
    assert ev.ensure_float32(copy) is copy


# -- best and last of a run -------------------------------------------------------------------
def test_evaluate_run_writes_best_and_last(sat_run):
    lines = []
    out = ev.evaluate_run(sat_run, attacks=["clean", "fgsm"], n_examples=32, log=lines.append)
    assert set(out) == {"best", "last"}
    for which in ("best", "last"):
        path = os.path.join(sat_run, f"eval_{which}.json")
        with open(path) as f:
            written = json.load(f)
        assert written == out[which]
        assert (written["checkpoint"], written["method"], written["model"]) == \
            (which, "sat", "small_cnn")
        assert written["preset"] == "digits-sat" and written["train_seed"] == 0
        assert written["n_examples"] == 32 and written["eps"] == pytest.approx(EPS)
        assert written["checkpoint_path"].endswith(f"{which}.keras")
    with pytest.raises(ev.UserError, match="no training run"):
        ev.evaluate_run(os.path.dirname(sat_run))


def test_train_final_eval_calls_evaluate_run(monkeypatch, tmp_path):
    from rslad_tf.config import presets
    from rslad_tf.training.loop import train

    seen = {}

    def fake(run_dir, **kwargs):
        seen["run_dir"] = run_dir
        return {"best": {}, "last": {}}

    monkeypatch.setattr(ev, "evaluate_run", fake)
    config = presets.get("digits-natural").replace(epochs=1, max_steps=2, eval_n_examples=16)
    summary = train(config, str(tmp_path / "run"), final_eval=True, log=_quiet)
    assert seen["run_dir"] == str(tmp_path / "run")
    assert summary["final_eval"] == {"best": {}, "last": {}}


# -- command line -------------------------------------------------------------------------------
def _cli(argv, capsys):
    code = run_cli(cli.main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("extra,message", [
    (["--attacks", "clean,pgd50"], "unknown attack"),
    (["--n-examples", "0"], "--n-examples"),
    (["--n-examples", "-3"], "--n-examples"),
    (["--n-examples", "many"], "invalid int"),
    (["--eps", "0"], "--eps"),
    (["--eps", "1.5"], "--eps"),
    (["--eps", "nan"], "--eps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--attacks", "transfer_pgd"], "surrogate"),
    (["--surrogate", "/nonexistent/s.keras"], "surrogate"),
    (["--dataset", "mnist"], "unknown dataset"),
    (["--attack-shards", "0"], "--attack-shards"),
])
def test_cli_bad_input_is_one_line_and_exit_2(best, capsys, extra, message):
    code, out, err = _cli([best] + extra, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert message in err


def test_cli_missing_or_invalid_checkpoint(tmp_path, capsys):
    code, _, err = _cli([str(tmp_path / "missing.keras")], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.keras"
    bad.write_text("not a model")
    code, _, err = _cli([str(bad), "--attacks", "clean"], capsys)
    assert code == 2 and "not a Keras .keras archive (zip)" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_writes_the_json_and_never_overwrites(best, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code, stdout, _ = _cli([best, "--attacks", "clean,fgsm", "--n-examples", "16",
                            "--out", str(out)], capsys)
    assert code == 0
    assert "FGSM" in stdout and "Clean" in stdout
    written = json.loads(out.read_text())
    assert written["n_examples"] == 16 and "fgsm_acc" in written and "pgd_sat_acc" not in written
    # The run's config.json supplies dataset, model, method, preset.
    assert (written["method"], written["model"], written["preset"]) == \
        ("sat", "small_cnn", "digits-sat")
    before = out.read_text()
    code, _, err = _cli([best, "--attacks", "clean", "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err and out.read_text() == before


def test_module_entry_point_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rslad_tf.evaluate",
                           str(tmp_path / "none.keras")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: checkpoint file {str(tmp_path / 'none.keras')!r} does not exist"]


@pytest.mark.slow
def test_standard_autoattack_on_a_few_points(best):
    r = ev.evaluate(best, attacks=["clean", "pgd_sat", "pgd_trades", "cw_inf", "autoattack"],
                    n_examples=16, autoattack="reference")
    info = r["attacks"]["autoattack"]
    assert info["version"] == "standard" and info["standard"] is True
    assert list(r["autoattack_per_attack"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert info["robust_flag_mismatches"] == 0 and info["clean_prediction_mismatches"] == 0
    assert info["reference_acc"] == r["autoattack_acc"]
    for pgd in ("pgd_sat", "pgd_trades", "cw_inf"):
        assert r[f"{pgd}_acc"] >= r["autoattack_acc"] - 100.0 / 16


def test_missing_torch_is_a_user_error(trained_digits_model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyautoattack" else real(name, *a))
    with pytest.raises(ev.UserError, match="pyautoattack is not installed"):
        ev.evaluate(trained_digits_model, attacks=["autoattack"], n_examples=4,
                    autoattack="reference")


def test_default_autoattack_needs_no_torch(trained_digits_model, monkeypatch):
    """PyTorch is optional: the default (native) AutoAttack and Square run without it."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "torch", "pyautoattack") else real(name, *a))
    r = ev.evaluate(trained_digits_model, attacks=["clean", "autoattack", "square"],
                    n_examples=8, autoattack_version="custom",
                    autoattack_attacks=["apgd-ce", "square"],
                    autoattack_options={"n_iter": 5, "n_queries": 20})
    assert r["autoattack_impl"] == ev.DEFAULT_AUTOATTACK == "native"
    assert 0.0 <= r["autoattack_acc"] <= r["clean_acc"]
