"""Reference AutoAttack through Keras' torch backend, in a child process.

The child loads the same .keras file under torch; these tests check that the two frameworks
agree exactly on the evaluated points, that AutoAttack's own robust flags equal the
TensorFlow model's re-classification of the returned images, that the child never imports
TensorFlow, and that running the attacks one at a time (to record the flags after each)
gives what one combined AutoAttack call gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rslad_tf.attacks.autoattack import reference as reference
from rslad_tf.evaluation.core import predict_labels

EPS = 0.2
N = 24
# Few iterations / queries: exercises all four attacks' code paths in seconds.
FAST = {"n_iter": 10, "n_queries": 100, "n_target_classes": 2}


@pytest.fixture(scope="module")
def saved_model(trained_digits_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("aa") / "model.keras")
    trained_digits_model.save(path)
    return path


@pytest.fixture(scope="module")
def points(digits_data):
    _, (x, y) = digits_data
    return x[:N], y[:N]


@pytest.fixture(scope="module")
def fast_run(saved_model, points):
    x, y = points
    lines = []
    out = reference.run(saved_model, x, y, eps=EPS, version="custom",
                        attacks=["apgd-ce", "apgd-t", "fab-t", "square"], seed=0, batch_size=16,
                        options=FAST, log=lines.append)
    out["log"] = lines
    return out


def test_torch_backend_reproduces_tensorflow_clean_predictions(fast_run, trained_digits_model,
                                                               points):
    x, y = points
    tf_logits = np.asarray(trained_digits_model(x, training=False))
    np.testing.assert_array_equal(np.argmax(fast_run["clean_logits"], -1),
                                  predict_labels(trained_digits_model, x))
    np.testing.assert_allclose(fast_run["clean_logits"], tf_logits, atol=1e-4, rtol=1e-4)
    assert fast_run["keras_backend"] == "torch"
    assert fast_run["tensorflow_imported"] is False


def test_robust_flags_equal_tensorflow_reclassification(fast_run, trained_digits_model, points):
    x, y = points
    x_adv = fast_run["x_adv"]
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert np.max(np.abs(x_adv - x)) <= EPS + 1e-5
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    tf_correct = predict_labels(trained_digits_model, x_adv) == y
    np.testing.assert_array_equal(tf_correct, fast_run["robust"])
    # A naturally trained digits CNN breaks at eps 0.2: the attack must have done something.
    clean = np.argmax(fast_run["clean_logits"], -1) == y
    assert fast_run["robust"].sum() < clean.sum()
    # Points still robust are returned unchanged.
    np.testing.assert_array_equal(x_adv[fast_run["robust"]], x[fast_run["robust"]])


def test_per_attack_flags_shrink_and_end_at_the_final_flags(fast_run, points):
    _, y = points
    assert fast_run["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    clean = np.argmax(fast_run["clean_logits"], -1) == y
    previous = clean
    for name in fast_run["attacks"]:
        flags = fast_run["per_attack"][name]
        assert not np.any(flags & ~previous), f"{name} revived a broken point"
        previous = flags
    np.testing.assert_array_equal(previous, fast_run["robust"])
    assert set(fast_run["seconds"]) == set(fast_run["attacks"])
    assert any("robust accuracy after square" in line for line in fast_run["log"])
    assert fast_run["versions"]["pyautoattack"] == "0.2.0"


_COMBINED = textwrap.dedent("""
    import json, sys
    import numpy as np, torch, keras
    import rslad_tf.models
    from pyautoattack import AutoAttack
    torch.set_num_threads(1)
    path, data = sys.argv[1], np.load(sys.argv[2])
    model = keras.saving.load_model(path, compile=False)
    class Net(torch.nn.Module):
        def __init__(self, m):
            super().__init__(); self.m = m
        def forward(self, x):
            return self.m(x.permute(0, 2, 3, 1), training=False)
    aa = AutoAttack(Net(model), norm="Linf", eps=float(data["eps"]), version="custom",
                    device="cpu", seed=0, attacks=["apgd-ce", "apgd-t"])
    for a in (aa.apgd, aa.apgd_targeted):
        a.n_iter = a.n_iter_orig = 10
        a.n_iter_2, a.n_iter_min, a.size_decr = 2, 1, 1
    aa.apgd_targeted.n_target_classes = 2
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(data["y"]).long()
    x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=16)
    print(json.dumps({"robust": (y_adv == y).tolist(),
                      "x_adv": x_adv.permute(0, 2, 3, 1).flatten().tolist()}))
""")


def test_one_attack_at_a_time_equals_one_combined_call(saved_model, points, tmp_path):
    """The child runs the version's attacks one by one on the points still robust, to record
    the flags after each; that must be exactly what one AutoAttack call does."""
    x, y = points
    ours = reference.run(saved_model, x, y, eps=EPS, version="custom",
                         attacks=["apgd-ce", "apgd-t"], seed=0, batch_size=16,
                         options={"n_iter": 10, "n_target_classes": 2}, threads=1)
    data = str(tmp_path / "data.npz")
    np.savez(data, x=x, y=y.astype(np.int64), eps=np.float64(EPS))
    env = dict(os.environ, KERAS_BACKEND="torch",
               PYTHONPATH=os.pathsep.join([reference._package_root(),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _COMBINED, saved_model, data], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    combined = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(ours["robust"], np.array(combined["robust"]))
    np.testing.assert_allclose(ours["x_adv"].flatten(), np.array(combined["x_adv"]), atol=0)


def test_arguments_are_checked_before_any_process_starts(saved_model, points):
    x, y = points
    with pytest.raises(ValueError, match="version"):
        reference.run(saved_model, x, y, eps=EPS, version="plus")
    with pytest.raises(ValueError, match="needs a list"):
        reference.run(saved_model, x, y, eps=EPS, version="custom")
    with pytest.raises(ValueError, match="unknown AutoAttack attack"):
        reference.run(saved_model, x, y, eps=EPS, version="custom", attacks=["pgd"])
    with pytest.raises(ValueError, match="only be chosen"):
        reference.run(saved_model, x, y, eps=EPS, attacks=["square"])
    with pytest.raises(ValueError, match="option"):
        reference.run(saved_model, x, y, eps=EPS, options={"steps": 3})
    with pytest.raises(FileNotFoundError):
        reference.run(saved_model + ".missing", x, y, eps=EPS)
    with pytest.raises(ValueError, match="expected images"):
        reference.run(saved_model, x[0], y, eps=EPS)
    assert reference.main([]) == 2


def test_a_failing_child_reports_its_error(tmp_path, points):
    x, y = points
    bad = tmp_path / "bad.keras"
    bad.write_text("not a zip file")
    with pytest.raises(reference.ReferenceAttackError, match="exit"):
        reference.run(str(bad), x[:2], y[:2], eps=EPS, version="custom", attacks=["apgd-ce"])


@pytest.mark.slow
def test_standard_version_on_a_few_points(saved_model, points, trained_digits_model):
    x, y = points[0][:12], points[1][:12]
    out = reference.run(saved_model, x, y, eps=EPS, seed=0, batch_size=16)
    assert out["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    np.testing.assert_array_equal(predict_labels(trained_digits_model, out["x_adv"]) == y,
                                  out["robust"])


def test_the_toolkit_side_imports_no_torch():
    code = ("import sys, rslad_tf.evaluation.suite, rslad_tf.evaluation.report, "
            "rslad_tf.attacks.autoattack.reference; "
            "assert 'torch' not in sys.modules and 'pyautoattack' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=reference._package_root())
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_the_child_path_is_the_folder_that_holds_the_package():
    # The child runs reference.py as a script with this folder on PYTHONPATH; after a move
    # of the module a wrong count of parent folders would put a package folder there.
    root = reference._package_root()
    assert os.path.isfile(os.path.join(root, "rslad_tf", "__init__.py"))
