"""The fast paths are correct: device data and the soft-label cache are exact, the folded
attack computes the same function, attacks keep their invariants under XLA and mixed
precision, and the benchmark and the training flags run. (Speed itself is measured by
`python -m rslad_tf.bench`, not tested.)"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rslad_tf import attacks, models
from rslad_tf.attacks import engine as pgd_module
from rslad_tf.bench.flops import model_flops, step_flops
from rslad_tf.bench.profiles import Profile
from rslad_tf.bench.run import run as run_bench
from rslad_tf.training import cli as train
from rslad_tf.training import fast_paths
from rslad_tf.transforms.bn_folding import folded_view
from rslad_tf.data import augment, make_dataset
from rslad_tf.data.device_data import DeviceData, index_dataset, indexed_dataset
from rslad_tf.common import runtime
from rslad_tf.common.errors import run_cli
from rslad_tf.methods import RSLADModel
from rslad_tf.methods.soft_label_cache import (SoftLabelCache, cache_bytes, num_variants,
                                               variant_ids)

EPS = 0.2


def _cnn(width, seed=0, policy=None):
    keras.utils.set_random_seed(seed)
    with fast_paths.dtype_policy(policy):
        return models.create("small_cnn", 10, input_shape=(8, 8, 1), width=width)


def _randomise_batchnorm(model, seed=0):
    """Non-trivial BatchNorm statistics, so folding has something to fold."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(size=n).astype("float32") * 0.1)
            layer.moving_variance.assign(rng.random(n).astype("float32") + 0.5)
            layer.gamma.assign(rng.random(n).astype("float32") + 0.5)
            layer.beta.assign(rng.normal(size=n).astype("float32") * 0.1)


def _rslad(teacher, *, padding=1, flip=True, policy=None, jit=False, steps=2, seed=3):
    method = RSLADModel(_cnn(4, policy=policy), teacher, epsilon=EPS, step_size=EPS / 4,
                        attack_steps=steps, augment_padding=padding, augment_flip=flip,
                        weight_decay=1e-3, seed=seed)
    method.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=jit)
    return method


def _weights(model):
    return [w.numpy() for w in model.weights]


# -- device-resident data --------------------------------------------------------------
def test_index_batches_follow_the_tf_data_order(digits_data):
    (x, y), _ = digits_data
    x, y = x[:200], y[:200]
    data = DeviceData(x, y)
    for seed in (0, 7):
        reference = list(make_dataset(x, y, 64, shuffle=True, seed=seed))
        by_index = list(data.index_dataset(64, seed=seed))
        with_index = list(indexed_dataset(x, y, 64, shuffle=True, seed=seed))
        assert len(reference) == len(by_index) == len(with_index) == 4
        for (xb, yb), ib, wb in zip(reference, by_index, with_index):
            gx, gy = data.gather(ib["index"])
            np.testing.assert_array_equal(gx.numpy(), xb.numpy())
            np.testing.assert_array_equal(gy.numpy(), yb.numpy())
            assert gy.dtype == yb.dtype
            np.testing.assert_array_equal(wb["image"].numpy(), xb.numpy())
            np.testing.assert_array_equal(wb["index"].numpy(), ib["index"].numpy())
    # Without shuffling: 0..N-1 in order.
    first = next(iter(index_dataset(10, 4, shuffle=False)))["index"].numpy()
    np.testing.assert_array_equal(first, [0, 1, 2, 3])


def test_device_data_and_cache_train_bit_identically(trained_digits_model, digits_data):
    """Two epochs with crop + flip augmentation: tf.data, device data, device data + cache
    and tf.data with indices + cache give the same student, bit for bit."""
    (x, y), _ = digits_data
    x, y = x[:192], y[:192]
    results = {}
    for mode in ("tf.data", "device", "device+cache", "indexed+cache"):
        method = _rslad(trained_digits_model)
        data = DeviceData(x, y)
        if mode.startswith("device"):
            method.attach_device_data(data)
        if mode.endswith("cache"):
            cache = SoftLabelCache(len(x), 10, padding=1, flip=True)
            method.attach_teacher_cache(cache)
        for epoch in range(2):
            if mode == "tf.data":
                ds = make_dataset(x, y, 64, shuffle=True, seed=epoch)
            elif mode.startswith("device"):
                ds = data.index_dataset(64, seed=epoch)
            else:
                ds = indexed_dataset(x, y, 64, shuffle=True, seed=epoch)
            method.fit(ds, epochs=1, verbose=0)
        results[mode] = _weights(method.student)
        if mode.endswith("cache"):
            counters = cache.counters()
            assert counters["lookups"] == 2 * len(x) and counters["misses"] > 0
    for mode, weights in results.items():
        for a, b in zip(results["tf.data"], weights):
            np.testing.assert_array_equal(a, b, err_msg=mode)


# -- the soft-label cache ----------------------------------------------------------------
def test_variant_ids_enumerate_every_crop_and_flip():
    padding = 2
    side = 2 * padding + 1
    offsets = np.array([[r, c] for r in range(side) for c in range(side) for _ in (0, 1)])
    flips = np.array([f for _ in range(side * side) for f in (False, True)])
    ids = variant_ids(tf.constant(offsets), tf.constant(flips), padding, True).numpy()
    assert sorted(ids.tolist()) == list(range(num_variants(padding, True)))
    assert num_variants(4, True) == 162 and num_variants(0, False) == 1
    # CIFAR-10's cache as the docs state it.
    assert cache_bytes(50000, 162, 10) == 50000 * 162 * 44
    cache = SoftLabelCache(100, 10, padding=4, flip=True)
    assert cache.nbytes == 100 * 162 * 44
    assert "MiB" in cache.describe() and "162 variants" in cache.describe()


def _augmented_batches(x, padding, flip, seeds, batch=48):
    out = []
    for seed in seeds:
        index = np.random.default_rng(seed).choice(len(x), batch, replace=False).astype(np.int32)
        offsets, flips = augment.draw_params(batch, padding, flip, tf.constant([seed, 0]))
        images = augment.apply(tf.gather(x, index), offsets, flips, padding)
        out.append((images, tf.constant(index), variant_ids(offsets, flips, padding, flip)))
    return out


@pytest.mark.parametrize("jit", [False, True])
def test_cache_gives_the_teachers_logits_bit_for_bit(trained_digits_model, digits_data, jit):
    (x, _), _ = digits_data
    x = x[:120]
    teacher = trained_digits_model
    cache = SoftLabelCache(len(x), 10, padding=1, flip=True)

    def teacher_fn(images):
        return tf.cast(teacher(images, training=False), tf.float32)

    lookup = tf.function(lambda images, index, variant: cache.lookup(
        teacher_fn, images, index, variant), jit_compile=jit)
    direct = tf.function(teacher_fn, jit_compile=jit)
    batches = _augmented_batches(x, 1, True, seeds=(1, 2, 1))  # the third repeats the first
    seen = set()
    for images, index, variant in batches:
        keys = set(zip(index.numpy().tolist(), variant.numpy().tolist()))
        misses = len(keys - seen)
        before = cache.counters()["misses"]
        cached = lookup(images, index, variant).numpy()
        assert cache.counters()["misses"] - before == misses
        seen |= keys
        # Every row equals the teacher on the same batch (rows are batch-independent in
        # inference mode; bit for bit on CPU).
        np.testing.assert_array_equal(cached, direct(images).numpy())
    counters = cache.counters()
    assert counters["lookups"] == 3 * 48 and counters["misses"] == len(seen)
    assert counters["teacher_rows"] <= 2 * 48  # the repeated batch ran no teacher
    assert cache.filled_fraction() == pytest.approx(len(seen) / (len(x) * 18))


def test_cache_never_rewrites_a_filled_entry(trained_digits_model, digits_data):
    (x, _), _ = digits_data
    cache = SoftLabelCache(16, 10)
    images = tf.constant(x[:8])
    index = tf.range(8)
    variant = tf.zeros([8], tf.int32)
    cache.lookup(lambda im: trained_digits_model(im, training=False), images, index, variant)
    stored = cache.logits.numpy().copy()
    # Same keys, different images: a hit returns the stored logits, nothing is rewritten.
    out = cache.lookup(lambda im: trained_digits_model(im, training=False),
                       tf.constant(x[8:16]), index, variant).numpy()
    np.testing.assert_array_equal(cache.logits.numpy(), stored)
    np.testing.assert_array_equal(out, stored[:8])
    assert cache.counters()["misses"] == 8


def test_cache_rejects_methods_whose_teacher_sees_adversarial_images(trained_digits_model):
    from rslad_tf.methods import AdaADModel

    method = AdaADModel(_cnn(4), trained_digits_model)
    with pytest.raises(ValueError, match="no cacheable teacher"):
        method.attach_teacher_cache(SoftLabelCache(10, 10))


@pytest.mark.parametrize("name", ["ard", "iad"])
def test_ard_and_iad_train_the_same_with_the_cache(name, trained_digits_model, digits_data):
    """The pipeline's digits configuration (no augmentation, full batches): two epochs of
    ARD, or of IAD with its introspective term from the second, give the same student bit
    for bit with the teacher's clean logits computed once and then read from the cache
    (every lookup of the second epoch a hit). A cache holding another teacher's logits
    changes the student: the hits are what the step trains on."""
    from rslad_tf.methods import ARDModel, IADModel

    (x, y), _ = digits_data
    x, y = x[:128], y[:128]
    other_teacher = _cnn(8, seed=5)

    def train(cache=None, prefill=None):
        kwargs = {"warmup_epochs": 1} if name == "iad" else {}
        cls = IADModel if name == "iad" else ARDModel
        method = cls(_cnn(4), trained_digits_model, epsilon=EPS, step_size=EPS / 4,
                     attack_steps=2, attack_batchnorm="train", weight_decay=1e-3, seed=3,
                     **kwargs)
        method.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        if cache is not None:
            method.attach_teacher_cache(cache)
        if prefill is not None:
            cache.lookup(lambda im: tf.cast(prefill(im, training=False), tf.float32),
                         tf.constant(x), tf.range(len(x)), tf.zeros([len(x)], tf.int32))
        hit_rates = []
        for epoch in range(2):
            if cache is not None:
                cache.reset_counters()
            method.fit(indexed_dataset(x, y, 64, shuffle=True, seed=epoch), epochs=1,
                       verbose=0)
            if cache is not None:
                hit_rates.append(cache.counters()["hit_rate"])
        return _weights(method.student), hit_rates

    plain, _ = train()
    cached, hit_rates = train(SoftLabelCache(len(x), 10))
    assert hit_rates == [0.0, 1.0]
    for a, b in zip(plain, cached):
        np.testing.assert_array_equal(a, b)
    wrong, _ = train(SoftLabelCache(len(x), 10), prefill=other_teacher)
    assert any(not np.array_equal(a, b) for a, b in zip(plain, wrong))


def test_cache_needs_indexed_batches(trained_digits_model, digits_data):
    (x, y), _ = digits_data
    method = _rslad(trained_digits_model, padding=0, flip=False)
    method.attach_teacher_cache(SoftLabelCache(64, 10))
    with pytest.raises(ValueError, match="image indices"):
        method.fit(make_dataset(x[:64], y[:64], 32, shuffle=False), epochs=1, verbose=0)


# -- the folded attack ------------------------------------------------------------------
@pytest.mark.parametrize("name,shape,kwargs", [
    ("small_cnn", (8, 8, 1), {"width": 8}),
    ("resnet18", (16, 16, 3), {"base_width": 4}),
    ("wrn34_10", (16, 16, 3), {"depth": 10, "widen_factor": 1}),
])
def test_folded_view_is_the_same_function(name, shape, kwargs):
    keras.utils.set_random_seed(0)
    model = models.create(name, 10, input_shape=shape, **kwargs)
    _randomise_batchnorm(model)
    before = _weights(model)
    make = folded_view(model)
    assert make is not None and make.num_folded > 0
    x = tf.constant(np.random.default_rng(1).random((4,) + shape, dtype=np.float32))

    @tf.function
    def both(x):
        view = make()
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            a, b = view(x), model(x, training=False)
            weights = tf.range(10, dtype=tf.float32)
            la, lb = tf.reduce_sum(a * weights), tf.reduce_sum(b * weights)
        return a, b, tape.gradient(la, x), tape.gradient(lb, x)

    a, b, ga, gb = (t.numpy() for t in both(x))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-6 * np.abs(gb).max())
    for old, new in zip(before, _weights(model)):
        np.testing.assert_array_equal(old, new)


def test_folding_is_off_for_training_mode_attacks(trained_digits_model):
    from rslad_tf.methods import ARDModel

    method = ARDModel(_cnn(4), trained_digits_model, attack_batchnorm="train")
    assert method.set_attack_batchnorm_folding(True) is False
    rslad = RSLADModel(_cnn(4), trained_digits_model)
    assert rslad.set_attack_batchnorm_folding(True) is True


# -- attacks under XLA and mixed precision ----------------------------------------------
def _assert_attack_invariants(x, x_adv, eps=EPS):
    x_adv = np.asarray(x_adv)
    assert x_adv.dtype == np.float32 and x_adv.shape == x.shape
    assert np.max(np.abs(x_adv - x)) <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.max(np.abs(x_adv - x)) > 0.5 * eps  # it moved


@pytest.mark.parametrize("loss", ["ce", "kl", "cw"])
def test_eval_attack_under_xla_keeps_invariants_and_matches(trained_digits_model, digits_data,
                                                            loss):
    _, (x, y) = digits_data
    x, y = x[:64], y[:64]
    # Not the model's own output: KL would sit at its minimum, with gradients of pure noise.
    target = tf.one_hot(y, 10) * 0.9 + 0.01
    kw = dict(eps=EPS, steps=5, loss=loss, target_probs=target, seed=3)
    x_xla = attacks.pgd(trained_digits_model, x, y, jit_compile=True, start="uniform", **kw)
    _assert_attack_invariants(x, x_xla.numpy())
    # From the same (no) random start the two compilations agree but for sign flips of
    # gradients within rounding of zero. (XLA's stateless RNG draws other numbers.)
    x_xla = attacks.pgd(trained_digits_model, x, y, jit_compile=True, start="none", **kw)
    x_ref = attacks.pgd(trained_digits_model, x, y, jit_compile=False, start="none", **kw)
    assert np.mean(np.abs(x_xla.numpy() - x_ref.numpy()) > 1e-5) < 0.02


def test_jit_compile_resolution():
    assert pgd_module.resolve_jit_compile("auto") is bool(tf.config.list_logical_devices("GPU"))
    assert pgd_module.resolve_jit_compile(True) is True
    with pytest.raises(ValueError):
        pgd_module.set_jit_compile("always")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("jit", [False, True])
def test_attack_invariants_under_mixed_precision(digits_data, policy, jit):
    _, (x, y) = digits_data
    x, y = x[:64], y[:64]
    model = _cnn(8, policy=policy)
    assert model.layers[1].compute_dtype != "float32"
    assert keras.config.dtype_policy().name == "float32"  # the policy did not leak
    scale = 1024.0 if policy == "mixed_float16" else 1.0
    run = tf.function(lambda x, y: attacks.pgd_graph(
        model, x, y, eps=EPS, step_size=EPS / 4, steps=5, start="uniform",
        seed=tf.constant([1, 2], tf.int64), objective_scale=scale, return_zero_fraction=True),
        jit_compile=jit)
    x_adv, zero_fraction = run(tf.constant(x), tf.constant(y))
    _assert_attack_invariants(x, x_adv)
    assert 0.0 <= float(zero_fraction) < 0.5


# -- training with every fast path --------------------------------------------------------
@pytest.mark.parametrize("policy,jit", [("mixed_bfloat16", True), ("mixed_float16", False)])
def test_mixed_precision_training_with_all_fast_paths(trained_digits_model, digits_data,
                                                      policy, jit):
    (x, y), _ = digits_data
    x, y = x[:128], y[:128]
    teacher_before = _weights(trained_digits_model)
    method = _rslad(trained_digits_model, policy=policy, jit=jit)
    if policy == "mixed_float16":
        method.compile(optimizer=keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.05, momentum=0.9)), jit_compile=jit)
    assert method.student_precision == policy.split("_")[1]
    data = DeviceData(x, y)
    method.attach_device_data(data)
    method.attach_teacher_cache(SoftLabelCache(len(x), 10, padding=1, flip=True, buckets=2))
    assert method.set_attack_batchnorm_folding(True)
    history = method.fit(data.index_dataset(64, seed=0), epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert 0.0 <= history["zero_grad_frac"][-1] < 0.5
    assert all(np.isfinite(w).all() for w in _weights(method.student))
    for old, new in zip(teacher_before, _weights(trained_digits_model)):
        np.testing.assert_array_equal(old, new)
    # The training attack (folded, mixed precision, XLA) keeps its invariants.
    xb = tf.constant(x[:64])

    @tf.function(jit_compile=jit)
    def attack(xb):
        return method.attack(xb, None, method.prepare(xb, None))

    _assert_attack_invariants(x[:64], attack(xb))


def test_float16_loss_scaling_matches_float32_update(digits_data):
    """One step with a float16 student under a LossScaleOptimizer (and coupled weight
    decay scaled with the loss) moves the weights as the float32 step does."""
    (x, y), _ = digits_data
    teacher = _cnn(8, seed=5)
    updates = {}
    for policy in (None, "mixed_float16"):
        method = RSLADModel(_cnn(4, seed=1, policy=policy), teacher, epsilon=EPS,
                            step_size=EPS / 4, attack_steps=0, weight_decay=0.05, seed=0)
        optimizer = keras.optimizers.SGD(0.1)
        if policy:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**12)
        method.compile(optimizer=optimizer)
        before = [v.numpy() for v in method.student.trainable_variables]
        method.fit(make_dataset(x[:64], y[:64], 64, shuffle=False), epochs=1, verbose=0)
        updates[policy] = [v.numpy() - b for v, b in
                           zip(method.student.trainable_variables, before)]
    a = np.concatenate([u.ravel() for u in updates[None]])
    b = np.concatenate([u.ravel() for u in updates["mixed_float16"]])
    assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.999
    assert np.linalg.norm(b) == pytest.approx(np.linalg.norm(a), rel=0.02)


# -- attack shards ----------------------------------------------------------------------
@pytest.fixture
def default_shards():
    yield runtime.set_shards
    runtime.set_shards(1)


def _attack_fn(model, loss, start, steps=3):
    seed = tf.constant([3, 4], tf.int64)

    @tf.function
    def attack(x, y, probs, count):
        return pgd_module.pgd_graph(
            model, x, y, probs if loss == "kl" else None, eps=EPS, step_size=EPS / 4,
            steps=steps, loss=loss, start=start, seed=None if start == "none" else seed,
            shards=count, return_zero_fraction=True)

    return attack


ATTACK_KINDS = (("ce", "uniform"), ("kl", "normal"), ("cw", "none"))


@pytest.mark.parametrize("n", [64, 128])
def test_sharded_attack_is_bit_identical_at_training_batch_sizes(trained_digits_model,
                                                                 digits_data, n):
    """Two shards of a training batch give the same adversarial images and zero-gradient
    fraction as the whole batch, bit for bit (eager `pgd` too)."""
    (x, y), _ = digits_data
    x, y = tf.constant(x[:n]), tf.constant(y[:n])
    probs = tf.nn.softmax(trained_digits_model(x), axis=-1)
    for loss, start in ATTACK_KINDS:
        attack = _attack_fn(trained_digits_model, loss, start)
        (whole, zeros_whole), (split, zeros_split) = attack(x, y, probs, 1), attack(x, y, probs, 2)
        np.testing.assert_array_equal(split.numpy(), whole.numpy(), err_msg=loss)
        assert float(zeros_split) == float(zeros_whole)
    eager = [attacks.pgd(trained_digits_model, x, y, eps=EPS, steps=3, seed=5, shards=count)
             for count in (1, 2)]
    np.testing.assert_array_equal(eager[0].numpy(), eager[1].numpy())


@pytest.mark.parametrize("n, shards, sizes", [(7, 3, (3, 3, 1)), (2, 4, (1, 1, 0, 0))])
def test_uneven_and_empty_shards(trained_digits_model, digits_data, n, shards, sizes):
    """Uneven pieces (and empty ones when the batch is smaller than the shard count): the
    random start is drawn for the whole batch, and each piece is attacked as that piece
    alone and put back in order. (Against the whole batch the images can differ in the
    last bit: CPU kernels may round differently at another batch size, and a near-zero
    gradient can then change sign.)"""
    (x, y), _ = digits_data
    x, y = tf.constant(x[:n]), tf.constant(y[:n])
    probs = tf.nn.softmax(trained_digits_model(x), axis=-1)
    for loss, start in ATTACK_KINDS:
        starts = [_attack_fn(trained_digits_model, loss, start, steps=0)(x, y, probs, count)[0]
                  for count in (1, shards)]
        np.testing.assert_array_equal(starts[0].numpy(), starts[1].numpy(), err_msg=loss)
        split, _ = _attack_fn(trained_digits_model, loss, start)(x, y, probs, shards)
        assert split.shape == x.shape
        assert float(tf.reduce_max(tf.abs(split - x))) <= EPS + 1e-6
        assert 0.0 <= float(tf.reduce_min(split)) and float(tf.reduce_max(split)) <= 1.0
    attack = _attack_fn(trained_digits_model, "cw", "none")
    split, _ = attack(x, y, probs, shards)
    bounds = np.cumsum((0,) + sizes)
    pieces = [attack(x[lo:hi], y[lo:hi], probs[lo:hi], 1)[0]
              for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    np.testing.assert_array_equal(split.numpy(), tf.concat(pieces, 0).numpy())


def test_sharded_training_attack_trains_bit_identically(trained_digits_model, digits_data,
                                                        default_shards):
    """RSLAD with its attack in 2 shards (the process default the train CLI sets) trains
    the same student bit for bit over a whole digits epoch (its last batch of 3 too);
    ARD's train-mode BatchNorm attack is never sharded (its batch statistics would
    change), so it is unaffected too."""
    from rslad_tf.methods import ARDModel

    (x, y), _ = digits_data
    results = {}
    for shards in (1, 2):
        default_shards(shards)
        ds = make_dataset(x, y, 64, shuffle=True, seed=0)  # 21 batches + one of 3
        rslad = _rslad(trained_digits_model)
        rslad.fit(ds, epochs=1, verbose=0)
        ard = ARDModel(_cnn(4), trained_digits_model, epsilon=EPS, step_size=EPS / 4,
                       attack_steps=2, attack_batchnorm="train")
        ard.compile(optimizer=keras.optimizers.SGD(0.05))
        ard.fit(ds, epochs=1, verbose=0)
        results[shards] = _weights(rslad.student) + _weights(ard.student)
    for a, b in zip(results[1], results[2]):
        np.testing.assert_array_equal(a, b)


def test_attack_shards_setting():
    assert runtime.parse_attack_shards("auto") == "auto"
    assert runtime.parse_attack_shards("3") == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="auto or a positive integer"):
            runtime.parse_attack_shards(bad)
    with pytest.raises(ValueError):
        runtime.set_shards(0)
    # This process' pools are already set (inter-op 1): shards would only queue, so the
    # runtime keeps one.
    assert runtime.configure(attack_shards=2) == 1
    assert runtime.resolve_shards() == 1


def test_train_cli_rejects_bad_attack_shards(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(train.main, ["--preset", "digits-sat", "--attack-shards", "0", "--out",
                                str(out)] + FAST)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--attack-shards" in err and len(err.splitlines()) == 1
    assert not out.exists()


# -- the command line and the run directory ----------------------------------------------
FAST = ["--epochs", "1", "--max-steps", "3", "--eval-n-examples", "32", "--no-final-eval"]


def test_train_cli_speed_flags(tmp_path, capsys):
    teacher = str(tmp_path / "teacher.keras")
    _cnn(8, seed=2).save(teacher)
    out = str(tmp_path / "run")
    code = run_cli(train.main, ["--preset", "digits-rslad", "--teacher", teacher, "--out", out,
                                "--teacher-cache", "--fold-attack-bn", "--device-data", "on",
                                "--mixed-precision", "bfloat16", "--jit-compile", "off"] + FAST)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "teacher soft-label cache" in captured.out and "device-resident data" in captured.out
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["teacher_cache"] and config["mixed_precision"] == "bfloat16"
    assert config["jit_compile"] is False and config["device_data"] == "on"
    header = open(os.path.join(out, "history.csv")).readline().strip().split(",")
    assert {"cache_hit_rate", "zero_grad_frac"} <= set(header)
    # Checkpoints are float32 models whatever the training precision.
    best = keras.saving.load_model(os.path.join(out, "checkpoints", "best.keras"))
    assert {layer.dtype_policy.name for layer in best.layers} == {"float32"}


def test_teacher_cache_flag_refused_for_other_methods(tmp_path, capsys):
    code = run_cli(train.main, ["--preset", "digits-trades", "--teacher-cache", "--out",
                                str(tmp_path / "o")] + FAST)
    assert code == 2 and "--teacher-cache" in capsys.readouterr().err


def test_device_data_run_equals_tf_data_run(tmp_path):
    """The default (device data when it fits) trains exactly as the tf.data path."""
    common = ["--preset", "digits-sat", "--epochs", "1", "--max-steps", "3",
              "--eval-n-examples", "16", "--no-final-eval"]
    runs = {}
    for mode in ("off", "auto"):
        out = str(tmp_path / mode)
        assert run_cli(train.main, common + ["--device-data", mode, "--out", out]) == 0
        runs[mode] = _weights(keras.saving.load_model(
            os.path.join(out, "checkpoints", "last.keras")))
    for a, b in zip(runs["off"], runs["auto"]):
        np.testing.assert_array_equal(a, b)


# -- the benchmark ------------------------------------------------------------------------
def test_model_flops_formula():
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 2*8*8*9*2*4
    h = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(h)  # 2*4*4*9*4*1
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(3)(h)  # 2*4*3
    model = keras.Model(inputs, outputs)
    assert model_flops(model) == 2 * 8 * 8 * 9 * 2 * 4 + 2 * 4 * 4 * 9 * 4 + 2 * 4 * 3
    assert step_flops(10, 100, 10) == 10 * 20 + 60 + 100


def test_bench_runs_and_writes_json(tmp_path):
    profile = Profile("tiny", (8, 8, 1), 10, ("small_cnn", {"width": 4}),
                      ("small_cnn", {"width": 8}), batch_size=32, num_examples=96,
                      epsilon=EPS, attack_steps=2, augment_padding=1, augment_flip=True,
                      eval_batch_size=32, eval_steps=2)
    lines = []
    result = run_bench("cpu", profile=profile, steps=1, repeats=1, ablations=False,
                       log=lines.append)
    steps = result["train_step"]
    assert set(steps) == {"reference", "optimised"}
    assert steps["optimised"]["images_per_s"] > 0 and steps["reference"]["ratio"] == 1.0
    assert steps["optimised"]["cache_bytes"] == 96 * 18 * 44
    assert "cache_warm_images_per_s" in steps["optimised"]
    assert result["projection"]["train_hours_optimised"] > 0
    assert result["eval_attack"]["ratio"] > 0
    assert any("ratio" in line or "x1.00" in line for line in lines)
    path = str(tmp_path / "bench.json")
    from rslad_tf.common import fileio

    fileio.write_json(path, result)
    assert json.load(open(path))["device"] == "cpu"


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "error: --steps must be positive"),
    (["--cache-buckets", "-1"], "error: --cache-buckets must be positive"),
])
def test_bench_cli_refuses_bad_counts_in_one_line(argv, message, capsys):
    from rslad_tf.bench.cli import main as bench_main

    assert run_cli(bench_main, argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
