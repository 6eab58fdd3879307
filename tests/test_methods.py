"""Each training method: it learns, it never touches the teacher, it saves and reloads."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rslad_tf import RSLADModel, models
from rslad_tf.data import make_dataset
from rslad_tf.methods import METHODS, ARDModel, IADModel

EPS = 0.2


def _student(width=8, seed=0):
    keras.utils.set_random_seed(seed)
    return models.create("small_cnn", 10, input_shape=(8, 8, 1), width=width)


def _method(name, teacher, **kw):
    cls = METHODS[name]
    extra = {"teacher": teacher} if cls.uses_teacher else {}
    method = cls(_student(), epsilon=EPS, step_size=EPS / 4, attack_steps=3, **extra, **kw)
    method.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return method


def test_the_vocabulary_lists_what_the_method_classes_say():
    """The method tuples of `rslad_tf.common.vocabulary`, which the presets and the study
    read without importing Keras, name exactly the registered classes that need a teacher
    and those whose teacher output the soft-label cache may hold."""
    from rslad_tf.common import vocabulary

    assert tuple(METHODS) == vocabulary.METHOD_NAMES
    assert vocabulary.DISTILLATION_METHODS == tuple(
        n for n, cls in METHODS.items() if cls.uses_teacher)
    assert vocabulary.TEACHER_CACHE_METHODS == tuple(
        n for n, cls in METHODS.items() if cls.supports_teacher_cache)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_short_fit_lowers_the_loss_and_leaves_the_teacher_alone(name, trained_digits_model,
                                                                digits_data):
    (x, y), _ = digits_data
    teacher = trained_digits_model
    teacher_before = [w.numpy().copy() for w in teacher.weights]
    method = _method(name, teacher)
    ds = make_dataset(x[:512], y[:512], 64, shuffle=True, seed=0)
    history = method.fit(ds, epochs=4, verbose=0, shuffle=False).history
    assert history["loss"][-1] < history["loss"][0], history["loss"]
    for old, new in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(old, new.numpy())
    # Only the student was trained.
    assert all(any(v is s for s in method.student.trainable_variables)
               for v in method.trainable_variables)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_save_load_round_trip(name, trained_digits_model, digits_data, tmp_path):
    (x, y), (xt, _) = digits_data
    method = _method(name, trained_digits_model, weight_decay=1e-4, seed=5)
    method.fit(make_dataset(x[:128], y[:128], 64, shuffle=False), epochs=1, verbose=0)
    path = os.path.join(tmp_path, f"{name}.keras")
    method.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(method)
    assert loaded.hyperparameters() == method.hyperparameters()
    assert ([v.name for v in loaded.optimizer.variables]
            == [v.name for v in method.optimizer.variables])
    for a, b in zip(loaded.optimizer.variables, method.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(loaded.predict(xt[:32], verbose=0),
                                  method.predict(xt[:32], verbose=0))
    # The student alone also round-trips (that is what checkpoints hold).
    spath = os.path.join(tmp_path, "student.keras")
    method.student.save(spath)
    student = keras.saving.load_model(spath, safe_mode=True)
    np.testing.assert_array_equal(student.predict(xt[:32], verbose=0),
                                  method.student.predict(xt[:32], verbose=0))


def test_rslad_model_works_standalone(trained_digits_model, digits_data):
    """The README's snippet: RSLADModel(student, teacher).compile(optimizer=...).fit(ds)."""
    (x, y), _ = digits_data
    model = RSLADModel(_student(), trained_digits_model, epsilon=EPS, step_size=EPS / 4)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = model.fit(tf.data.Dataset.from_tensor_slices((x[:256], y[:256])).batch(64),
                        epochs=2, verbose=0)
    assert set(history.history) >= {"loss", "kl_adv", "kl_nat", "acc"}
    assert np.isfinite(history.history["loss"]).all()


def test_distillation_methods_need_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        RSLADModel(_student(), None)


def test_rslad_attack_and_loss_use_the_clean_soft_labels(trained_digits_model, digits_data):
    """The teacher sees clean images only: its soft labels equal softmax(T(x))."""
    (x, y), _ = digits_data
    method = _method("rslad", trained_digits_model)
    ctx = method.prepare(tf.constant(x[:16]), tf.constant(y[:16]))
    expected = tf.nn.softmax(trained_digits_model(x[:16], training=False))
    np.testing.assert_allclose(ctx["soft_labels"].numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)


def test_iad_is_ard_during_warmup_then_adds_the_introspective_term(trained_digits_model,
                                                                    digits_data):
    (x, y), _ = digits_data
    x, y = tf.constant(x[:32]), tf.constant(y[:32])
    iad = _method("iad", trained_digits_model, warmup_epochs=2)
    # IAD's warm-up is ARD with IAD's own distillation reduction ("batchmean", IAD-I.py).
    ard = ARDModel(iad.student, trained_digits_model, epsilon=EPS, reduction=iad.reduction)
    ctx = iad.prepare(x, y)
    x_adv = iad.attack(x, y, ctx)
    ard_loss = ard.loss_terms(x, x_adv, y, ctx)["loss"].numpy()
    iad.epoch.assign(1)
    np.testing.assert_allclose(iad.loss_terms(x, x_adv, y, ctx)["loss"].numpy(), ard_loss,
                               rtol=1e-6)
    iad.epoch.assign(2)
    terms = iad.loss_terms(x, x_adv, y, ctx)
    assert terms["loss"].numpy() == pytest.approx(
        ard_loss + terms["self_kl"].numpy(), rel=1e-5)
    assert isinstance(iad, IADModel)


def test_weight_decay_is_coupled_like_pytorch_sgd(digits_data):
    """With zero loss gradient... not available; instead compare one SGD step with and
    without weight decay: the difference is lr * wd * w (no momentum on the first step)."""
    (x, y), _ = digits_data
    ds = make_dataset(x[:64], y[:64], 64, shuffle=False)
    results = []
    for wd in (0.0, 0.01):
        method = METHODS["natural"](_student(seed=3), weight_decay=wd)
        method.compile(optimizer=keras.optimizers.SGD(0.1))
        w0 = [v.numpy().copy() for v in method.student.trainable_variables]
        method.fit(ds, epochs=1, verbose=0)
        results.append(([v.numpy() for v in method.student.trainable_variables], w0))
    (w_plain, w0), (w_decay, _) = results
    for a, b, w in zip(w_plain, w_decay, w0):
        np.testing.assert_allclose(a - b, 0.1 * 0.01 * w, atol=2e-6)
