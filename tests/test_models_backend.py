"""Models are pure Keras: a saved student loads and predicts the same under the torch backend."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rslad_tf import models

CHILD = textwrap.dedent("""
    import os, sys, json
    os.environ["KERAS_BACKEND"] = "torch"
    import numpy as np, keras
    import rslad_tf.models  # registers nothing TF-specific; must not import tensorflow
    assert "tensorflow" not in sys.modules, "rslad_tf.models imported tensorflow"
    model = keras.saving.load_model(sys.argv[1], safe_mode=True)
    x = np.load(sys.argv[2])
    out = keras.ops.convert_to_numpy(model(x, training=False))
    np.save(sys.argv[3], out)
    print(json.dumps({"backend": keras.backend.backend()}))
""")


def test_models_package_imports_no_tensorflow():
    code = ("import sys; import rslad_tf.models, rslad_tf.data; "
            "sys.exit(1 if 'tensorflow' in sys.modules else 0)")
    env = dict(os.environ, KERAS_BACKEND="torch")
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


@pytest.mark.parametrize("name,kwargs", [("small_cnn", {"width": 8})])
def test_saved_model_predicts_identically_under_torch(name, kwargs, tmp_path):
    model = models.create(name, 10, input_shape=(8, 8, 1), **kwargs)
    # Non-trivial BatchNorm statistics, so inference mode matters.
    for w in model.weights:
        if "moving_variance" in w.path:
            w.assign(np.random.default_rng(0).uniform(0.5, 2.0, w.shape).astype("float32"))
        elif "moving_mean" in w.path:
            w.assign(np.random.default_rng(1).normal(size=w.shape).astype("float32"))
    path = str(tmp_path / "m.keras")
    model.save(path)
    x = np.random.default_rng(2).uniform(size=(16, 8, 8, 1)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run([sys.executable, "-c", CHILD, path, str(tmp_path / "x.npy"),
                             str(tmp_path / "y.npy")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["backend"] == "torch"
    torch_logits = np.load(tmp_path / "y.npy")
    tf_logits = np.asarray(model(x, training=False))
    np.testing.assert_allclose(torch_logits, tf_logits, atol=1e-5)
    assert (torch_logits.argmax(-1) == tf_logits.argmax(-1)).all()


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown model"):
        models.create("resnet9000", 10)
    assert "small_cnn" in models.available()
