"""The Keras callbacks of a training run (`rslad_tf.training.callbacks`), one at a time."""

import keras
import pytest

from rslad_tf.common.errors import UserError
from rslad_tf.config import presets
from rslad_tf.training import callbacks
from rslad_tf.training.schedule import is_eval_epoch, learning_rate


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    return model


def test_schedule_sets_the_learning_rate_of_each_epoch():
    config = presets.get("digits-sat")  # 0.5, / 10 at epochs 75 and 90
    expected = [0.5] * 75 + [0.05] * 15 + [0.005] * 10
    schedule = callbacks.StepSchedule(config)
    model = _model()
    schedule.set_model(model)
    for epoch in range(config.epochs):
        schedule.on_epoch_begin(epoch)
        assert learning_rate(config, epoch) == pytest.approx(expected[epoch])
        assert float(model.optimizer.learning_rate) == pytest.approx(expected[epoch], rel=1e-6)


def test_selection_epochs_follow_the_reference_schedule():
    config = presets.get("digits-sat")  # every 17 epochs, every epoch from milestone 75 on
    chosen = [e + 1 for e in range(config.epochs) if is_eval_epoch(config, e)]
    assert chosen == [17, 34, 51, 68] + list(range(75, 101))


def test_eval_every_zero_selects_on_the_last_epoch_only():
    config = presets.get("digits-sat").replace(eval_every=0)
    assert [e + 1 for e in range(config.epochs) if is_eval_epoch(config, e)] == [100]
    with pytest.raises(presets.PresetError, match="eval_every must be 0 .* got -1"):
        config.replace(eval_every=-1).validate()


def test_last_checkpoints_are_refreshed_first_last_and_every_interval():
    """last.keras is written at the end of the first epoch a process trains, then once the
    interval has passed since the previous write, and at the run's last epoch; one answer
    per epoch, so last.keras and ema_last.keras stay together."""
    config = presets.get("digits-sat").replace(epochs=8)
    now = [0.0]
    refresh = callbacks.CheckpointRefresh(config, interval=10.0, clock=lambda: now[0])
    written = []
    for epoch, seconds in enumerate([4, 4, 4, 4, 1, 1, 12, 1]):
        now[0] += seconds
        if refresh.due(epoch):
            written.append(epoch + 1)
        assert refresh.due(epoch) == (epoch + 1 in written)  # asked again: same answer
    # Epoch 1 at t=4, then t=16 (12 s later), t=30 (14 s), the last epoch at t=31.
    assert written == [1, 4, 7, 8]
    # A zero interval writes every epoch, as before the throttle.
    every = callbacks.CheckpointRefresh(config, interval=0.0, clock=lambda: 0.0)
    assert all(every.due(e) for e in range(config.epochs))


class _RecordedState:
    path = "run/checkpoints/state.npz"

    def __init__(self):
        self.saved = []

    def save(self, epoch, step=0):
        self.saved.append((epoch, step))


def test_guard_saves_every_n_steps_counting_from_a_resumed_step():
    state = _RecordedState()
    guard = callbacks.StepGuard(state, 2, resume_at=(1, 3))
    guard.set_model(_model())
    guard.on_epoch_begin(1)
    for batch in range(3):  # steps 4, 5, 6 of epoch 1
        guard.on_train_batch_end(batch, {"loss": 0.5})
    guard.on_epoch_end(1)
    guard.on_epoch_begin(2)
    for batch in range(2):  # steps 1, 2 of epoch 2
        guard.on_train_batch_end(batch, {"loss": 0.5})
    assert state.saved == [(1, 4), (1, 6), (2, 2)]


def test_guard_stops_at_a_non_finite_loss_and_names_epoch_and_step():
    state = _RecordedState()
    model = _model()
    guard = callbacks.StepGuard(state, None)
    guard.set_model(model)
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"loss": 1.0})
    guard.on_train_batch_end(1, {"loss": float("nan")})
    assert model.stop_training and guard.bad_step == 2
    with pytest.raises(UserError) as info:
        guard.on_epoch_end(0)
    message = str(info.value)
    assert "non-finite loss at epoch 1, step 2" in message and "run/checkpoints" in message
    assert "\n" not in message and state.saved == []
