"""TensorFlow's oneDNN kernels (`rslad_tf.common.onednn`): which models meet their
weight-gradient bug, on which CPUs TensorFlow runs the kernels and oneDNN runs the code
that has the bug, the guard that refuses to train those models there, the local
pipeline's switch, and in child processes the bug itself (the calibration) next to exact
gradients and training for the digits models the demo trains with the kernels."""

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


EPYC_AVX2 = frozenset({"avx", "avx2", "fma"})  # the AMD VM: no AVX-512, no VNNI
ALDER_LAKE = EPYC_AVX2 | {"avx_vnni"}  # TensorFlow's default on, AVX2 code
XEON_AVX512 = EPYC_AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}


def _on_cpu(monkeypatch, flags, switch=None, cap=None):
    monkeypatch.setattr(onednn, "cpu_flags", lambda: flags)
    monkeypatch.setattr(onednn, "is_x86", lambda: True)
    monkeypatch.setattr(onednn.platform, "system", lambda: "Linux")
    for name, value in ((onednn.TENSORFLOW_SWITCH, switch),
                        (onednn.ISA_CAP_VARIABLES[0], cap)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    for name in onednn.ISA_CAP_VARIABLES[1:]:
        monkeypatch.delenv(name, raising=False)


def test_which_cpus_run_the_kernels_and_their_avx2_code(monkeypatch):
    """TensorFlow's rule: the switch when it reads 0/1/false/true, else on for VNNI, BF16
    or AMX CPUs; oneDNN's AVX2 code without the four AVX-512 core features or under a cap
    below them."""
    _on_cpu(monkeypatch, EPYC_AVX2)
    assert not onednn.tensorflow_kernels_on() and onednn.avx2_kernels()
    _on_cpu(monkeypatch, ALDER_LAKE)
    assert onednn.tensorflow_kernels_on() and onednn.avx2_kernels()
    _on_cpu(monkeypatch, XEON_AVX512)
    assert onednn.tensorflow_kernels_on() and not onednn.avx2_kernels()
    for value, expected in (("1", True), ("TRUE", True), ("0", False), ("false", False),
                            ("yes", True)):  # TensorFlow falls back to its default
        _on_cpu(monkeypatch, XEON_AVX512, switch=value)
        assert onednn.tensorflow_kernels_on() is expected, value
    _on_cpu(monkeypatch, EPYC_AVX2, switch="true")
    assert onednn.tensorflow_kernels_on()
    for cap, expected in (("AVX2", True), ("avx2_vnni", True), ("AVX512_CORE", False),
                          ("ALL", False)):
        _on_cpu(monkeypatch, XEON_AVX512, cap=cap)
        assert onednn.avx2_kernels() is expected, cap
    monkeypatch.setattr(onednn, "is_x86", lambda: False)
    assert not onednn.avx2_kernels() and not onednn.tensorflow_kernels_on()


def test_the_rule_matches_tensorflows_own_answer():
    """In this process (the switch as the test run left it), our rule says what TensorFlow
    decided when it was imported; the child processes below check the switch's values."""
    from tensorflow.python.util import _pywrap_util_port

    if onednn.TENSORFLOW_SWITCH in os.environ:
        pytest.skip("the switch is set here; the child processes check its values")
    assert onednn.tensorflow_kernels_on() == bool(_pywrap_util_port.IsMklEnabled())


def test_training_a_hazardous_model_under_the_kernels_is_refused(monkeypatch):
    student = models.create("small_cnn", 10, input_shape=(8, 8, 1), width=4)
    _on_cpu(monkeypatch, EPYC_AVX2)
    onednn.check_tensorflow_training(_narrow_resnet())  # kernels off: nothing to refuse
    _on_cpu(monkeypatch, XEON_AVX512, switch="1")
    onednn.check_tensorflow_training(_narrow_resnet())  # AVX-512 code: right
    _on_cpu(monkeypatch, EPYC_AVX2, switch="0")
    onednn.check_tensorflow_training(_narrow_resnet())
    _on_cpu(monkeypatch, EPYC_AVX2, switch="1")
    onednn.check_tensorflow_training(student)
    with pytest.raises(UserError) as info:
        onednn.check_tensorflow_training(_narrow_resnet())
    message = str(info.value)
    assert message.startswith("TensorFlow's oneDNN kernels (TF_ENABLE_ONEDNN_OPTS=1) compute "
                              "wrong weight gradients on CPUs without AVX-512")
    assert "set TF_ENABLE_ONEDNN_OPTS=0 to train this model" in message
    assert "\n" not in message
    for flags, cap in ((ALDER_LAKE, None), (XEON_AVX512, "AVX2")):
        _on_cpu(monkeypatch, flags, cap=cap)
        with pytest.raises(UserError, match=r"\(on by default on this CPU\)"):
            onednn.check_tensorflow_training(_narrow_resnet())


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
from tensorflow.python.util import _pywrap_util_port

tf.config.threading.set_intra_op_parallelism_threads(1)
sys.path.insert(0, sys.argv[2])
from rslad_tf.common import onednn
from test_onednn import sat_steps, weight_gradient_error

print("policy", int(onednn.tensorflow_kernels_on()), int(_pywrap_util_port.IsMklEnabled()),
      int(onednn.avx2_kernels()), flush=True)
if sys.argv[3] != "hazard-only":
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


def _start_child(tmp_path, name, switch, *, cap=None, hazard_only=False):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    env[onednn.TENSORFLOW_SWITCH] = switch
    for variable in onednn.ISA_CAP_VARIABLES:
        env.pop(variable, None)
    if cap:
        env[onednn.ISA_CAP_VARIABLES[0]] = cap
    path = tmp_path / f"{name}.npz"
    child = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(path), os.path.dirname(os.path.abspath(__file__)),
         "hazard-only" if hazard_only else "all"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return child, path


def _finish(child):
    stdout, stderr = child.communicate(timeout=300)
    lines = stdout.splitlines()
    policy = [[int(v) for v in line.split()[1:]] for line in lines if line.startswith("policy")]
    errors = [float(line.split()[1]) for line in lines if line.startswith("error ")]
    return policy[0] if policy else None, errors, child.returncode, stderr[-2000:]


@pytest.mark.skipif(not onednn.is_x86(), reason="oneDNN's AVX2 code runs on x86 only")
def test_the_kernels_get_the_hazard_wrong_and_the_digits_models_right(tmp_path):
    """Three child processes. Kernels off: the narrow 1x1 stride-2 weight gradient stays
    within 1e-5 of float64 in 8 calls (the control). Kernels on: a 3x3 convolution, a 1x1
    one on 8 channels and a stride-1 one are within 1e-5 of float64, and two SAT steps of a
    width-4 digits student end at the kernels-off weights; the narrow gradient then comes
    out far from float64 in some of 8 calls, or the process dies of the heap it corrupted,
    where oneDNN runs its AVX2 code, and is right where it runs its AVX-512 code (what the
    guard relies on to let such CPUs train). Kernels on and oneDNN capped to AVX2: the
    narrow gradient goes wrong or kills the process on any x86 CPU with AVX2 (the bug the
    guard and the switch's list are for). Each child reports our rule of when the kernels
    are on next to TensorFlow's own answer."""
    children = {"off": _start_child(tmp_path, "off", "0"),
                "on": _start_child(tmp_path, "on", "1"),
                "capped": _start_child(tmp_path, "capped", "1", cap="AVX2", hazard_only=True)}
    done = {name: _finish(child) for name, (child, _) in children.items()}
    assert done["off"][0][:2] == [0, 0], done["off"]
    assert done["on"][0][:2] == [1, 1], done["on"]
    assert done["capped"][0] == [1, 1, 1], done["capped"]
    for name in ("off", "on"):
        assert children[name][1].exists(), done[name]
    off = np.load(children["off"][1], allow_pickle=True)
    on = np.load(children["on"][1], allow_pickle=True)
    assert max(on["errors"]) < 1e-5 and max(off["errors"]) < 1e-5
    num = sum(float(np.sum((a - b) ** 2)) for a, b in zip(on["weights"], off["weights"]))
    den = sum(float(np.sum(b ** 2)) for b in off["weights"])
    assert (num / den) ** 0.5 < 1e-5
    _, errors, returncode, _ = done["off"]
    assert returncode == 0 and len(errors) == 8 and max(errors) < 1e-5, done["off"]

    def wrong_or_dead(result):
        # Killed inside the kernel (SIGABRT from malloc's checks, or SIGSEGV), or wrong.
        _, errors, returncode, _ = result
        return returncode in (-6, -11) or (bool(errors) and max(errors) > 0.05)

    assert wrong_or_dead(done["capped"]), done["capped"]
    if done["on"][0][2]:  # this CPU runs the AVX2 code
        assert wrong_or_dead(done["on"]), done["on"]
    else:
        _, errors, returncode, _ = done["on"]
        assert returncode == 0 and len(errors) == 8 and max(errors) < 1e-5, done["on"]
