"""What the benchmark measures: the workload profiles and the option sets it compares.

Profiles: ``cpu`` (default without a GPU): digits-size models, small_cnn teacher width 64,
student width 16, batch 128, 8x8x1 images (the embedded digits training set, no
augmentation, as its preset); ``gpu`` (default with a GPU): ResNet-18 student, WRN-34-10
teacher, batch 128, random 32x32x3 data (CIFAR's pad-4 crop + flip augmentation), no
download.

Optimised configuration per device (`OPTIMISED`):

- CPU: the exact fast paths only: the training set on the device, the teacher soft-label
  cache, and the attack cut into 2 shards that run at the same time, one core each
  (`rslad_tf.attacks.engine.pgd_graph`), in a process whose thread pools are laid out for
  them (inter-op 2, intra-op cores / 2; `rslad_tf.common.runtime.configure`). No XLA (XLA's CPU
  convolution gradients were 3-4x slower than the plain graph), and neither bfloat16 nor
  the folded attack (a few percent at most here; the ablation rows show them).
- GPU: device data and the cache, plus XLA for the training step and the evaluation
  attack, the attack with BatchNorm folded into the convolutions, and bfloat16 mixed
  precision for the student in training (evaluation stays float32).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Profile:
    """One benchmark workload: the models, the data and the attack of the timed step."""

    name: str
    image_shape: tuple
    num_classes: int
    student: tuple  # (model name, kwargs)
    teacher: tuple
    batch_size: int
    num_examples: int  # training set size (the cache and the device data hold this many)
    epsilon: float
    attack_steps: int
    augment_padding: int
    augment_flip: bool
    eval_batch_size: int
    eval_steps: int = 20
    real_digits: bool = False
    cache_buckets: int = 4  # granularity of the teacher call on cache misses (SoftLabelCache)


PROFILES = {
    "cpu": Profile("cpu-digits", (8, 8, 1), 10, ("small_cnn", {"width": 16}),
                   ("small_cnn", {"width": 64}), batch_size=128, num_examples=1347,
                   epsilon=0.2, attack_steps=10, augment_padding=0, augment_flip=False,
                   eval_batch_size=256, real_digits=True),
    "gpu": Profile("gpu-cifar", (32, 32, 3), 10, ("resnet18", {}), ("wrn34_10", {}),
                   batch_size=128, num_examples=50000, epsilon=8 / 255, attack_steps=10,
                   augment_padding=4, augment_flip=True, eval_batch_size=256),
}

# The profiles of the side-by-side comparison with the PyTorch reference (`peers`):
# "gpu" is the GPU profile without in-batch augmentation (the JAX and torch backends do not
# have it yet; the reference then does without it too); "cpu-paper" is a new user's
# paper-scale run on a CPU: ResNet-18 student and teacher, batch 32, 10 attack steps, four
# batches per pass (each `fit` pass times the three intervals between its batch ends).
PEER_PROFILES = {
    "gpu": dataclasses.replace(PROFILES["gpu"], name="gpu-cifar-backends", augment_padding=0,
                               augment_flip=False),
    "cpu-paper": Profile("cpu-paper", (32, 32, 3), 10, ("resnet18", {}), ("resnet18", {}),
                         batch_size=32, num_examples=128, epsilon=8 / 255, attack_steps=10,
                         augment_padding=0, augment_flip=False, eval_batch_size=32),
}


def smoke(profile: Profile) -> Profile:
    """`profile` with tiny models (ResNet-18 at width 4; WRN-10-1 for a WRN teacher), batch
    8 and 2 attack steps: a check that every part runs, in seconds on a CPU."""
    teacher = (("wrn34_10", {"depth": 10, "widen_factor": 1}) if profile.teacher[0] == "wrn34_10"
               else ("resnet18", {"base_width": 4}))
    return dataclasses.replace(profile, name=f"{profile.name}-smoke",
                               student=("resnet18", {"base_width": 4}), teacher=teacher,
                               batch_size=8, num_examples=32, attack_steps=2)


# Which fast paths the optimised configuration uses on each device (module docstring).
# CPU: only the exact ones (the same weights as the reference, bit for bit): bfloat16 and
# the folded attack gained at most a few percent here (ablation rows) and change rounding.
OPTIMISED = {
    "cpu": dict(jit=False, mixed="off", device_data=True, cache=True, fold=False, shards=2),
    "gpu": dict(jit=True, mixed="bfloat16", device_data=True, cache=True, fold=True, shards=1),
}


def optimised_options(kind: str) -> dict:
    """The optimised configuration's options on `kind` ("cpu" or "gpu") for this machine."""
    from rslad_tf.common.runtime import cores

    options = dict(OPTIMISED[kind])
    if cores() < 2:
        options["shards"] = 1  # one core: nothing to run the shards side by side
    return options


# The reference configuration: what a straightforward port does (the package docstring).
REFERENCE = dict(jit=False, mixed="off", device_data=False, cache=False, fold=False,
                 host_augment=True, shards=1)


def describe(options: dict) -> str:
    """The options of a configuration in words, for the report."""
    parts = [f"{'XLA' if options.get('jit') else 'no XLA'}",
             "float32" if options.get("mixed", "off") == "off" else options["mixed"],
             "teacher cache" if options.get("cache") else "teacher every step",
             "device data" if options.get("device_data") else "tf.data from host"]
    if options.get("host_augment"):
        parts.append("host augmentation")
    if options.get("fold"):
        parts.append("folded BN attack")
    if options.get("shards", 1) > 1:
        parts.append(f"{options['shards']} attack shards")
    return ", ".join(parts)

