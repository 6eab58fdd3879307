"""Native TensorFlow AutoAttack: losses against numpy formulas, the L-inf projection of FAB
against a direct solution, the threat-model invariants of each attack, a model that ignores
its input, the reference's schedules, agreement with the reference code on a small set, and
the evaluation suite's ``autoattack="native"`` path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rslad_tf.evaluation import cli
from rslad_tf.evaluation import suite as ev
from rslad_tf.attacks import autoattack as aa
from rslad_tf.attacks.autoattack import _util, apgd, fab, square

EPS = 0.2
N = 32
# Reduced hyper-parameters: every code path in seconds.
FAST = {"n_iter": 10, "n_queries": 100, "n_target_classes": 3, "n_restarts": 1}
ALL = ["apgd-ce", "apgd-t", "fab-t", "square"]


@pytest.fixture(scope="module")
def points(digits_data):
    _, (x, y) = digits_data
    return x[:N], y[:N]


def _state(model):
    return [np.array(v) for v in model.variables]  # weights and BatchNorm statistics


# -- losses ---------------------------------------------------------------------------------
def _np_dlr(z, y):
    out = []
    for row, label in zip(z, y):
        srt = np.sort(row)[::-1]
        other = np.max(np.delete(row, label))
        out.append(-(row[label] - other) / (srt[0] - srt[2] + 1e-12))
    return np.array(out)


def _np_dlr_targeted(z, y, t):
    out = []
    for row, label, target in zip(z, y, t):
        srt = np.sort(row)[::-1]
        out.append(-(row[label] - row[target]) / (srt[0] - 0.5 * (srt[2] + srt[3]) + 1e-12))
    return np.array(out)


def test_dlr_losses_equal_the_numpy_formulas():
    rng = np.random.default_rng(0)
    z = rng.normal(size=[64, 10]).astype(np.float32) * 3
    y = rng.integers(0, 10, 64)
    t = (y + rng.integers(1, 10, 64)) % 10
    np.testing.assert_allclose(apgd.dlr_loss(z, y).numpy(), _np_dlr(z, y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(apgd.targeted_dlr_loss(z, y, t).numpy(),
                               _np_dlr_targeted(z, y, t), rtol=1e-5, atol=1e-6)
    # Correctly classified: DLR < 0; misclassified: > 0; scale invariant.
    z[0] = np.arange(10)
    y[0] = 9
    assert apgd.dlr_loss(z[:1], y[:1]).numpy()[0] < 0
    np.testing.assert_allclose(apgd.dlr_loss(5 * z, y).numpy(), apgd.dlr_loss(z, y).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(apgd.ce_loss(z, y).numpy(),
                               -np.log(np.exp(z[np.arange(64), y]) / np.exp(z).sum(1)), rtol=1e-4)


# -- FAB's projection -------------------------------------------------------------------------
def _np_projection(p, w, b):
    """Bisection on the L-inf radius: the smallest lam whose box-limited move reaches b."""
    gap = w @ p - b
    sign = 1.0 if gap >= 0 else -1.0
    w, need = w * sign, abs(gap)
    room = np.where(w > 0, p, 1 - p)

    def change(lam):
        return np.sum(np.abs(w) * np.minimum(lam, room))

    if change(1.0) < need:
        lam = 1.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if change(mid) < need else (lo, mid)
        lam = hi
    d = np.where(w > 0, -np.minimum(lam, room), np.minimum(lam, room))
    return np.where(w == 0, 0.0, d)


def test_fab_projection_solves_the_box_constrained_problem():
    rng = np.random.default_rng(1)
    n, dim = 40, 16
    p = rng.uniform(size=[n, dim]).astype(np.float32)
    w = rng.normal(size=[n, dim]).astype(np.float32)
    w[::5, :4] = 0.0
    # Hyperplanes near, far (beyond the box: the closest corner), and through the point.
    b = (np.sum(w * p, 1) + rng.normal(size=n) * np.linspace(0.01, 5.0, n)).astype(np.float32)
    b[0] = np.sum(w[0] * p[0])
    d = fab.project_linf(p, w, b).numpy()
    for i in range(n):
        np.testing.assert_allclose(d[i], _np_projection(p[i].astype(np.float64),
                                                        w[i].astype(np.float64), float(b[i])),
                                   atol=2e-4)
    q = p + d
    assert q.min() >= -1e-6 and q.max() <= 1 + 1e-6
    feasible = np.array([np.sum(np.abs(wi) * np.where(wi > 0, pi, 1 - pi)) >= abs(wi @ pi - bi)
                         for pi, wi, bi in zip(p, w, b)])
    np.testing.assert_allclose((np.sum(w * q, 1) - b)[feasible], 0.0, atol=2e-3)
    assert np.max(np.abs(d[0])) < 1e-6  # a hyperplane through the point: no move


# -- schedules --------------------------------------------------------------------------------
def test_apgd_checkpoints_and_square_schedule_are_the_references():
    assert apgd.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd.schedule(100) == (22, 6, 3)
    assert apgd.schedule(10) == (2, 1, 1)
    sides = {int(square.window_side(i, 8, 8)) for i in (0, 10)}
    assert sides == {7}  # p = 0.8 on an 8x8 image: round(sqrt(51.2)) = 7
    # The reference's p schedule (no rescaling for 5000 queries), read off its code.
    pytest.importorskip("pyautoattack")
    from pyautoattack.square import SquareAttack

    ref = SquareAttack(lambda x: x, p_init=0.8, n_queries=5000, eps=0.1, resc_schedule=False)
    its = np.arange(0, 10000, 7)
    ours = np.array([float(square.p_selection(i)) for i in its])
    np.testing.assert_allclose(ours, [ref.p_selection(int(i)) for i in its], rtol=1e-6)


# -- invariants of each attack ------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_each_attack_keeps_the_threat_model_and_the_model(name, trained_digits_model, points):
    x, y = points
    model = trained_digits_model
    before = _state(model)
    out = aa.run(model, x, y, eps=EPS, seed=3, batch_size=16, version="custom", attacks=[name],
                 options=FAST)
    x_adv = out["x_adv"]
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert np.max(np.abs(x_adv - x)) <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    for a, b in zip(before, _state(model)):
        np.testing.assert_array_equal(a, b)
    pred = ev.predict_labels(model, x_adv)
    np.testing.assert_array_equal(pred == y, out["robust"])
    np.testing.assert_array_equal(x_adv[out["robust"]], x[out["robust"]])
    assert not np.any(out["robust"] & ~out["clean"])
    # A naturally trained CNN at eps 0.2: every attack breaks some points.
    assert out["robust"].sum() < out["clean"].sum()


def test_per_attack_flags_only_shrink_and_batches_do_not_matter(trained_digits_model, points):
    x, y = points
    out = aa.run(trained_digits_model, x, y, eps=EPS, seed=0, batch_size=12, version="custom",
                 attacks=ALL, options=FAST)
    previous = out["clean"]
    for name in ALL:
        assert not np.any(out["per_attack"][name] & ~previous), name
        previous = out["per_attack"][name]
    np.testing.assert_array_equal(previous, out["robust"])
    assert list(out["per_attack"]) == ALL and set(out["seconds"]) == set(ALL)
    # FAB-T is deterministic: the batch split changes nothing.
    a = aa.run(trained_digits_model, x, y, eps=EPS, batch_size=7, version="custom",
               attacks=["fab-t"], options=FAST)
    b = aa.run(trained_digits_model, x, y, eps=EPS, batch_size=32, version="custom",
               attacks=["fab-t"], options=FAST)
    np.testing.assert_array_equal(a["robust"], b["robust"])


def test_batches_run_at_the_same_time_give_the_same_result(trained_digits_model, points):
    """`workers` (the process's attack shards) only changes how many batches run at once:
    each batch keeps its own random stream, so the points and verdicts are identical."""
    x, y = points
    runs = [aa.run(trained_digits_model, x, y, eps=EPS, seed=3, batch_size=8, version="custom",
                   attacks=ALL, options=FAST, workers=workers) for workers in (1, 3)]
    np.testing.assert_array_equal(runs[0]["x_adv"], runs[1]["x_adv"])
    for name in ALL:
        np.testing.assert_array_equal(runs[0]["per_attack"][name], runs[1]["per_attack"][name])
    assert runs[0]["robust"].sum() < runs[0]["clean"].sum()


def test_restarts_only_attack_the_points_still_robust(trained_digits_model, points):
    """A second restart runs on the survivors of the first (which is the same run as with
    one restart): it can only break more points, and keeps the threat model. (APGD-T
    interleaves restarts with its targets, so only its invariants are checked.)"""
    x, y = points
    for name in ("apgd-ce", "apgd-t", "square"):
        runs = {n: aa.run(trained_digits_model, x, y, eps=EPS, seed=1, batch_size=16,
                          version="custom", attacks=[name],
                          options=dict(FAST, n_iter=5, n_queries=30, n_restarts=n))
                for n in (1, 2)}
        if name != "apgd-t":
            assert not np.any(runs[2]["robust"] & ~runs[1]["robust"]), name
        assert np.max(np.abs(runs[2]["x_adv"] - x)) <= EPS + 1e-6
        assert runs[2]["x_adv"].min() >= 0.0 and runs[2]["x_adv"].max() <= 1.0


def _constant_model():
    import keras

    inputs = keras.Input((8, 8, 1))
    dense = keras.layers.Dense(10, name="bias_only")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)), name="constant")
    bias = np.linspace(0.0, 1.0, 10).astype(np.float32)[::-1].copy()  # always class 0
    dense.set_weights([np.zeros([64, 10], np.float32), bias])
    return model


def test_a_constant_model_stays_robust_on_the_points_it_gets_right(digits_data):
    _, (x, y) = digits_data
    x, y = x[:60], y[:60]
    expected = y == 0
    assert expected.any()
    out = aa.run(_constant_model(), x, y, eps=EPS, batch_size=32, version="custom",
                 attacks=ALL, options={"n_iter": 10, "n_queries": 50, "n_target_classes": 3})
    np.testing.assert_array_equal(out["clean"], expected)
    for name in ALL:
        np.testing.assert_array_equal(out["per_attack"][name], expected)
    np.testing.assert_array_equal(out["x_adv"], x)


def test_bad_arguments_are_value_errors(trained_digits_model, points):
    x, y = points
    with pytest.raises(ValueError, match="version"):
        aa.run(trained_digits_model, x, y, eps=EPS, version="plus")
    with pytest.raises(ValueError, match="needs a list"):
        aa.run(trained_digits_model, x, y, eps=EPS, version="custom")
    with pytest.raises(ValueError, match="not implemented natively"):
        aa.run(trained_digits_model, x, y, eps=EPS, version="custom", attacks=["fab"])
    with pytest.raises(ValueError, match="unknown AutoAttack attack"):
        aa.run(trained_digits_model, x, y, eps=EPS, version="custom", attacks=["pgd"])
    with pytest.raises(ValueError, match="only be chosen"):
        aa.run(trained_digits_model, x, y, eps=EPS, attacks=["square"])
    with pytest.raises(ValueError, match="option"):
        aa.run(trained_digits_model, x, y, eps=EPS, options={"steps": 3})
    with pytest.raises(ValueError, match="expected images"):
        aa.run(trained_digits_model, x, y[:3], eps=EPS)
    with pytest.raises(ValueError, match="target classes"):
        aa.run(trained_digits_model, x, y, eps=EPS, version="custom", attacks=["apgd-t"],
               options={"n_target_classes": 10, "n_iter": 2})


def test_targets_are_the_classes_by_clean_logit_rank():
    logits = np.array([[0.1, 3.0, 2.0, -1.0], [5.0, 5.0, 1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(_util.target_classes(logits, 2), [2, 0])
    np.testing.assert_array_equal(_util.target_classes(logits, 4), [3, 3])


# -- agreement with the reference -------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_model(trained_digits_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("native") / "model.keras")
    trained_digits_model.save(path)
    return path


def test_agreement_with_the_reference_on_a_small_set(saved_model, tmp_path, capsys):
    """Both implementations with the same reduced options on the same 32 points, through
    the verification command. The run (random starts, different random streams) must
    agree within one point."""
    pytest.importorskip("pyautoattack")
    from rslad_tf.evaluation import verify_autoattack as verify
    from rslad_tf.common.errors import run_cli

    out = tmp_path / "verify.json"
    code = run_cli(verify.main, [saved_model, "--n-examples", str(N), "--attacks", ",".join(ALL),
                                 "--n-iter", "20", "--n-queries", "100",
                                 "--n-target-classes", "3", "--batch-size", "16",
                                 "--threads", "1", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "same verdict" in captured.out and "faster" in captured.out
    result = json.loads(out.read_text())
    assert result["options"] == {"n_iter": 20, "n_queries": 100, "n_target_classes": 3,
                                 "n_restarts": 1}
    assert result["attacks"] == ALL and result["points"] == {"test": N, "train": 0}
    assert result["per_attack"]["clean"]["same_verdict"] == 1.0
    assert result["final"]["same_verdict"] >= 1.0 - 1.0 / N
    assert result["acc_gap_pp"] <= 100.0 / N
    assert result["native"]["flags_equal_reclassification"]
    assert result["reference"]["flags_equal_reclassification"]
    assert result["max_perturbation"]["native"] <= EPS + 1e-6
    # More points than the test set: training points follow.
    x, y, counts = verify.load_points("digits", 460)
    assert counts == {"test": 450, "train": 10} and len(x) == len(y) == 460


def test_fab_t_verdicts_equal_the_references(saved_model, trained_digits_model, points):
    pytest.importorskip("pyautoattack")
    from rslad_tf.attacks.autoattack import reference as reference

    x, y = points
    opts = {"n_iter": 20, "n_target_classes": 3}
    ref = reference.run(saved_model, x, y, eps=0.1, version="custom", attacks=["fab-t"],
                        batch_size=32, options=opts, threads=1)
    ours = aa.run(trained_digits_model, x, y, eps=0.1, batch_size=32, version="custom",
                  attacks=["fab-t"], options=opts)
    np.testing.assert_array_equal(ours["robust"], ref["robust"])
    assert 0 < ours["robust"].sum() < ours["clean"].sum()  # a non-trivial split


# -- the evaluation suite -----------------------------------------------------------------------
def test_evaluate_routes_autoattack_and_square_to_native(trained_digits_model):
    r = ev.evaluate(trained_digits_model, attacks=["clean", "pgd_sat", "autoattack", "square"],
                    n_examples=N, autoattack="native", autoattack_version="custom",
                    autoattack_attacks=ALL, autoattack_options=FAST, sanity_checks=False)
    assert r["autoattack_impl"] == "native"
    info = r["attacks"]["autoattack"]
    assert info["implementation"].startswith("native")
    assert info["attacks"] == ALL and info["standard"] is False
    assert info["robust_flag_mismatches"] == 0 and info["max_perturbation"] <= EPS + 1e-6
    assert list(r["autoattack_per_attack"]) == ALL
    assert r["autoattack_acc"] == r["autoattack_per_attack"]["square"]
    assert r["autoattack_acc"] <= r["pgd_sat_acc"] + 100.0 / N
    sq = r["attacks"]["square"]
    assert sq["attacks"] == ["square"] and sq["n_queries"] == FAST["n_queries"]
    assert r["clean_acc"] >= r["square_acc"]
    with pytest.raises(ev.UserError, match="implementation"):
        ev.evaluate(trained_digits_model, attacks=["clean"], n_examples=4, autoattack="torch")


def test_evaluate_cli_takes_autoattack(tmp_path, trained_digits_model, capsys):
    from rslad_tf.common.errors import run_cli

    path = str(tmp_path / "m.keras")
    trained_digits_model.save(path)
    out = tmp_path / "eval.json"
    code = run_cli(cli.main, [path, "--attacks", "clean,square", "--n-examples", "8",
                             "--autoattack", "native", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    written = json.loads(out.read_text())
    assert written["autoattack_impl"] == "native"
    assert written["attacks"]["square"]["standard"] is True
    code = run_cli(cli.main, [path, "--autoattack", "torch"])
    assert code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_standard_version_agrees_with_the_reference_on_96_points(saved_model):
    from rslad_tf.evaluation import verify_autoattack as verify

    result = verify.verify(saved_model, n_examples=96, batch_size=96)
    assert result["final"]["same_verdict"] >= 0.95
    assert result["acc_gap_pp"] <= 3 * 100.0 / 96
