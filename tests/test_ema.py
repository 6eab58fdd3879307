"""The weight average: a hand-computed EMA, inside the training step (BatchNorm statistics
included), and in the trainer (its own checkpoints, evaluated, restored on resume)."""

import csv
import os

import keras
import numpy as np
import pytest

from rslad_tf.training import cli as train
from rslad_tf.data import make_dataset
from rslad_tf.common.errors import run_cli
from rslad_tf.methods import SATModel
from rslad_tf.methods.ema import WeightAverage, decay_at


def _bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(),
                             keras.layers.Flatten(), keras.layers.Dense(10)])


def _hand_average(snapshots, decay, warmup=True):
    """shadow_0 = the initial weights; shadow_{t+1} = d_t shadow_t + (1 - d_t) w_{t+1}."""
    shadow = [w.astype(np.float64) for w in snapshots[0]]
    for t, weights in enumerate(snapshots[1:]):
        d = decay_at(decay, t) if warmup else decay
        shadow = [d * s + (1 - d) * w for s, w in zip(shadow, weights)]
    return shadow


def test_average_equals_the_hand_computed_recurrence():
    model = _bn_model()
    average = WeightAverage(model, 0.9)
    rng = np.random.default_rng(0)
    snapshots = [[w.numpy().copy() for w in model.weights]]
    for _ in range(30):  # past the warm-up: (1 + t) / (10 + t) reaches 0.9 at t = 80
        for w in model.weights:
            w.assign(w.numpy() + rng.normal(size=w.shape).astype(np.float32))
        snapshots.append([w.numpy().copy() for w in model.weights])
        average.update()
    want = _hand_average(snapshots, 0.9)
    for got, expected in zip(average.shadow, want):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    # Calibration: the same recurrence without the warm-up is far from it.
    wrong = _hand_average(snapshots, 0.9, warmup=False)
    assert max(np.abs(a.numpy() - b).max() for a, b in zip(average.shadow, wrong)) > 1e-2
    copy = _bn_model(seed=5)
    average.copy_to(copy)
    for got, expected in zip(copy.weights, want):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_the_step_averages_every_weight_including_batchnorm_statistics(digits_data):
    (x, y), _ = digits_data
    student = _bn_model()
    method = SATModel(student, epsilon=0.2, step_size=0.05, attack_steps=1)
    method.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    average = WeightAverage(student, 0.5)
    method.attach_weight_average(average)
    snapshots = [[w.numpy().copy() for w in student.weights]]

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            snapshots.append([w.numpy().copy() for w in student.weights])

    method.fit(make_dataset(x[:96], y[:96], 32, shuffle=False), epochs=1, verbose=0,
               callbacks=[Record()])
    assert len(snapshots) == 4 and int(average.num_updates.numpy()) == 3
    moving = [i for i, w in enumerate(student.weights) if "moving" in w.path]
    assert moving and not np.allclose(snapshots[0][moving[0]], snapshots[-1][moving[0]])
    for got, expected in zip(average.shadow, _hand_average(snapshots, 0.5)):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def _train(tmp_path, out, epochs, resume=False):
    argv = ["--preset", "digits-sat", "--out", str(out), "--epochs", str(epochs),
            "--max-steps", "3", "--eval-n-examples", "32", "--no-final-eval",
            "--set", "ema_decay=0.9", "--deterministic", "--runs-dir", str(tmp_path),
            # One learning rate throughout: --epochs would otherwise scale the milestones
            # differently for the 1-epoch and the 2-epoch run.
            "--set", "lr_milestones=[100]"]
    return run_cli(train.main, argv + (["--resume"] if resume else []))


def _weights(path):
    return [w.numpy() for w in keras.saving.load_model(path).weights]


@pytest.mark.slow  # three short training runs: about a minute on 2 cores
def test_trainer_saves_evaluates_and_resumes_the_average(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(tmp_path, straight, 2) == 0
    assert '"ema_last_pgd20_acc"' in capsys.readouterr().out  # in the run's summary
    for name in ("ema_best.keras", "ema_last.keras"):
        assert os.path.exists(straight / "checkpoints" / name)
    rows = list(csv.DictReader(open(straight / "history.csv")))
    assert rows[-1]["ema_pgd20_acc"] != "" and rows[-1]["ema_clean_acc"] != ""
    # The average is not the student.
    assert any(not np.array_equal(a, b) for a, b in zip(
        _weights(straight / "checkpoints" / "ema_last.keras"),
        _weights(straight / "checkpoints" / "last.keras")))
    # Stopped after one epoch and resumed: the same average as the uninterrupted run.
    assert _train(tmp_path, split, 1) == 0
    assert _train(tmp_path, split, 2, resume=True) == 0
    for a, b in zip(_weights(split / "checkpoints" / "ema_last.keras"),
                    _weights(straight / "checkpoints" / "ema_last.keras")):
        np.testing.assert_array_equal(a, b)


def test_bad_decay_is_one_line(tmp_path, capsys):
    code = run_cli(train.main, ["--preset", "digits-sat", "--out", str(tmp_path / "o"),
                                "--set", "ema_decay=1.5"])
    err = capsys.readouterr().err
    assert code == 2 and "ema_decay" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_weight_average_refuses_degenerate_decays(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(_bn_model(), decay)
