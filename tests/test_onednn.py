"""TensorFlow's oneDNN kernels (`rslad_tf.common.onednn`): which models meet their
weight-gradient bug, the guard that refuses to train those under them, the local
pipeline's switch, and in a process with the kernels on, the bug itself (the calibration)
next to exact gradients and training for the digits models the demo trains with them."""

import os
import subprocess
import sys

import numpy as np
import pytest

from rslad_tf import models
from rslad_tf.common import onednn
from rslad_tf.common.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _narrow_resnet():
    return models.create("resnet18", 10, input_shape=(16, 16, 3), base_width=4)


def test_which_architectures_have_strided_pointwise_convolutions():
    """small_cnn and MobileNetV2 have none at any width (the list the switch trusts); a
    ResNet-18's 1x1 stride-2 shortcuts are hazards for TensorFlow below 8 input channels,
    for PyTorch below and off multiples of 16."""
    for model in (models.create("small_cnn", 10, input_shape=(8, 8, 1), width=4),
                  models.create("small_cnn", 10, input_shape=(8, 8, 1), width=64),
                  models.create("mobilenetv2", 10, input_shape=(32, 32, 3))):
        assert onednn.strided_pointwise_convs(model) == []
    assert set(onednn.ARCHITECTURES_WITHOUT_STRIDED_POINTWISE) == {"small_cnn", "mobilenetv2"}
    narrow = _narrow_resnet()
    assert sorted(c for _, c in onednn.strided_pointwise_convs(narrow)) == [4, 8, 16]
    assert "(1x1, stride 2, 4 input channels)" in onednn.tensorflow_weight_gradient_hazard(narrow)
    assert onednn.torch_weight_gradient_hazard(narrow)
    wider = models.create("resnet18", 10, input_shape=(16, 16, 3), base_width=8)
    assert onednn.tensorflow_weight_gradient_hazard(wider) is None  # 8, 16, 32 channels
    assert onednn.torch_weight_gradient_hazard(wider)  # 8 is no multiple of 16
    import keras

    class OwnConv(keras.layers.Conv2D):  # a user's subclass is still a convolution
        pass

    inputs = keras.Input((8, 8, 4))
    own = keras.Model(inputs, OwnConv(8, 1, strides=2)(inputs))
    assert [c for _, c in onednn.strided_pointwise_convs(own)] == [4]
    assert onednn.safe_for_tensorflow_kernels(["small_cnn", "mobilenetv2"])
    assert not onednn.safe_for_tensorflow_kernels(["small_cnn", "resnet18"])
    assert not onednn.safe_for_tensorflow_kernels([])


def test_training_a_hazardous_model_under_the_kernels_is_refused(monkeypatch):
    monkeypatch.delenv(onednn.TENSORFLOW_SWITCH, raising=False)
    onednn.check_tensorflow_training(_narrow_resnet())  # kernels off: nothing to refuse
    monkeypatch.setenv(onednn.TENSORFLOW_SWITCH, "1")
    onednn.check_tensorflow_training(models.create("small_cnn", 10, input_shape=(8, 8, 1),
                                                   width=4))
    with pytest.raises(UserError) as info:
        onednn.check_tensorflow_training(_narrow_resnet())
    message = str(info.value)
    assert message.startswith("TF_ENABLE_ONEDNN_OPTS=1: TensorFlow's oneDNN kernels compute "
                              "wrong weight gradients")
    assert "unset TF_ENABLE_ONEDNN_OPTS to train this model" in message
    assert "\n" not in message


def test_the_local_pipeline_switches_the_kernels_on_for_digits_only():
    from pipelines import rslad_pipeline as rp

    assert rp.trained_architectures(rp.LOCAL_PRESETS["digits"]) == ["small_cnn"]
    assert rp.trained_architectures(rp.LOCAL_PRESETS["digits-tiny"]) == ["small_cnn"]
    cifar = rp.trained_architectures({"dataset": "cifar10"})
    assert cifar == ["resnet18", "resnet50", "wrn34_10"]
    assert not onednn.safe_for_tensorflow_kernels(cifar)
    grid = dict(rp.LOCAL_PRESETS["digits"], grid='[{"model": "resnet18"}]')
    assert "resnet18" in rp.trained_architectures(grid)
    saved = os.environ.pop(onednn.TENSORFLOW_SWITCH, None)
    try:
        with rp._step_environment(onednn_kernels=True):
            assert os.environ[onednn.TENSORFLOW_SWITCH] == "1"
        assert onednn.TENSORFLOW_SWITCH not in os.environ
        os.environ[onednn.TENSORFLOW_SWITCH] = "0"  # the user's value wins
        with rp._step_environment(onednn_kernels=True):
            assert os.environ[onednn.TENSORFLOW_SWITCH] == "0"
    finally:
        os.environ.pop(onednn.TENSORFLOW_SWITCH, None)
        if saved is not None:
            os.environ[onednn.TENSORFLOW_SWITCH] = saved


_WORKER = r"""
import os
import sys
import numpy as np
import tensorflow as tf
import keras

tf.config.threading.set_intra_op_parallelism_threads(1)
print("started", flush=True)
sys.path.insert(0, sys.argv[2])
from test_onednn import sat_steps, weight_gradient_error

weights = sat_steps()
errors = [weight_gradient_error(4, 3, 2), weight_gradient_error(8, 1, 2),
          weight_gradient_error(4, 1, 1)]
np.savez(sys.argv[1], errors=np.array(errors), weights=np.array(weights, dtype=object))
print("saved", flush=True)
# Last, the hazard: the kernel writes past its buffer, so on some calls the gradient comes
# out right, on others wrong, or the process dies. Report each call as it comes, then
# leave before the heap is used again.
for _ in range(8):
    print("error", weight_gradient_error(4, 1, 2), flush=True)
os._exit(0)
"""


def weight_gradient_error(cin, kernel, stride):
    """Relative error against float64 of the weight gradient of a stride-``stride``
    ``kernel`` x ``kernel`` convolution with ``cin`` input channels."""
    import tensorflow as tf

    rng = np.random.default_rng(cin * 100 + kernel * 10 + stride)
    x = rng.standard_normal((8, 8, 8, cin))
    w = rng.standard_normal((kernel, kernel, cin, 8))
    grads = []
    for dtype in ("float32", "float64"):
        wt = tf.constant(w.astype(dtype))
        with tf.GradientTape() as tape:
            tape.watch(wt)
            y = tf.nn.conv2d(tf.constant(x.astype(dtype)), wt, stride, "SAME")
            loss = tf.reduce_sum(y * y)
        grads.append(tape.gradient(loss, wt).numpy())
    return float(np.abs(grads[0] - grads[1]).max() / np.abs(grads[1]).max())


def sat_steps():
    """The weights of a width-4 digits student after two SAT steps from a fixed start."""
    import keras

    from rslad_tf.methods import SATModel

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    student = models.create("small_cnn", 10, input_shape=(8, 8, 1), width=4)
    x = rng.uniform(0.0, 1.0, (64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 64).astype("int32")
    method = SATModel(student, epsilon=0.2, step_size=0.05, attack_steps=3,
                      attack_start="none", weight_decay=2e-4)
    method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    method.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    return [w.numpy() for w in student.weights]


def test_the_kernels_get_the_hazard_wrong_and_the_digits_models_right(tmp_path):
    """In a child process with the kernels on: a 3x3 convolution, a 1x1 one on 8 channels
    and a stride-1 one have weight gradients within 1e-5 of float64, and two SAT steps of
    a width-4 digits student end at the weights this process (kernels off) reaches; then
    the weight gradient of a 1x1 stride-2 convolution on 4 channels comes out far from
    float64 in some of 8 calls, or the process dies of the heap it corrupted (the bug the
    guard and the switch's list are for)."""
    if onednn.tensorflow_kernels_on():
        pytest.skip("this process runs with the kernels on: nothing to compare with")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    env[onednn.TENSORFLOW_SWITCH] = "1"
    path = tmp_path / "on.npz"
    child = subprocess.run([sys.executable, "-c", _WORKER, str(path),
                            os.path.dirname(os.path.abspath(__file__))], env=env,
                           capture_output=True, text=True, timeout=300)
    assert "saved" in child.stdout, child.stderr[-2000:]
    data = np.load(path, allow_pickle=True)
    assert max(data["errors"]) < 1e-5
    off = sat_steps()
    num = sum(float(np.sum((a - b) ** 2)) for a, b in zip(data["weights"], off))
    den = sum(float(np.sum(b ** 2)) for b in off)
    assert (num / den) ** 0.5 < 1e-5
    errors = [float(line.split()[1]) for line in child.stdout.splitlines()
              if line.startswith("error ")]
    # Killed inside the kernel (SIGABRT from malloc's checks, or SIGSEGV), or wrong.
    assert child.returncode in (-6, -11) or max(errors) > 0.05, (
        child.returncode, errors, child.stderr[-2000:])
