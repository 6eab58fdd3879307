"""distill_student: train the student with one method of the toolkit (natural, sat,
trades, ard, iad, rslad) from the dataset's student preset; ARD, IAD and RSLAD distil from
the teacher artifact, the others ignore it."""

# No `from __future__ import annotations`: kfp reads the wrapper's annotations as types.
from kfp.dsl import Dataset, Input, Model, Output

from components.common import component


def distill_student_fn(dataset_dir: str, out_dir: str, *, method: str, teacher_dir: str = "",
                       model: str = "", epochs: int = 0, epsilon: float = 0.0,
                       attack_steps: int = 0, max_steps: int = 0, batch_size: int = 0,
                       seed: int = 0, eval_n_examples: int = 0, checkpoint: str = "best",
                       teacher_cache: bool = False, overrides: str = "", grid_cell: str = "",
                       log=print) -> dict:
    """Train the ``method`` student into the Model artifact ``out_dir``; returns its info.

    ``model``: ``""`` for the preset's student (``small_cnn:width=16`` on digits) or a spec
    such as ``resnet18``. Numeric overrides of 0 keep the preset's values. ``overrides``:
    a sweep's grid cell, a JSON object of ``--set`` keys (`components.plan_sweep`) applied
    last; ``grid_cell``: its label, recorded in the artifact's info (and so in its evals).
    ``teacher_cache``: the teacher's logits on the clean training images computed once and
    reused (``--teacher-cache``), for the methods whose soft labels they are (ARD, IAD,
    RSLAD; ignored for the others).
    """
    from rslad_tf.config import presets
    from rslad_tf.common import vocabulary
    from rslad_tf.common.errors import UserError

    from components.common import parse_model_spec, read_dataset
    from components.plan_sweep import cell_label, parse_grid
    from components.training import (apply_overrides, load_teacher_artifact, run_training,
                                     student_preset_name)

    if method not in vocabulary.METHOD_NAMES:
        raise UserError(f"unknown method {method!r}; choose one of: "
                        f"{', '.join(vocabulary.METHOD_NAMES)}")
    model_name, _ = parse_model_spec(model)
    # The cell's keys checked as the pipeline's grid parameter is, before any data is read.
    cell_overrides = parse_grid(f"[{overrides}]")[0] if overrides.strip() else {}
    grid_cell = grid_cell or cell_label(cell_overrides)
    manifest = read_dataset(dataset_dir)
    config = presets.get(student_preset_name(manifest["dataset"], method, model_name))
    config = apply_overrides(config, manifest, model=model, epochs=epochs, epsilon=epsilon,
                             attack_steps=attack_steps, max_steps=max_steps,
                             batch_size=batch_size, seed=seed,
                             eval_n_examples=eval_n_examples, sets=cell_overrides,
                             what=f"grid cell {grid_cell!r}" if cell_overrides else "")
    teacher, teacher_info = None, None
    if config.needs_teacher:
        if not teacher_dir:
            raise UserError(f"method {method!r} distils from a teacher: pass a teacher Model "
                            "artifact")
        teacher, teacher_info = load_teacher_artifact(teacher_dir, manifest)
        config = config.replace(teacher_path=teacher_info["path"])
        if teacher_cache and method in vocabulary.TEACHER_CACHE_METHODS:
            config = config.replace(teacher_cache=True)
        log(f"teacher {teacher_info.get('model_name', teacher.name)} "
            f"(SHA-256 {teacher_info.get('sha256')})")
    extra = {"grid_cell": grid_cell, "overrides": cell_overrides} if cell_overrides else None
    return run_training(config, out_dir, role="student", teacher=teacher,
                        teacher_info=teacher_info, checkpoint=checkpoint, extra_info=extra,
                        log=log)


@component
def distill_student(data: Input[Dataset], teacher: Input[Model], student: Output[Model],
                    method: str, model: str = "", epochs: int = 0, epsilon: float = 0.0,
                    attack_steps: int = 0, max_steps: int = 0, batch_size: int = 0,
                    seed: int = 0, eval_n_examples: int = 0, checkpoint: str = "best",
                    teacher_cache: bool = False, device_type: str = "", device_count: int = 0,
                    overrides: str = "", grid_cell: str = ""):
    """Train one student with ``method`` (distilling from ``teacher`` where the method does);
    ``overrides`` / ``grid_cell``: a sweep's grid cell (`components.plan_sweep`)."""
    from components.common import configure_runtime, metadata_for_kfp, report_device
    from components.distill_student import distill_student_fn

    configure_runtime(attack_shards="auto")
    report_device(device_type, device_count)
    info = distill_student_fn(data.path, student.path, method=method, teacher_dir=teacher.path,
                              model=model, epochs=epochs, epsilon=epsilon,
                              attack_steps=attack_steps, max_steps=max_steps,
                              batch_size=batch_size, seed=seed,
                              eval_n_examples=eval_n_examples, checkpoint=checkpoint,
                              teacher_cache=teacher_cache, overrides=overrides,
                              grid_cell=grid_cell)
    student.metadata.update(metadata_for_kfp(info))
