"""import_teacher: the teacher every student distils from, checked.

Either fetches a ``.keras`` teacher from ``uri`` (a local path, ``file://``, ``http(s)://``,
or any scheme TensorFlow's file system reads, e.g. ``gs://``) or, when no URI is given,
takes the teacher that ``train_teacher`` trained in this run. Either way the file must
match ``expected_sha256`` when one is given (checked before the file is loaded), must load
as a Keras model in safe mode, and must fit the dataset (input shape, classes).
PyTorch checkpoints are not loaded here: convert them first with
``python -m rslad_tf.convert_teacher``.
"""

# No `from __future__ import annotations`: kfp reads the wrapper's annotations as types.
import os

from kfp.dsl import Dataset, Input, Model, Output

from components.common import component
from rslad_tf.common.errors import UserError

INCOMING_FILE = "incoming.keras"


def import_teacher_fn(dataset_dir: str, out_dir: str, *, uri: str = "",
                      expected_sha256: str = "", trained_dir: str = "", method: str = "",
                      log=print) -> dict:
    """Write the checked teacher into the Model artifact ``out_dir``; returns its info.
    ``method``: how a fetched teacher was trained, recorded for the report's teacher row
    (a teacher trained in this run records its own)."""
    from rslad_tf import models
    from rslad_tf.common import fileio
    from rslad_tf.methods import saving

    from components.common import (check_model_fits, ensure_empty_dir, fetch, model_file,
                                   model_info, normalise_sha256, read_dataset,
                                   write_model_artifact)

    expected = normalise_sha256(expected_sha256)
    uri = (uri or "").strip()
    if uri.lower().endswith((".pt", ".pth", ".ckpt", ".bin")):
        raise UserError(f"teacher {uri!r} looks like a PyTorch checkpoint; convert it to .keras "
                   "first with `python -m rslad_tf.convert_teacher`")
    if not uri and not trained_dir:
        raise UserError("no teacher: give teacher_uri, or train one in the pipeline")
    manifest = read_dataset(dataset_dir)
    ensure_empty_dir(out_dir, "teacher artifact")
    if uri:
        # The report's Checkpoint column names the file, not this step's artifact path.
        source, info = uri, {"role": "teacher", "source": uri, "method": method or None,
                             "checkpoint": os.path.basename(uri.rstrip("/")) or None}
        # Keras reads only files named *.keras; renamed to model.keras once checked.
        local = os.path.join(out_dir, INCOMING_FILE)
        log(f"fetching teacher {uri}")
        fetch(uri, local, "teacher")
    else:
        local = model_file(trained_dir, "trained teacher")
        source = local
        info = dict(model_info(trained_dir), source="trained in this pipeline")
        # The trained artifact's own record guards it from changes between steps.
        if expected is None and info.get("sha256"):
            recorded = info["sha256"]
            if fileio.sha256(local) != recorded:
                raise UserError(f"trained teacher {local!r} changed since train_teacher wrote it "
                           f"(SHA-256 differs from {recorded})")
    try:
        teacher = saving.load_model(local, what="teacher", expected_sha256=expected)
        check_model_fits(teacher, manifest, source, "teacher")
    except BaseException:
        if uri and os.path.exists(local):
            os.remove(local)
        raise
    if expected:
        log(f"teacher SHA-256 matches {expected}")
    info.update(role="teacher", expected_sha256=expected, dataset=manifest["dataset"],
                model_name=info.get("model_name") or teacher.name,
                params=models.trainable_parameters(teacher))
    info = write_model_artifact(out_dir, local, info, copy=not uri)
    log(f"teacher {info['model_name']} ({info['params']:,} trainable parameters), SHA-256 "
        f"{info['sha256']}")
    return info


@component
def import_teacher(data: Input[Dataset], trained: Input[Model], teacher: Output[Model],
                   uri: str = "", expected_sha256: str = "", method: str = ""):
    """The checked teacher: fetched from ``uri``, or the one trained in this run."""
    from components.common import configure_runtime, metadata_for_kfp
    from components.import_teacher import import_teacher_fn

    configure_runtime()
    info = import_teacher_fn(data.path, teacher.path, uri=uri,
                             expected_sha256=expected_sha256, trained_dir=trained.path,
                             method=method)
    teacher.metadata.update(metadata_for_kfp(info))
