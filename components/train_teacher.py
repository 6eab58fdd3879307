"""train_teacher: adversarial training of a teacher (TRADES or SAT) from the dataset's
teacher preset; train_surrogate: the same for the black-box surrogate (SAT, another model
and seed than the students, see ``SURROGATE_MODELS``).

When the pipeline is given a teacher to import (``teacher_uri``), this step trains nothing
and writes only ``skipped.json``; ``import_teacher`` then fetches the file. (kfp 2.17's
local runner cannot resolve ``dsl.OneOf`` over artifacts, so the pipeline chains the two
steps instead of branching with ``dsl.If``/``dsl.Else``: one graph for cluster and laptop.)
"""

# No `from __future__ import annotations`: kfp reads the wrapper's annotations as types.
import os

from kfp.dsl import Dataset, Input, Model, Output

from components.common import SKIPPED_FILE, component

TEACHER_METHODS = ("trades", "sat")
ROLES = ("teacher", "surrogate")
# The black-box surrogate when none is named: another architecture or width than the
# students (ResNet-50 in the paper for CIFAR-10), trained with another seed.
SURROGATE_MODELS = {"digits": "small_cnn:width=32"}
DEFAULT_SURROGATE_MODEL = "resnet50"


def train_teacher_fn(dataset_dir: str, out_dir: str, *, method: str = "trades",
                     model: str = "", teacher_uri: str = "", role: str = "teacher",
                     epochs: int = 0, epsilon: float = 0.0, attack_steps: int = 0,
                     max_steps: int = 0, batch_size: int = 0, seed: int = 0,
                     eval_n_examples: int = 0, checkpoint: str = "best", log=print) -> dict:
    """Train a robust model into the Model artifact ``out_dir``; returns its info.

    The teacher starts from the dataset's teacher preset (``digits-teacher``,
    ``cifar10-wrn34-10-trades``); the surrogate (``role="surrogate"``) from the dataset's
    ``method`` preset of its architecture (``cifar10-resnet50-sat``). ``model``: ``""`` for
    the default (the teacher preset's model; for the surrogate ``SURROGATE_MODELS``) or a
    spec such as ``small_cnn:width=32``. Numeric overrides of 0 keep the preset's values.
    """
    from rslad_tf.common import fileio
    from rslad_tf.config import presets
    from rslad_tf.common.errors import UserError

    from components.common import ensure_empty_dir, parse_model_spec, read_dataset
    from components.training import (apply_overrides, run_training, student_preset_name,
                                     teacher_preset_name)

    if method not in TEACHER_METHODS:
        raise UserError(f"unknown teacher method {method!r}; a teacher is trained with one "
                        f"of: {', '.join(TEACHER_METHODS)}")
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    if teacher_uri:
        ensure_empty_dir(out_dir, "teacher artifact")
        info = {"role": role, "skipped": True,
                "reason": f"teacher imported from {teacher_uri} by import_teacher"}
        fileio.write_json(os.path.join(out_dir, SKIPPED_FILE), info)
        log(f"not training a {role}: it is imported from {teacher_uri}")
        return info
    manifest = read_dataset(dataset_dir)
    if role == "surrogate":
        # A robust model of the students' kind: the dataset's SAT (or TRADES) preset for
        # the surrogate's architecture (cifar10-resnet50-sat), another model and seed.
        model = model or SURROGATE_MODELS.get(manifest["dataset"], DEFAULT_SURROGATE_MODEL)
        config = presets.get(student_preset_name(manifest["dataset"], method,
                                                 parse_model_spec(model)[0]))
    else:
        config = presets.get(teacher_preset_name(manifest["dataset"]))
    config = apply_overrides(config, manifest, method=method, model=model, epochs=epochs,
                             epsilon=epsilon, attack_steps=attack_steps, max_steps=max_steps,
                             batch_size=batch_size, seed=seed,
                             eval_n_examples=eval_n_examples)
    if role == "surrogate":
        config = config.replace(preset=f"{config.preset}-surrogate", teacher_preset=None)
    return run_training(config, out_dir, role=role, checkpoint=checkpoint, log=log)


@component
def train_teacher(data: Input[Dataset], teacher: Output[Model], method: str = "trades",
                  model: str = "", teacher_uri: str = "", epochs: int = 0,
                  epsilon: float = 0.0, attack_steps: int = 0, max_steps: int = 0,
                  batch_size: int = 0, seed: int = 0, eval_n_examples: int = 0,
                  checkpoint: str = "best",
                  device_type: str = "", device_count: int = 0):
    """Adversarially train the teacher into a Model artifact (skipped with ``teacher_uri``)."""
    from components.common import configure_runtime, metadata_for_kfp, report_device
    from components.train_teacher import train_teacher_fn

    # An imported teacher trains nothing here: no TensorFlow (8 s of start-up on 2 cores).
    configure_runtime(tensorflow=not teacher_uri, attack_shards="auto")
    if not teacher_uri:
        report_device(device_type, device_count)
    info = train_teacher_fn(data.path, teacher.path, method=method, model=model,
                            teacher_uri=teacher_uri, role="teacher", epochs=epochs,
                            epsilon=epsilon, attack_steps=attack_steps, max_steps=max_steps,
                            batch_size=batch_size, seed=seed,
                            eval_n_examples=eval_n_examples, checkpoint=checkpoint)
    teacher.metadata.update(metadata_for_kfp(info))


@component
def train_surrogate(data: Input[Dataset], surrogate: Output[Model], method: str = "sat",
                    model: str = "", epochs: int = 0, epsilon: float = 0.0,
                    attack_steps: int = 0, max_steps: int = 0, batch_size: int = 0,
                    seed: int = 1, eval_n_examples: int = 0, checkpoint: str = "best",
                    transfer_attacks: str = "", transfer_n_examples: int = 0,
                    transfer_epsilon: float = 0.0, transfer_batch_size: int = 256,
                    transfer_seed: int = 0, device_type: str = "", device_count: int = 0):
    """Adversarially train the surrogate the black-box transfer attacks are crafted on,
    then craft the transfer images of ``transfer_attacks`` (the black-box step's columns)
    with the evaluation's settings once, into the artifact ("" = none)."""
    from components.common import configure_runtime, metadata_for_kfp, report_device
    from components.evaluation import craft_transfer_examples
    from components.train_teacher import train_teacher_fn

    configure_runtime(attack_shards="auto")
    report_device(device_type, device_count)
    info = train_teacher_fn(data.path, surrogate.path, method=method, model=model,
                            role="surrogate", epochs=epochs, epsilon=epsilon,
                            attack_steps=attack_steps, max_steps=max_steps,
                            batch_size=batch_size, seed=seed,
                            eval_n_examples=eval_n_examples, checkpoint=checkpoint)
    craft_transfer_examples(data.path, surrogate.path, attacks=transfer_attacks,
                            n_examples=transfer_n_examples, epsilon=transfer_epsilon,
                            batch_size=transfer_batch_size, seed=transfer_seed)
    surrogate.metadata.update(metadata_for_kfp(info))
