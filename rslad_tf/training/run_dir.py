"""The run directory (``--out``, default ``runs/<preset>``) and what it holds:

    config.json              the resolved configuration (`TrainConfig.to_dict`, flat)
    history.csv              per epoch: loss terms, train acc, clean / PGD-20 test acc, lr, seconds
    checkpoints/best.keras   the student with the best PGD-20 test accuracy (reference rule)
    checkpoints/last.keras   the student after the last epoch
    checkpoints/state.npz    everything needed to resume exactly (weights, optimizer, RNG, epoch,
                             and the weight average when ``ema_decay`` is set)
    checkpoints/ema_best.keras, ema_last.keras   the student's weight average (``ema_decay``):
                             best by its own PGD-20 accuracy, and after the last epoch
    tensorboard/             Keras' TensorBoard logs (and eval/ scalars)

A run never overwrites an existing run directory unless it is resumed. Every file is
written atomically (`rslad_tf.common.fileio`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile

import numpy as np

from rslad_tf.common import fileio
from rslad_tf.common.errors import UserError
from rslad_tf.config import presets

DEFAULT_RUNS_DIR = "runs"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
CHECKPOINTS = "checkpoints"
STATE_FILE = "state.npz"
HISTORY_FIELDS_HEAD = ["epoch", "lr"]
HISTORY_FIELDS_TAIL = ["clean_acc", "pgd20_acc", "seconds"]
NO_BEST = (-1.0, -1)  # (PGD-20 accuracy, epoch) before any selection epoch


def default_out_dir(preset: str, runs_dir: str = DEFAULT_RUNS_DIR) -> str:
    """Where a preset's run lives when no ``--out`` is given: ``runs_dir/<preset>``."""
    return os.path.join(runs_dir, preset)


def checkpoint_dir(out_dir: str) -> str:
    return os.path.join(out_dir, CHECKPOINTS)


def teacher_checkpoint(run_dir: str) -> str:
    """The teacher file a finished teacher run provides: its best checkpoint."""
    return os.path.join(checkpoint_dir(run_dir), "best.keras")


def find_teacher(config: presets.TrainConfig, runs_dir: str = DEFAULT_RUNS_DIR) -> str:
    """Path of the teacher file for a distillation config; `UserError` saying how to get one."""
    teacher_path = config.runtime.teacher_path
    if teacher_path:
        if not os.path.isfile(teacher_path):
            raise UserError(f"teacher file {teacher_path!r} does not exist")
        return teacher_path
    if config.teacher_preset:
        path = teacher_checkpoint(default_out_dir(config.teacher_preset, runs_dir))
        if os.path.isfile(path):
            return path
        how = config.teacher_hint or (f"train one with `python -m rslad_tf.train --preset "
                                      f"{config.teacher_preset}` or pass --teacher PATH")
        raise UserError(f"no teacher found at {path}: {how}")
    how = config.teacher_hint or "pass --teacher PATH"
    raise UserError(f"preset {config.preset!r} ({config.method}) needs a teacher: {how}")


def prepare_out_dir(out_dir: str, resume: bool) -> None:
    """Refuse to touch an existing run unless resuming; refuse to resume a missing one."""
    has_run = os.path.exists(os.path.join(out_dir, CONFIG_FILE))
    if resume:
        if not has_run:
            raise UserError(f"cannot resume: {out_dir!r} holds no run (no config.json)")
        return
    if has_run:
        raise UserError(f"{out_dir!r} already holds a run; pass --resume to continue it or "
                        "choose another --out")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise UserError(f"{out_dir!r} exists and is not empty; choose another --out")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir!r} exists and is not a directory; choose another --out")


def write_config(out_dir: str, config: presets.TrainConfig) -> None:
    fileio.write_json(os.path.join(out_dir, CONFIG_FILE), config.to_dict())


def read_config(out_dir: str) -> presets.TrainConfig:
    """The run's saved configuration (flat ``config.json`` of this or an earlier version)."""
    with open(os.path.join(out_dir, CONFIG_FILE)) as f:
        return presets.TrainConfig.from_dict(json.load(f))


def write_history(path: str, rows: list[dict]) -> None:
    """``history.csv``: epoch and lr first, the selection accuracies and seconds last, every
    other column (loss terms, train accuracy, ...) in the order it first appears."""
    fields = HISTORY_FIELDS_HEAD[:]
    for row in rows:
        for key in row:
            if key not in fields and key not in HISTORY_FIELDS_TAIL:
                fields.append(key)
    fields += HISTORY_FIELDS_TAIL
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(path, buf.getvalue())


def read_history(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def last_value(history: list[dict], key: str) -> float | None:
    """The last non-empty ``key`` of the history rows (None if it never had one)."""
    for row in reversed(history):
        if row.get(key) not in (None, ""):
            return float(row[key])
    return None


class ResumableState:
    """``checkpoints/state.npz``: everything needed to continue a run exactly (student
    weights, optimizer slots, the method's seed generator, the next epoch and step, the
    best selection results so far, and the weight average when one is attached).

    ``best`` and ``ema_best`` are (PGD-20 accuracy, epoch) of the best selection epoch so
    far; the selection callback updates them and every save records them."""

    def __init__(self, path: str, method):
        self.path = path
        self.method = method
        self.best = NO_BEST
        self.ema_best = NO_BEST

    def save(self, epoch: int, step: int = 0) -> None:
        """Record the state with ``epoch``/``step`` as the next step to run."""
        method = self.method
        arrays = {f"w{i}": np.asarray(v) for i, v in enumerate(method.student.weights)}
        if method.weight_average is not None:
            arrays.update(method.weight_average.state())
            arrays["ema_best_pgd"] = np.asarray(self.ema_best[0])
            arrays["ema_best_epoch"] = np.asarray(self.ema_best[1])
        arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(method.optimizer.variables)})
        arrays["seed_state"] = np.asarray(method.seed_generator.state)
        arrays["epoch"] = np.asarray(epoch)
        arrays["step"] = np.asarray(step)
        arrays["best_pgd"] = np.asarray(self.best[0])
        arrays["best_epoch"] = np.asarray(self.best[1])
        fileio.write_npz(self.path, arrays)

    def load(self) -> tuple[int, int]:
        """Restore the saved state into the method; returns the (epoch, step) to run next.
        `UserError` when the file is unreadable or belongs to another configuration."""
        method = self.method
        try:
            with np.load(self.path, allow_pickle=False) as state:
                for i, v in enumerate(method.student.weights):
                    v.assign(state[f"w{i}"])
                for i, v in enumerate(method.optimizer.variables):
                    v.assign(state[f"o{i}"])
                method.seed_generator.state.assign(state["seed_state"])
                ema_best = NO_BEST
                if method.weight_average is not None:
                    method.weight_average.restore(state)
                    ema_best = (float(state["ema_best_pgd"]), int(state["ema_best_epoch"]))
                self.best = (float(state["best_pgd"]), int(state["best_epoch"]))
                self.ema_best = ema_best
                return int(state["epoch"]), int(state["step"])
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"cannot resume: training state {self.path!r} is unreadable or "
                            f"does not match this configuration ({exc})") from None
