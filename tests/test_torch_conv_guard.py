"""The torch backend's guard against oneDNN's strided 1x1 weight-gradient bug
(`rslad_tf.backends.torch_backend`, docs/backends.md).

oneDNN's x86 kernel for the weight gradient of a 1x1 stride-2 convolution on a
channels-last input with fewer channels than its register block writes past its workspace
(uxlfoundation/oneDNN#6035). Keras' torch backend passes channels-last views, so a ResNet
narrower than 16 meets it: on this project's AVX2 machine, two `fit` steps of a width-4
ResNet-18 under torch 2.13 corrupted the heap (double free, segmentation fault, or both
threads spinning in the kernel until a timeout) before the guard, in 4 runs of 4.

Here the guarded update of such a student is compared with the same two steps taken with
oneDNN off everywhere (PyTorch's own convolution kernels, an independent implementation):
4.6e-7 apart. With the guard taken out, the same test on the same machine failed with an
update 3.0e-2 away (wrong weight gradients, no crash that time).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPDATE_RTOL = 1e-4

_WORKER = r"""
import sys
import numpy as np
import keras, torch
from rslad_tf import models
from rslad_tf.backends import torch_backend
from rslad_tf.methods import NaturalModel

torch.set_num_threads(2)
student = models.create("resnet18", 10, input_shape=(16, 16, 3), base_width=4)
from rslad_tf.common import onednn
assert onednn.torch_weight_gradient_hazard(student)
rng = np.random.default_rng(0)
start = [rng.normal(0.0, 0.2, tuple(w.shape)).astype("float32") for w in student.weights]
x = rng.uniform(0.0, 1.0, (16, 16, 16, 3)).astype("float32")
y = rng.integers(0, 10, 16).astype("int32")

def two_steps():
    student.set_weights(start)
    method = NaturalModel(student, weight_decay=2e-4)
    method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    method.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return [w.copy() for w in student.get_weights()]

guarded = two_steps()
torch.backends.mkldnn.enabled = False
native = two_steps()
names = [w.path for w in student.weights]
np.savez(sys.argv[1], start=np.array(start, dtype=object), guarded=np.array(guarded, dtype=object),
         native=np.array(native, dtype=object), names=np.array(names))
"""


def _relative(update, reference):
    num = sum(float(np.sum((u - r) ** 2)) for u, r in zip(update, reference))
    den = sum(float(np.sum(r ** 2)) for r in reference)
    return (num / den) ** 0.5


def test_the_guard_finds_narrow_strided_pointwise_convolutions():
    """A ResNet-18 narrower than 16 has 1x1 stride-2 shortcuts on too few channels; at
    width 16 and in the 3x3-only digits CNN there is none."""
    from rslad_tf import models
    from rslad_tf.common.onednn import torch_weight_gradient_hazard

    narrow = models.create("resnet18", 10, input_shape=(16, 16, 3), base_width=4)
    wide = models.create("resnet18", 10, input_shape=(16, 16, 3), base_width=16)
    cnn = models.create("small_cnn", 10, input_shape=(8, 8, 1), width=4)
    assert torch_weight_gradient_hazard(narrow)
    assert not torch_weight_gradient_hazard(wide)
    assert not torch_weight_gradient_hazard(cnn)


def test_a_narrow_resnet_trains_exactly_on_torch(tmp_path):
    """Two SGD steps of a width-4 ResNet-18 through `fit` on the torch backend: the update
    (all weights together) within UPDATE_RTOL of the same steps with PyTorch's own
    convolutions. Calibration: the reference update with the narrow shortcut kernels left
    unchanged (their weight gradient lost, what the bug corrupts) misses the tolerance by
    far (3.9e-2 here)."""
    out = tmp_path / "weights.npz"
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=ROOT)
    # A guard against the hang the bug causes, not a speed check (about 20 s alone).
    done = subprocess.run([sys.executable, "-c", _WORKER, str(out)], cwd=ROOT, text=True,
                          capture_output=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    data = np.load(out, allow_pickle=True)
    start, guarded, native = (list(data[k]) for k in ("start", "guarded", "native"))
    names = list(data["names"])
    update = [g - s for g, s in zip(guarded, start)]
    reference = [n - s for n, s in zip(native, start)]
    error = _relative(update, reference)
    assert error < UPDATE_RTOL, error

    narrow = {i for i, n in enumerate(names) if "shortcut__0" in n and "layer2__0" in n}
    assert narrow, names  # the 4-channel stride-2 shortcut of the second stage
    lost = [np.zeros_like(r) if i in narrow else r for i, r in enumerate(reference)]
    assert _relative(lost, reference) > 10 * UPDATE_RTOL
