"""CIFAR architectures: parameter counts of the paper, shapes, BatchNorm settings,
normalisation layer, `.keras` round trips under TensorFlow and under Keras' torch backend."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from rslad_tf.models import create
from rslad_tf.models.wrn import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

MODELS_DIR = pathlib.Path(__file__).resolve().parents[1] / "rslad_tf" / "models"


def trainable_params(model) -> int:
    """What PyTorch's `sum(p.numel() for p in model.parameters())` counts: BatchNorm moving
    statistics are buffers there, non-trainable weights here."""
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("name, num_classes, expected", [
    ("resnet18", 10, 11_173_962),     # paper: 11.2 M
    ("resnet18", 100, 11_220_132),
    ("mobilenetv2", 10, 2_296_922),   # paper: 2.3 M
    ("mobilenetv2", 100, 2_412_212),
    ("resnet50", 10, 23_520_842),     # black-box surrogate
    # The TRADES teacher as its forward pass computes it; the reference file's unused
    # sub_block1 (721,920 more) is left out: 46.16 M as in the RSLAD paper.
    ("wrn34_10", 10, 46_160_474),
])
def test_parameter_counts(name, num_classes, expected):
    assert trainable_params(create(name, num_classes)) == expected


def test_wrn70_16_parameter_count():
    """DeepMind WRN-70-16 for CIFAR-100: 266,888,756 (266,796,506 for 10 classes, the
    266.8 M usually quoted). About 1 GB of float32 weights; builds in seconds."""
    model = create("wrn70_16", 100)
    assert trainable_params(model) == 266_888_756
    assert model.output_shape == (None, 100)


SMALL = {
    # name: (registry name, classes, builder kwargs); full size where cheap, else reduced
    "resnet18": ("resnet18", 10, {}),
    "mobilenetv2": ("mobilenetv2", 100, {}),
    "resnet50-w16": ("resnet50", 10, {"base_width": 16}),
    "wrn34_10-d10w2": ("wrn34_10", 10, {"depth": 10, "widen_factor": 2}),
    "wrn70_16-d16w2": ("wrn70_16", 100, {"depth": 16, "widen_factor": 2,
                                         "normalization": "cifar100"}),
}


def _inputs(n=2):
    return np.random.default_rng(0).random((n, 32, 32, 3), dtype=np.float32)


@pytest.mark.parametrize("key", sorted(SMALL))
def test_output_shape_and_batchnorm_settings(key):
    name, num_classes, kw = SMALL[key]
    model = create(name, num_classes, **kw)
    logits = keras.ops.convert_to_numpy(model(_inputs(), training=False))
    assert logits.shape == (2, num_classes) and np.isfinite(logits).all()
    bns = [layer for layer in model.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in bns)
    # Weighted layer names must map back to PyTorch paths ("__" <-> "."): no stray dots.
    assert all("." not in layer.name for layer in model.layers)


def test_stride2_padding_is_symmetric_like_pytorch():
    """The first ResNet stride-2 conv sees pixel rows -1..1 (PyTorch padding=1), not 0..2
    (Keras padding="same"): checked on the padded input of layer2's first conv."""
    model = create("resnet18", 10, base_width=8)
    pad = model.get_layer("layer2__0__conv1__pad")
    assert pad.padding == ((1, 1), (1, 1))
    conv = model.get_layer("layer2__0__conv1")
    assert conv.padding == "valid" and conv.strides == (2, 2)
    assert conv.output.shape[1:3] == (16, 16)


@pytest.mark.parametrize("normalization, stats", [
    ("cifar100", (CIFAR100_MEAN, CIFAR100_STD)),
    ("cifar10", (CIFAR10_MEAN, CIFAR10_STD)),
    ("auto", (CIFAR100_MEAN, CIFAR100_STD)),  # 100 classes
])
def test_wrn70_16_normalization_layer(normalization, stats):
    model = create("wrn70_16", 100, depth=10, widen_factor=1, normalization=normalization)
    norm = keras.Model(model.input, model.get_layer("normalize").output)
    x = _inputs()
    mean, std = (np.array(s, dtype=np.float32) for s in stats)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm(x)), (x - mean) / std,
                               atol=1e-5)


def test_wrn70_16_normalization_auto_and_none():
    ten = create("wrn70_16", 10, depth=10, widen_factor=1)  # auto -> CIFAR-10
    norm = keras.Model(ten.input, ten.get_layer("normalize").output)
    x = _inputs()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm(x)),
                               (x - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD), atol=1e-5)
    plain = create("wrn70_16", 100, depth=10, widen_factor=1, normalization=None)
    assert not any(isinstance(layer, keras.layers.Normalization) for layer in plain.layers)
    with pytest.raises(ValueError, match="normalization"):
        create("wrn70_16", 100, depth=10, widen_factor=1, normalization="imagenet")


@pytest.mark.parametrize("name", ["wrn34_10", "wrn70_16"])
def test_wide_resnet_rejects_bad_depth(name):
    with pytest.raises(ValueError, match="6n"):
        create(name, 10, depth=12, widen_factor=1)


def test_models_package_imports_no_tensorflow():
    """docs/design.md: models are pure Keras (keras.layers / keras.ops), no `tf.*`."""
    for path in MODELS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] in ("tensorflow", "torch") for n in names), path


_TORCH_BACKEND_CHECK = r"""
import json, sys
import numpy as np
import keras
import rslad_tf.models  # noqa: F401  (what a user of the toolkit imports)
cases = json.loads(sys.argv[1])
x = np.load(cases["inputs"])
out = {"backend": keras.backend.backend(),
       "tensorflow_imported": "tensorflow" in sys.modules}
for path, expected in cases["models"].items():
    model = keras.saving.load_model(path)
    got = keras.ops.convert_to_numpy(model(x, training=False))
    out[path] = float(np.abs(got - np.load(expected)).max())
print("RESULT " + json.dumps(out))
"""


def test_keras_round_trip_tensorflow_and_torch_backend(tmp_path):
    """Every model saved as .keras reloads with identical predictions here, and within
    float tolerance under KERAS_BACKEND=torch (what the reference AutoAttack runs on)."""
    x = _inputs(3)
    np.save(tmp_path / "inputs.npy", x)
    saved = {}
    for key, (name, num_classes, kw) in sorted(SMALL.items()):
        model = create(name, num_classes, **kw)
        # Non-trivial BatchNorm statistics, so that reloading them is actually checked.
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                c = layer.moving_mean.shape[0]
                layer.moving_mean.assign(np.random.default_rng(1).normal(0, 0.1, c))
                layer.moving_variance.assign(np.random.default_rng(2).uniform(0.5, 1.5, c))
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        path = str(tmp_path / f"{key}.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(reloaded(x, training=False)), expected)
        np.save(tmp_path / f"{key}.npy", expected)
        saved[path] = str(tmp_path / f"{key}.npy")
        keras.backend.clear_session()

    pythonpath = os.pathsep.join([str(MODELS_DIR.parents[1]), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, KERAS_BACKEND="torch", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=pythonpath, OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-c", _TORCH_BACKEND_CHECK,
         json.dumps({"inputs": str(tmp_path / "inputs.npy"), "models": saved})],
        capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    print("torch backend, max |logit diff|:", result)
    assert result["backend"] == "torch"
    assert not result["tensorflow_imported"]
    for path in saved:
        assert result[path] < 1e-4, (path, result[path])
