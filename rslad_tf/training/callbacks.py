"""The per-batch and per-epoch work of a training run, as Keras callbacks of `fit`.

`rslad_tf.training.loop.train` passes them in this order, which matters at the end of an
epoch (each reads what the ones before it left):

    keras.callbacks.TensorBoard   the training metrics (tensorboard/)
    StepSchedule                  the learning rate of the epoch
    StepGuard                     stop at a non-finite loss; the state every N steps
    Float32Student                the float32 student that evaluation and checkpoints use
    PGD20Selection                the selection evaluation, best.keras (and the EMA's)
    EpochRecord                   history.csv, last.keras, state.npz, the epoch's line

(last.keras and ema_last.keras at most every `LAST_CHECKPOINT_INTERVAL_S`, and at the end
of the first and last epochs: `CheckpointRefresh`.)

The loop calls `fit` once per epoch, with that epoch's seeded data order (and, resuming
mid-epoch, without the batches already trained on), which Keras' own epoch loop and
`BackupAndRestore` cannot reproduce exactly; the callbacks keep their state across calls.
They run on every Keras backend (TensorBoard, and the selection's TensorBoard scalars, on
TensorFlow only).
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np

from rslad_tf.common.errors import UserError
from rslad_tf.config import presets
from rslad_tf.training import run_dir
from rslad_tf.training.fast_paths import float32_copy
from rslad_tf.training.schedule import is_eval_epoch, learning_rate

# last.keras and ema_last.keras are written at the end of a run's first and last epochs
# and otherwise at most this often; state.npz (what --resume reads) every epoch. Saving a
# .keras file costs about 60 ms however small the model: a twentieth of a width-4 digits
# epoch on one core, 6 s of a 100-epoch run; a CIFAR epoch takes minutes and saves them
# all.
LAST_CHECKPOINT_INTERVAL_S = 30.0


class CheckpointRefresh:
    """Whether an epoch's end rewrites the "last" checkpoints: the first epoch this process
    trains, the run's last epoch, and otherwise once ``interval`` seconds have passed since
    the previous write (``clock``: seconds, `time.monotonic` by default). One answer per
    epoch, whichever callback asks first."""

    def __init__(self, config: presets.TrainConfig,
                 interval: float = LAST_CHECKPOINT_INTERVAL_S, clock=time.monotonic):
        self.config = config
        self.interval = float(interval)
        self.clock = clock
        self.written_at = None
        self.answered = (None, False)  # (epoch, answer)

    def due(self, epoch: int) -> bool:
        if self.answered[0] == epoch:
            return self.answered[1]
        now = self.clock()
        answer = (self.written_at is None or epoch + 1 >= self.config.epochs
                  or now - self.written_at >= self.interval)
        if answer:
            self.written_at = now
        self.answered = (epoch, answer)
        return answer


class StepSchedule(keras.callbacks.Callback):
    """Sets the optimizer's learning rate at the start of each epoch to
    `schedule.learning_rate` (the step schedule of the config)."""

    def __init__(self, config: presets.TrainConfig):
        super().__init__()
        self.config = config

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate.assign(learning_rate(self.config, epoch))


class StepGuard(keras.callbacks.Callback):
    """Per-batch checks: stop at the first non-finite loss (the epoch then ends with a
    `UserError` naming epoch and step, before any checkpoint of the broken weights is
    written), and save the resumable state every ``save_every_steps`` steps.

    ``resume_at``: the (epoch, step) the run starts from, so that step numbers count the
    batches of an epoch resumed in the middle. ``epoch`` and ``step`` (steps of the epoch
    done so far) say where training is."""

    def __init__(self, state: run_dir.ResumableState, save_every_steps: int | None, *,
                 resume_at: tuple[int, int] = (0, 0)):
        super().__init__()
        self.state = state
        self.save_every_steps = save_every_steps
        self.resume_at = resume_at
        self.epoch, self.step = resume_at
        self.bad_step = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.step = self.resume_at[1] if epoch == self.resume_at[0] else 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if not np.isfinite(float((logs or {}).get("loss", 0.0))):
            self.bad_step = self.step
            self.model.stop_training = True
        elif self.save_every_steps and self.step % self.save_every_steps == 0:
            # Reading `self.model` brings JAX's variables up to date with the stateless
            # training state (Keras syncs them at the end of an epoch otherwise).
            _ = self.model
            self.state.save(self.epoch, self.step)

    def on_epoch_end(self, epoch, logs=None):
        if self.bad_step is not None:
            raise UserError(
                f"training diverged: non-finite loss at epoch {epoch + 1}, step "
                f"{self.bad_step}; the last good checkpoint is kept in "
                f"{os.path.dirname(self.state.path)}; lower the learning rate")


class Float32Student(keras.callbacks.Callback):
    """``model_f32``: the student as evaluation and checkpoints see it, in float32.
    Without mixed precision that is the student itself; with it, a float32 copy of the
    student's weights, refreshed at the end of every epoch."""

    def __init__(self, config: presets.TrainConfig, student):
        super().__init__()
        self.config = config
        self.student = student
        self.mixed = config.runtime.mixed_precision != "off"
        self.model_f32 = None if self.mixed else student

    def on_epoch_end(self, epoch, logs=None):
        if self.mixed:
            self.model_f32 = float32_copy(self.config, self.student, into=self.model_f32)


# The attack of the checkpoint selection: the RSLAD reference's PGD-20 (CE, uniform
# start, step 0.003 at 8/255), scaled to the config's epsilon.
SELECTION_ATTACK = "pgd_trades"


class PGD20Selection(keras.callbacks.Callback):
    """Checkpoint selection as in the RSLAD reference: on the selection epochs
    (`schedule.is_eval_epoch`) the clean and PGD-20 test accuracy of the float32 student;
    the best PGD-20 epoch so far is ``checkpoints/best.keras``. With a weight average
    attached (``average``, copied into the float32 ``ema_model``), the same for the
    average (``ema_best.keras``), and ``ema_last.keras`` every epoch.

    ``results``: the epoch's accuracies (history columns); ``marks``: the epoch's new
    bests ("best", "ema_best"). The best so far lives in ``state``. ``enabled`` False: no
    selection epoch at all (``ema_last.keras`` is still written)."""

    def __init__(self, config: presets.TrainConfig, student: Float32Student, x_test, y_test,
                 state: run_dir.ResumableState, *, ckpt_dir: str, eval_writer,
                 average=None, ema_model=None, refresh: CheckpointRefresh | None = None,
                 enabled: bool = True):
        super().__init__()
        self.config = config
        self.enabled = enabled
        self.student = student
        self.x_test, self.y_test = x_test, y_test
        self.state = state
        self.ckpt_dir = ckpt_dir
        self.eval_writer = eval_writer
        self.average = average
        self.ema_model = ema_model  # a float32 student the average is copied into
        self.refresh = refresh or CheckpointRefresh(config)
        self.results, self.marks = {}, set()

    def _accuracies(self, model):
        """(clean, PGD-20) test accuracy in percent."""
        from rslad_tf import attacks
        from rslad_tf.evaluation.core import accuracy_under_attack

        clean = accuracy_under_attack(model, self.x_test, self.y_test)
        robust = accuracy_under_attack(model, self.x_test, self.y_test,
                                       attack=attacks.PROTOCOL[SELECTION_ATTACK],
                                       eps=self.config.epsilon, seed=self.config.seed)
        return clean, robust

    def on_epoch_end(self, epoch, logs=None):
        from rslad_tf.methods import saving

        self.results, self.marks = {}, set()
        selecting = self.enabled and is_eval_epoch(self.config, epoch)
        if selecting:
            model = self.student.model_f32
            clean, robust = self._accuracies(model)
            self.results.update(clean_acc=clean, pgd20_acc=robust)
            if self.eval_writer is not None:  # TensorFlow's TensorBoard writer
                import tensorflow as tf

                with self.eval_writer.as_default():
                    tf.summary.scalar("clean_acc", clean, step=epoch)
                    tf.summary.scalar("pgd20_acc", robust, step=epoch)
            if robust > self.state.best[0]:
                self.state.best = (robust, epoch)
                saving.save_model(model, os.path.join(self.ckpt_dir, "best.keras"))
                self.marks.add("best")
        if self.average is not None:
            self.average.copy_to(self.ema_model)
            if selecting:
                clean, robust = self._accuracies(self.ema_model)
                self.results.update(ema_clean_acc=clean, ema_pgd20_acc=robust)
                if robust > self.state.ema_best[0]:
                    self.state.ema_best = (robust, epoch)
                    saving.save_model(self.ema_model,
                                      os.path.join(self.ckpt_dir, "ema_best.keras"))
                    self.marks.add("ema_best")
            if self.refresh.due(epoch):
                saving.save_model(self.ema_model,
                                  os.path.join(self.ckpt_dir, "ema_last.keras"))


class EpochRecord(keras.callbacks.Callback):
    """The end of each epoch: one ``history.csv`` row (lr, the training metrics, the
    teacher cache's hit rate, the selection's accuracies, seconds), ``last.keras`` when
    ``refresh`` says so, the resumable state (the next epoch, step 0), and one line through
    ``log``. ``history``
    holds the rows so far (those of a resumed run's finished epochs first)."""

    def __init__(self, config: presets.TrainConfig, student: Float32Student,
                 selection: PGD20Selection, state: run_dir.ResumableState, *,
                 out_dir: str, history: list[dict], teacher_cache=None,
                 refresh: CheckpointRefresh | None = None, log=print):
        super().__init__()
        self.config = config
        self.student = student
        self.selection = selection
        self.state = state
        self.ckpt_dir = run_dir.checkpoint_dir(out_dir)
        self.history_path = os.path.join(out_dir, run_dir.HISTORY_FILE)
        self.history = history
        self.teacher_cache = teacher_cache
        self.refresh = refresh or CheckpointRefresh(config)
        self.log = log
        self.started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()
        if self.teacher_cache is not None:
            self.teacher_cache.reset_counters()

    def on_epoch_end(self, epoch, logs=None):
        from rslad_tf.methods import saving

        config = self.config
        lr = learning_rate(config, epoch)
        row = {"epoch": epoch, "lr": lr}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        message = f"epoch {epoch + 1:>3}/{config.epochs}  loss {row['loss']:.4f}  " \
                  f"train-acc {100 * row['acc']:5.1f}%"
        if "zero_grad_frac" in row:
            message += f"  zero-grad {100 * row['zero_grad_frac']:.2f}%"
        if self.teacher_cache is not None:
            row["cache_hit_rate"] = self.teacher_cache.counters()["hit_rate"]
            message += f"  cache-hits {100 * row['cache_hit_rate']:5.1f}%"
        results, marks = self.selection.results, self.selection.marks
        row.update(results)
        if "pgd20_acc" in results:
            held_out = "val" if self.config.validation_fraction else "test"
            message += (f"  {held_out} clean {results['clean_acc']:5.1f}%  "
                        f"PGD-20 {results['pgd20_acc']:5.1f}%")
            if "best" in marks:
                message += "  *best*"
        if "ema_pgd20_acc" in results:
            message += (f"  EMA clean {results['ema_clean_acc']:5.1f}%  "
                        f"PGD-20 {results['ema_pgd20_acc']:5.1f}%")
            if "ema_best" in marks:
                message += "  *EMA best*"
        row["seconds"] = round(time.time() - self.started, 3)
        self.history.append(row)
        if self.refresh.due(epoch):
            saving.save_model(self.student.model_f32,
                              os.path.join(self.ckpt_dir, "last.keras"))
        self.state.save(epoch + 1, step=0)
        run_dir.write_history(self.history_path, self.history)
        self.log(message + f"  lr {lr:.3g}  {row['seconds']:.1f}s")
