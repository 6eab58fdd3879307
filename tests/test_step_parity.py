"""Step parity of every training method with an independent PyTorch implementation.

For each method, two training steps of our Keras method (built by `train.build_method` from
the digits preset, as `python -m rslad_tf.train` builds it) and two steps of the reference
algorithm written in PyTorch (`tests/torch_reference.py`, which imports nothing from
rslad_tf), from the same weights and the same batch. Compared: the loss of each step
(relative error <= LOSS_RTOL) and each step's update of all trainable weights together,
||dW_ours - dW_ref|| / ||dW_ref|| over the concatenation of every weight's delta
(<= UPDATE_RTOL). The tolerances are calibrated in this file: every deliberately wrong
reference variant (no attack, a wrong reduction, the wrong BatchNorm mode, ...) misses them
by at least CALIBRATION_MARGIN times (docs/parity.md lists the measured errors).

Attack start: ``attack_start="none"`` on both sides (deterministic), except SAT and
TRADES, which start both sides from the same U(-eps, eps) draw: the one our method makes,
recomputed from the seed its generator hands out for that step and handed to the reference
unclipped; each side then clips it or not before the first gradient as its method does
(SAT: Madry's code clips it to [0, 1] first; the other references clip only after the first
step). SAT's run thereby checks the clipped start, TRADES' the unclipped one, each with a
wrong variant that clips the other way. TRADES cannot start at x anyway: its objective
KL(S(x) || S(x')) has an exactly zero gradient at x' = x, so from x the first signed step
would follow rounding noise; and from its reference start x + 0.001 N(0, 1) the first
gradients are still about 1e-7, where float32 rounding (about 4e-9) flips the sign of a few
pixels' first step (measured: 2 of 2048 pixels, 35 after ten steps, a loss error of
8.7e-3), a numerical artefact rather than a method difference. The start types themselves
are checked against the references' by `test_attack_starts_are_the_references`.

Sign flips otherwise: the reference runs in float64, so its signs are exact; a float32
gradient within rounding of zero could flip one pixel's step. On this batch the matching
runs stay at least 240 times below the tolerances (docs/parity.md), so no flip of
consequence occurs; one that mattered would fail the test, not pass silently.
"""

from __future__ import annotations

import dataclasses
import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from rslad_tf import models
from rslad_tf.config import presets
from rslad_tf.data import load_numpy
from rslad_tf.training.fast_paths import dtype_policy
from rslad_tf.training.loop import build_method

torch = pytest.importorskip("torch")  # requirements-dev.txt

# tests/torch_reference.py imports torch: only after the skip above.
import torch_reference as ref  # noqa: E402

LOSS_RTOL = 5e-3
UPDATE_RTOL = 2e-3
# A wrong variant must miss a tolerance by at least this factor (a clear margin).
CALIBRATION_MARGIN = 10.0

# Runs that share a random start instead of starting at x: SAT (the clipped start) and
# TRADES (the unclipped start; its objective has a zero gradient at x' = x). Module docstring.
SHARED_START = "uniform"
SHARED_START_METHODS = ("sat", "trades")

STUDENT_WIDTH = 4
TEACHER_WIDTH = 8
BATCH = 32
STEPS = 2
# Larger than the presets' 2e-4 so that coupled weight decay is visible in the update
# (at 2e-4 it moves the update by less than UPDATE_RTOL; see the "no weight decay" variant).
WEIGHT_DECAY = 5e-3
BLOCKS = ("block1a", "block1b", "block2a", "block2b")
# The learning rate of each method's two steps: the test's own, those its tolerances were
# calibrated at (the digits presets' rates before the study's grid), not the presets' tuned
# ones. A rate is one scalar both sides apply alike; but at the grid's 0.5 for SAT and
# TRADES, whose cross-entropy gradients are about 10x the "mean"-reduced KLs', the second
# step amplified float32 rounding to a 1.1e-2 relative update difference (loss still
# within 2e-4), past UPDATE_RTOL.
LEARNING_RATES = {"natural": 0.05, "sat": 0.05, "trades": 0.05, "ard": 0.5, "iad": 0.05,
                  "rslad": 0.5, "adaad": 0.5, "adaiad": 0.05}


# -- initial state, shared by both frameworks ---------------------------------------------
@functools.lru_cache(maxsize=None)
def initial_state(width: int, seed: int, logit_scale: float) -> dict:
    """Weights of a small_cnn in Keras layout {(layer, attribute): array}: Keras' initial
    weights, BatchNorm parameters and moving statistics drawn away from (1, 0, 0, 1) so that
    the training and inference modes differ (and a mix-up of gamma/beta/mean/variance would
    show), and the classifier scaled by `logit_scale` (logits spread like a trained model's:
    with tau = 30 a near-uniform KL would be lost in float32 rounding)."""
    keras.utils.set_random_seed(seed)
    model = keras_model({}, width)
    rng = np.random.default_rng(seed)
    state = {}
    for name in BLOCKS:
        state[(f"{name}_conv", "kernel")] = model.get_layer(f"{name}_conv").kernel.numpy()
        size = model.get_layer(f"{name}_bn").gamma.shape[0]
        state[(f"{name}_bn", "gamma")] = rng.uniform(0.7, 1.3, size).astype(np.float32)
        state[(f"{name}_bn", "beta")] = rng.normal(0.0, 0.1, size).astype(np.float32)
        state[(f"{name}_bn", "moving_mean")] = rng.normal(0.0, 0.2, size).astype(np.float32)
        state[(f"{name}_bn", "moving_variance")] = rng.uniform(0.5, 2, size).astype(np.float32)
    dense = model.get_layer("logits")
    state[("logits", "kernel")] = dense.kernel.numpy() * logit_scale
    state[("logits", "bias")] = rng.normal(0.0, 0.1, dense.bias.shape[0]).astype(np.float32)
    return state


def student_state():
    return initial_state(STUDENT_WIDTH, 1, 3.0)


def teacher_state():
    return initial_state(TEACHER_WIDTH, 2, 10.0)


@functools.lru_cache(maxsize=1)
def batch():
    x, y = load_numpy("digits", "train")
    return x[:BATCH], y[:BATCH]


def keras_model(state: dict, width: int):
    """A float32 small_cnn (whatever policy an earlier test left) holding `state`."""
    with dtype_policy("float32"):
        model = models.create("small_cnn", 10, input_shape=(8, 8, 1), width=width)
    for (layer, attribute), value in state.items():
        getattr(model.get_layer(layer), attribute).assign(value)
    return model


def keras_snapshot(model) -> dict:
    return {key: getattr(model.get_layer(key[0]), key[1]).numpy().copy()
            for key in student_state()}


def torch_model(state: dict, width: int) -> ref.SmallCNN:
    """The PyTorch twin: HWIO -> OIHW kernels, (in, out) -> (out, in) dense, Keras BatchNorm
    (momentum 0.9 = PyTorch's 0.1, epsilon 1e-5) -> weight, bias, running mean/var."""
    net = ref.SmallCNN(width)

    def put(param, value):
        param.copy_(torch.from_numpy(np.asarray(value, np.float64)))

    with torch.no_grad():
        for i, name in enumerate(BLOCKS):
            put(net.convs[i].weight, state[(f"{name}_conv", "kernel")].transpose(3, 2, 0, 1))
            bn = net.bns[i]
            put(bn.weight, state[(f"{name}_bn", "gamma")])
            put(bn.bias, state[(f"{name}_bn", "beta")])
            put(bn.running_mean, state[(f"{name}_bn", "moving_mean")])
            put(bn.running_var, state[(f"{name}_bn", "moving_variance")])
        put(net.fc.weight, state[("logits", "kernel")].T)
        put(net.fc.bias, state[("logits", "bias")])
    return net


def torch_snapshot(net: ref.SmallCNN) -> dict:
    """The twin's weights back in Keras layout, keyed like `keras_snapshot`."""
    state = {}
    for i, name in enumerate(BLOCKS):
        kernel = net.convs[i].weight.detach().numpy()
        state[(f"{name}_conv", "kernel")] = kernel.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        bn = net.bns[i]
        state[(f"{name}_bn", "gamma")] = bn.weight.detach().numpy()
        state[(f"{name}_bn", "beta")] = bn.bias.detach().numpy()
        state[(f"{name}_bn", "moving_mean")] = bn.running_mean.numpy()
        state[(f"{name}_bn", "moving_variance")] = bn.running_var.numpy()
    state[("logits", "kernel")] = net.fc.weight.detach().numpy().T
    state[("logits", "bias")] = net.fc.bias.detach().numpy()
    return {key: np.array(value, np.float64) for key, value in state.items()}


TRAINABLE = ("kernel", "gamma", "beta", "bias")
# BatchNorm's moving means follow the same convention in both frameworks (the variances do
# not: PyTorch tracks the unbiased batch variance), so their updates are compared too: they
# count the training-mode forward passes, e.g. the ten of a train-mode attack.
MOVING_MEANS = ("moving_mean",)


def flat_update(before: dict, after: dict, attributes=TRAINABLE) -> np.ndarray:
    """The deltas of every weight with one of `attributes`, concatenated."""
    return np.concatenate([(np.asarray(after[k], np.float64) - before[k]).ravel()
                           for k in sorted(before) if k[1] in attributes])


# -- the two implementations ----------------------------------------------------------------
@dataclasses.dataclass
class Run:
    losses: list
    states: list  # weights before step 1, after step 1, after step 2
    noises: list  # the attack start perturbation of each step, unclipped (NCHW), or None


def method_config(name: str, overrides: tuple = ()) -> presets.TrainConfig:
    """The digits preset of `name` with the test's start, weight decay and learning rate
    (`overrides`: more method keyword arguments)."""
    config = presets.get(f"digits-{name}")
    start = SHARED_START if name in SHARED_START_METHODS else "none"
    kwargs = {**config.method_kwargs, "attack_start": start, **dict(overrides)}
    return config.replace(method_kwargs=kwargs, weight_decay=WEIGHT_DECAY,
                          learning_rate=LEARNING_RATES[name])


def hyper(config: presets.TrainConfig, **changes) -> ref.Hyper:
    values = dict(epsilon=config.epsilon, step_size=config.step_size,
                  attack_steps=config.attack_steps, learning_rate=config.learning_rate,
                  momentum=config.momentum, weight_decay=config.weight_decay)
    return ref.Hyper(**{**values, **changes})


@functools.lru_cache(maxsize=None)
def keras_run(name: str, overrides: tuple = ()) -> Run:
    """Two `train_on_batch` steps of our method (preset settings plus `overrides`)."""
    config = method_config(name, overrides)
    x, y = batch()
    student = keras_model(student_state(), STUDENT_WIDTH)
    teacher = keras_model(teacher_state(), TEACHER_WIDTH) if config.needs_teacher else None
    method = build_method(config, student, teacher)
    states, losses, noises = [keras_snapshot(student)], [], []
    for _ in range(STEPS):
        noises.append(start_offset(method, x))
        losses.append(float(method.train_on_batch(x, y, return_dict=True)["loss"]))
        states.append(keras_snapshot(student))
    return Run(losses, states, noises)


def start_offset(method, x):
    """x + noise - x of the method's next attack before any clipping (NCHW float64), None
    without a random start.

    The method asks its seed generator once per step (digits has no augmentation), the
    generator hands out its current state, and the start is x + U(-eps, eps) in float32
    (`rslad_tf.attacks.engine.random_start`), recomputed here with the same stateless op.
    Whether it is then clipped before the first gradient is each side's own business (our
    method's ``clip_attack_start``, the reference recipe's ``clip_start``)."""
    if method.attack_start == "none":
        return None
    assert method.attack_start == SHARED_START == "uniform"
    seed = tf.cast(method.seed_generator.state, tf.int64)
    noise = (tf.random.stateless_uniform(x.shape, seed, minval=-1.0, maxval=1.0)
             * method.epsilon).numpy()
    offset = (x + noise).astype(np.float64) - x.astype(np.float64)
    return torch.from_numpy(offset.transpose(0, 3, 1, 2).copy())


def torch_run(name: str, recipe: ref.Recipe, noises: list, **hyper_changes) -> Run:
    """The reference's steps from the same weights and batch, one per entry of `noises`."""
    config = method_config(name)
    x, y = batch()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64))
    yt = torch.from_numpy(y.astype(np.int64))
    student = torch_model(student_state(), STUDENT_WIDTH)
    teacher = torch_model(teacher_state(), TEACHER_WIDTH) if config.needs_teacher else None
    states = [torch_snapshot(student)]
    losses = ref.train_steps(recipe, student, teacher, xt, yt,
                             hyper=hyper(config, **hyper_changes), noises=noises,
                             after_step=lambda: states.append(torch_snapshot(student)))
    return Run(losses, states, noises)


def reference_recipe(name: str, **changes) -> ref.Recipe:
    """The method's reference recipe, started as the parity runs start it (see the module
    docstring), with `changes` (a deliberately wrong variant)."""
    recipe = dataclasses.replace(ref.REFERENCE[name],
                                 start_noise=name in SHARED_START_METHODS)
    return dataclasses.replace(recipe, **changes)


def errors(ours: Run, theirs: Run) -> dict:
    """Relative errors per step: the loss; the update of all trainable weights together,
    ||dW_ours - dW_ref|| / ||dW_ref||; the same for the moving means ("stats")."""
    err = {"loss": [abs(a - b) / abs(b) for a, b in zip(ours.losses, theirs.losses)],
           "update": [], "stats": []}
    for key, attributes in (("update", TRAINABLE), ("stats", MOVING_MEANS)):
        for k in range(STEPS):
            d_ours = flat_update(ours.states[k], ours.states[k + 1], attributes)
            d_ref = flat_update(theirs.states[k], theirs.states[k + 1], attributes)
            diff, size = np.linalg.norm(d_ours - d_ref), np.linalg.norm(d_ref)
            # A reference that does not move (eval-mode statistics) against one that does.
            err[key].append(float(diff / size) if size else (np.inf if diff else 0.0))
    return err


TOLERANCES = {"loss": LOSS_RTOL, "update": UPDATE_RTOL, "stats": UPDATE_RTOL}


def worst_ratio(err: dict) -> float:
    """How many times the worst error exceeds its tolerance (< 1: within tolerance)."""
    return max(max(err[key]) / tol for key, tol in TOLERANCES.items())


def report(label: str, err: dict) -> None:
    """One line per comparison (shown with ``pytest -s``; docs/parity.md quotes them)."""
    parts = "; ".join(f"{key} {', '.join(f'{e:.1e}' for e in err[key])}" for key in TOLERANCES)
    print(f"\n{label}: {parts}; worst / tolerance {worst_ratio(err):.3g}")


def assert_parity(err: dict) -> None:
    for key, tolerance in TOLERANCES.items():
        assert max(err[key]) <= tolerance, (key, err)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # Two thread pools (TensorFlow's and torch's) on 2 cores slow both down many times.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# IAD's step with the introspective term (after the warm-up).
KERAS_OVERRIDES = {"iad": (("warmup_epochs", 0),)}


def ours(name: str) -> Run:
    return keras_run(name, KERAS_OVERRIDES.get(name, ()))


def reference_run(name: str, run: Run, recipe_changes=None, **hyper_changes) -> Run:
    """The reference's steps from `run`'s starts, its recipe changed by `recipe_changes`
    and its hyperparameters by `hyper_changes` (a deliberately wrong variant)."""
    return torch_run(name, reference_recipe(name, **(recipe_changes or {})), run.noises,
                     **hyper_changes)


# -- the tests -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["natural", "sat", "trades", "ard", "iad", "rslad"])
def test_two_steps_match_the_reference(name):
    """Our preset's two steps against the reference algorithm (`torch_reference.REFERENCE`)."""
    run = ours(name)
    err = errors(run, reference_run(name, run))
    report(f"{name} vs reference", err)
    assert_parity(err)


def test_iad_warmup_step_matches_the_references_warmup():
    """In its warm-up epochs IAD-I's reference step is ARD's: S(x) runs once in training
    mode (its introspective loss evaluates S(x) a second time, but only after the warm-up),
    so BatchNorm's moving statistics move as often as in ARD's step."""
    run = keras_run("iad")  # the preset's warm-up: the steps are in epoch 0
    err = errors(run, reference_run("iad", run, {"introspection": False}))
    report("iad in its warm-up vs the reference's warm-up", err)
    assert_parity(err)


def test_attack_starts_are_the_references():
    """Most parity runs fix the start (module docstring), so the start types are checked
    here: each preset's random start is its reference's, so is whether the method clips it
    before the first gradient (the SAT and TRADES runs also show it in the step), and the
    normal start's scale."""
    from rslad_tf.attacks.engine import NORMAL_START_STD
    from rslad_tf.methods import METHODS

    for name, recipe in ref.REFERENCE.items():
        if name != "natural":
            assert presets.method_defaults(name)["attack_start"] == recipe.start, name
            assert METHODS[name].clip_attack_start == recipe.clip_start, name
    assert NORMAL_START_STD == ref.NORMAL_START_STD


# Deliberately wrong references: (label, changes to the recipe, changes to the hyperparameters)
WRONG_VARIANTS = {
    "natural": [("CE summed instead of averaged", {"reduction": "sum"}, {}),
                ("BatchNorm in eval mode in the update", {"update_bn": "eval"}, {}),
                ("no weight decay", {}, {"weight_decay": 0.0}),
                ("no momentum", {}, {"momentum": 0.0})],
    "sat": [("no attack", {"attack": False}, {}),
            ("CE summed instead of averaged", {"reduction": "sum"}, {}),
            ("BatchNorm in train mode in the attack", {"attack_bn": "train"}, {}),
            ("start not clipped before the first gradient", {"clip_start": False}, {})],
    "trades": [("no attack", {"attack": False}, {}),
               ("KL 'mean' instead of 'batchmean'", {"reduction": "mean"}, {}),
               ("BatchNorm in train mode in the attack", {"attack_bn": "train"}, {}),
               # What our TRADES did before it followed the reference (docs/parity.md):
               # two updates of the BatchNorm statistics per step instead of three.
               ("S(x) once in training mode", {"extra_clean_forward": False}, {}),
               # What our engine did before it followed the references (docs/parity.md).
               ("start clipped before the first gradient", {"clip_start": True}, {})],
    "ard": [("no attack", {"attack": False}, {}),
            ("KL 'batchmean' instead of 'mean'", {"reduction": "batchmean"}, {}),
            ("BatchNorm in eval mode in the attack", {"attack_bn": "eval"}, {}),
            ("temperature 1 instead of 30", {"temperature": 1.0}, {})],
    "iad": [("no attack", {"attack": False}, {}),
            # What the IAD preset did before it followed IAD-I.py (docs/parity.md).
            ("distillation KL 'mean' instead of 'batchmean'", {"reduction": "mean"}, {}),
            ("BatchNorm in eval mode in the attack", {"attack_bn": "eval"}, {}),
            ("no introspection term (plain ARD)", {"introspection": False}, {})],
    "rslad": [("no attack", {"attack": False}, {}),
              ("KL 'batchmean' instead of 'mean'", {"reduction": "batchmean"}, {}),
              ("BatchNorm in train mode in the attack", {"attack_bn": "train"}, {}),
              ("no weight decay", {}, {"weight_decay": 0.0}),
              ("no momentum", {}, {"momentum": 0.0})],
}


def test_wrong_reference_variants_miss_the_tolerances():
    """Calibration: each method's step against each deliberately wrong reference misses a
    tolerance by at least CALIBRATION_MARGIN times (the correct reference is within them,
    above). One test for all methods: the Keras runs are cached, each variant costs only a
    float64 reference run."""
    ratios = {}
    for name, variants in WRONG_VARIANTS.items():
        run = ours(name)
        for label, recipe_changes, hyper_changes in variants:
            err = errors(run, reference_run(name, run, recipe_changes, **hyper_changes))
            report(f"{name}, wrong variant '{label}'", err)
            ratios[f"{name}: {label}"] = worst_ratio(err)
    missed = {key: ratio for key, ratio in ratios.items() if ratio < CALIBRATION_MARGIN}
    assert not missed, missed
