"""Shared by the training components: preset lookup, overrides, and one training run
written as a Model artifact."""

from __future__ import annotations

import json
import os

from components.common import (RUN_SUBDIR, check_model_fits, model_file, model_info,
                               model_spec_overrides, tagged, write_model_artifact)
from rslad_tf.common import fileio
from rslad_tf.common.errors import UserError

CHECKPOINTS = ("best", "last")
# The paper's main student: its presets are the default where a dataset has several.
DEFAULT_STUDENT = "resnet18"


def teacher_preset_name(dataset: str) -> str:
    """The preset that trains the dataset's teacher (``digits-teacher`` for digits)."""
    from rslad_tf.config import presets

    names = presets.available()
    if f"{dataset}-teacher" in names:
        return f"{dataset}-teacher"
    for name in names:
        if name.startswith(f"{dataset}-"):
            teacher = presets.get(name).teacher_preset
            if teacher:
                return teacher
    raise UserError(f"no teacher preset for dataset {dataset!r}; presets: {', '.join(names)}")


def student_preset_name(dataset: str, method: str, model: str = "") -> str:
    """The student preset of ``method`` on ``dataset``: ``<dataset>-<model>-<method>`` when
    it exists, else ``<dataset>-<method>``, else ``<dataset>-resnet18-<method>``, else the
    first ``<dataset>-*-<method>`` (the caller then puts ``model`` into it)."""
    from rslad_tf.config import presets
    from rslad_tf.common import vocabulary

    if method not in vocabulary.METHOD_NAMES:
        raise UserError(f"unknown method {method!r}; choose one of: "
                        f"{', '.join(vocabulary.METHOD_NAMES)}")
    names = presets.available()
    candidates = ([f"{dataset}-{model}-{method}"] if model else []) + [
        f"{dataset}-{method}", f"{dataset}-{DEFAULT_STUDENT}-{method}"]
    for candidate in candidates:
        if candidate in names:
            return candidate
    for name in names:
        if name.startswith(f"{dataset}-") and name.endswith(f"-{method}"):
            return name
    raise UserError(f"no preset for method {method!r} on dataset {dataset!r}; presets: "
                    f"{', '.join(names)}")


def apply_overrides(config, manifest: dict, *, method: str = "", model: str = "",
                    epochs: int = 0, epsilon: float = 0.0, attack_steps: int = 0,
                    max_steps: int = 0, batch_size: int = 0, seed: int = 0,
                    eval_n_examples: int = 0, sets: dict | None = None,
                    what: str = ""):
    """The preset with the pipeline's overrides (0 / "" keep the preset's value), applied
    by `rslad_tf.config.overrides.apply`: the same rule as ``python -m rslad_tf.train``. A new
    ``method`` starts from its reference settings; a new ``epochs`` scales the LR
    milestones, the selection interval and IAD's warm-up with it; a new ``epsilon`` keeps
    the preset's step / eps ratio. ``sets``: ``--set`` keys of a sweep's grid cell, applied
    in the same call and winning over the values above; ``what`` names them in errors."""
    from rslad_tf.config import overrides
    from rslad_tf.config.presets import PresetError

    if int(seed) < 0:
        raise UserError(f"seed must be non-negative, got {seed}")
    changes = {"dataset": manifest["dataset"], "data_dir": manifest.get("data_dir"),
               "seed": int(seed), "method": method or None, **model_spec_overrides(model),
               "epochs": int(epochs) or None, "epsilon": float(epsilon) or None,
               "attack_steps": int(attack_steps) or None, "max_steps": int(max_steps) or None,
               "batch_size": int(batch_size) or None,
               "eval_n_examples": int(eval_n_examples) or None}
    changes.update(sets or {})
    try:
        return overrides.apply(config, changes)
    except PresetError as exc:
        raise UserError(f"{what}: {exc}" if what else str(exc)) from None


def describe_model(config) -> str:
    """``small_cnn(width=16)``: the model name as tables show it."""
    if not config.model_kwargs:
        return config.model
    args = ",".join(f"{k}={v}" for k, v in sorted(config.model_kwargs.items()))
    return f"{config.model}({args})"


def load_model_artifact(path: str, what: str = "model"):
    """(Keras model, .keras path, info) of a Model artifact, its SHA-256 checked against the
    one recorded when it was written (so a file changed between steps is refused)."""
    from rslad_tf.methods import saving

    keras_path = model_file(path, what)
    info = model_info(path)
    model = saving.load_model(keras_path, what=what, expected_sha256=info.get("sha256"))
    return model, keras_path, info


def run_training(config, out_dir: str, *, role: str, teacher=None, teacher_info=None,
                 checkpoint: str = "best", extra_info: dict | None = None,
                 log=print) -> dict:
    """Train ``config`` with the run directory in ``out_dir/run``, then put the chosen
    checkpoint into ``out_dir/model.keras``. Returns the artifact's info (``extra_info``
    added to it, e.g. a sweep's grid cell)."""
    from rslad_tf.training import loop as training

    if checkpoint not in CHECKPOINTS:
        raise UserError(f"unknown checkpoint {checkpoint!r}; choose best or last")
    if fileio.holds_something(out_dir):
        raise UserError(f"model artifact directory {out_dir!r} is not empty")
    run_dir = os.path.join(out_dir, RUN_SUBDIR)
    tag = config.method if role == "student" else role
    select = checkpoint == "best"
    if not select:
        # Nothing here reads the best checkpoint, and the evaluation steps measure the last
        # one on the whole test set: no selection evaluation (it never changes the
        # training; at the last epoch alone it cost a width-4 digits student about 3 s
        # of its 30-90 s on one core, most of it tracing the PGD-20 attack).
        tagged(log, tag)("checkpoint last: no selection evaluation (the evaluation steps "
                         "measure the last checkpoint)")
    summary = training.train(config, run_dir, teacher=teacher, final_eval=False,
                             select=select, log=tagged(log, tag))
    source = os.path.join(run_dir, "checkpoints", f"{checkpoint}.keras")
    if not os.path.isfile(source):
        raise UserError(f"training wrote no {checkpoint} checkpoint in {run_dir}")
    info = {"role": role, "method": config.method, "model": config.model,
            "model_kwargs": config.model_kwargs, "model_name": describe_model(config),
            "preset": config.preset, "dataset": config.dataset, "epochs": config.epochs,
            "seed": config.seed, "epsilon": config.epsilon, "checkpoint": checkpoint,
            "best_epoch": summary.get("best_epoch"),
            "best_pgd20_acc": summary.get("best_pgd20_acc"),
            "last_clean_acc": summary.get("last_clean_acc"),
            "last_pgd20_acc": summary.get("last_pgd20_acc")}
    if teacher_info:
        info["teacher_sha256"] = teacher_info.get("sha256")
        info["teacher_model"] = teacher_info.get("model_name") or teacher_info.get("model")
    info.update(extra_info or {})
    return write_model_artifact(out_dir, source, info)


def load_teacher_artifact(path: str, manifest: dict):
    """The teacher of a Model artifact, checked (SHA-256, input shape, classes)."""
    teacher, keras_path, info = load_model_artifact(path, "teacher")
    check_model_fits(teacher, manifest, keras_path, "teacher")
    teacher.trainable = False
    return teacher, dict(info, path=keras_path)


def dump(info: dict) -> str:
    return json.dumps(info, indent=2, sort_keys=True, default=str)
