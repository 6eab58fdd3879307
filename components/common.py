"""What every component shares: the image, artifact layouts, and parsing of parameters.

Artifact layouts (each output artifact's ``path`` is a local path without suffix; on a
cluster it is the mounted object-store location):

- **Dataset** (``prepare_data``): a directory holding ``dataset.json``, a manifest that
  names the dataset and where it is read from (``data_dir``), its shapes and class count,
  and SHA-256 fingerprints of the train and test arrays. Training and evaluation read the
  data by name through `rslad_tf.data.load_numpy`, so the artifact is a checked
  *reference*: every consumer re-loads the test split and refuses to go on when its
  fingerprint differs from the one prepared (a different or changed ``data_dir``).
- **Model** (``train_teacher``, ``import_teacher``, ``distill_student``): a directory
  holding ``model.keras`` (the network alone, loadable with `keras.saving.load_model`)
  and ``model.json`` (role, method, model, dataset, SHA-256 of ``model.keras``); a trained
  model's artifact also keeps the whole run directory under ``run/`` (``config.json``,
  ``history.csv``, both checkpoints, TensorBoard logs).

Each component module holds a plain function (``<name>_fn``) that does the work and is
unit-tested directly, and a kfp wrapper whose body imports that function from this
package: kfp serialises only the wrapper's own source, so every step must be able to
import ``components``. It is a folder of the repository, not an installed package: the
image has it on ``PYTHONPATH`` (see the ``Dockerfile``), and the local runner puts the
repository's root there (`pipelines.rslad_pipeline.run_local`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

from rslad_tf.common import vocabulary
from rslad_tf.common.errors import UserError

# The one image every component runs in; override with RSLAD_TF_IMAGE or `--image`.
DEFAULT_IMAGE = "rslad-tf:0.1.0"
IMAGE_ENV = "RSLAD_TF_IMAGE"

DATASET_MANIFEST = "dataset.json"
DATASET_FORMAT = "rslad_tf.dataset/1"
MODEL_FILE = "model.keras"
MODEL_INFO = "model.json"
SKIPPED_FILE = "skipped.json"
RUN_SUBDIR = "run"

# The attacks of the two evaluation steps (`rslad_tf.common.vocabulary`'s columns).
WHITEBOX_ATTACKS = vocabulary.WHITE_BOX_SUITE
BLACKBOX_ATTACKS = vocabulary.BLACK_BOX_COLUMNS


def image() -> str:
    """The component image: ``$RSLAD_TF_IMAGE`` or the default."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def component(func=None, *, base_image: str | None = None):
    """``kfp.dsl.component`` with our image and no run-time installs (the image has kfp,
    TensorFlow and this package). Usable as ``@component`` or ``component(f, base_image=)``."""
    def wrap(f):
        if os.environ.get("_KFP_RUNTIME", "false") == "true":
            # Inside a running step kfp loads only its executor (no `dsl.component`); the
            # step calls the plain functions, so the modules need no components there.
            return f
        from kfp import dsl

        return dsl.component(f, base_image=base_image or image(), install_kfp_package=False)

    return wrap(func) if func is not None else wrap


def configure_runtime(tensorflow: bool = True, attack_shards="1") -> None:
    """Line-buffered progress and, for steps that use TensorFlow, thread pools sized to the
    machine and quiet C++ logs (``tensorflow=False`` spares a step the import).
    ``attack_shards``: see `rslad_tf.common.runtime.configure` (training steps pass "auto")."""
    import sys

    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if tensorflow:
        from rslad_tf.common import runtime

        runtime.configure(attack_shards=runtime.parse_attack_shards(attack_shards))


def tagged(log, tag: str):
    """``log`` with every line prefixed by ``[tag]``: steps that run at once (the methods
    of the parallel loop) stay tellable apart in a shared log."""
    if log is None:
        return None

    def write(message="", *args, **kwargs):
        text = str(message)
        log("\n".join(f"[{tag}] {line}" for line in text.split("\n")), *args, **kwargs)

    return write


# -- parameters ------------------------------------------------------------------------
def parse_list(text: str, allowed, what: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``, every item checked against ``allowed``."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise UserError(f"no {what} given; choose from: {', '.join(allowed)}")
    bad = [s for s in items if s not in allowed]
    if bad:
        raise UserError(f"unknown {what} {bad[0]!r}; choose from: {', '.join(allowed)}")
    return items


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """``"small_cnn:width=32"`` -> ``("small_cnn", {"width": 32})``; ``""`` -> ``("", {})``.

    Values are parsed as JSON when they can be (numbers, booleans), else kept as text.
    """
    spec = (spec or "").strip()
    if not spec:
        return "", {}
    name, _, rest = spec.partition(":")
    name = name.strip()
    kwargs = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"bad model spec {spec!r}: expected NAME[:key=value,...], "
                            f"e.g. small_cnn:width=32")
        try:
            kwargs[key.strip()] = json.loads(value)
        except ValueError:
            kwargs[key.strip()] = value.strip()
    from rslad_tf import backends

    backends.import_keras()  # TensorFlow's start-up lines kept quiet (TensorFlow only)
    from rslad_tf import models

    if name not in models.available():
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(models.available())}")
    return name, kwargs


def model_spec_overrides(spec: str) -> dict:
    """``"small_cnn:width=32"`` as overrides of `rslad_tf.config.overrides.apply`:
    ``{"model": "small_cnn", "model_kwargs.width": 32}`` (``{}`` for ``""``). The kwargs
    are merged into the preset's when the name is the preset's own model, and replace
    them otherwise (a new model starts without keyword arguments)."""
    name, kwargs = parse_model_spec(spec)
    if not name:
        return {}
    return {"model": name, **{f"model_kwargs.{k}": v for k, v in kwargs.items()}}


# -- dataset artifacts -----------------------------------------------------------------
def fingerprint(images, labels) -> str:
    """SHA-256 over the float32 images and int32 labels of a split (shape included)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    images = np.ascontiguousarray(images, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    digest.update(repr((images.shape, labels.shape)).encode())
    digest.update(images.tobytes())
    digest.update(labels.tobytes())
    return digest.hexdigest()


def read_dataset(path: str, *, verify: bool = True) -> dict:
    """The manifest of a Dataset artifact written by ``prepare_data``.

    ``verify``: re-load the test split and compare its fingerprint, so a step never trains
    or evaluates on other data than the pipeline prepared.
    """
    manifest_path = os.path.join(path, DATASET_MANIFEST)
    if not os.path.isfile(manifest_path):
        raise UserError(f"{path!r} is not a dataset artifact of prepare_data "
                        f"(no {DATASET_MANIFEST} in it)")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"dataset manifest {manifest_path!r} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != DATASET_FORMAT:
        raise UserError(f"{manifest_path!r} is not a {DATASET_FORMAT} manifest")
    if verify:
        from rslad_tf.data import load_numpy

        x, y = load_numpy(manifest["dataset"], "test", manifest.get("data_dir"))
        if fingerprint(x, y) != manifest["test_fingerprint"]:
            raise UserError(
                f"the {manifest['dataset']} test split read now differs from the one "
                f"prepare_data fingerprinted (data_dir {manifest.get('data_dir')!r}); every "
                "step must see the same data")
    return manifest


# -- model artifacts -------------------------------------------------------------------
def model_file(path: str, what: str = "model") -> str:
    """The ``.keras`` file inside a Model artifact (or ``path`` itself if it is one)."""
    if os.path.isfile(path) and path.endswith(".keras"):
        return path
    candidate = os.path.join(path, MODEL_FILE)
    if os.path.isfile(candidate):
        return candidate
    if os.path.isfile(os.path.join(path, SKIPPED_FILE)):
        raise UserError(f"{what} artifact {path!r} holds no model: its step was skipped "
                        "(see its skipped.json)")
    raise UserError(f"{what} artifact {path!r} holds no {MODEL_FILE}; pass a Model artifact "
                    "of train_teacher, import_teacher or distill_student")


def model_info(path: str) -> dict:
    """``model.json`` of a Model artifact ({} when absent)."""
    info_path = os.path.join(path, MODEL_INFO) if os.path.isdir(path) else None
    if info_path and os.path.isfile(info_path):
        try:
            with open(info_path) as f:
                info = json.load(f)
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}
    return {}


def write_model_artifact(out_dir: str, keras_file: str, info: dict, *,
                         copy: bool = True) -> dict:
    """Put ``keras_file`` into the artifact directory as ``model.keras`` with ``model.json``;
    returns the info with the file's SHA-256 added."""
    from rslad_tf.common import fileio

    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, MODEL_FILE)
    if os.path.abspath(keras_file) != os.path.abspath(target):
        tmp = target + ".partial"
        (shutil.copyfile if copy else shutil.move)(keras_file, tmp)
        os.replace(tmp, target)
    info = dict(info, sha256=fileio.sha256(target), file=MODEL_FILE)
    fileio.write_json(os.path.join(out_dir, MODEL_INFO), info)
    return info


def check_model_fits(model, manifest: dict, path: str, what: str = "model") -> None:
    """The model takes the dataset's images and predicts its classes."""
    from rslad_tf import data

    # The shapes the manifest recorded when the data were prepared.
    prepared = dataclasses.replace(data.spec(manifest["dataset"]),
                                   image_shape=tuple(manifest["image_shape"]),
                                   num_classes=manifest["num_classes"])
    data.check_model_fits(model, prepared, f"{what} {path!r}",
                          f"pass a {what} trained on {manifest['dataset']}")


def metadata_for_kfp(info: dict) -> dict:
    """Artifact metadata: JSON scalars only (kfp stores it as a protobuf Struct)."""
    out = {}
    for key, value in info.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        else:
            out[key] = json.dumps(value, sort_keys=True)
    return out


def ensure_empty_dir(path: str, what: str = "output") -> None:
    """Create ``path`` as an empty directory; refuse a non-empty one (never delete)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} path {path!r} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path):
        raise UserError(f"{what} directory {path!r} is not empty; choose a fresh location")
    os.makedirs(path, exist_ok=True)


def report_device(device_type: str, device_count: int, log=print) -> None:
    """Say which accelerators the step asked for and which TensorFlow sees."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    requested = int(device_count or 0) > 0 and bool(device_type)
    if requested:
        log(f"requested {device_count} x {device_type}; TensorFlow sees {len(gpus)} GPU(s)")
        if not gpus:
            log("warning: no GPU visible to TensorFlow: running on CPU")
    elif gpus:
        log(f"TensorFlow sees {len(gpus)} GPU(s)")


# How long `fetch` waits for an http(s) server.
HTTP_TIMEOUT_S = 60


def fetch(uri: str, target: str, what: str) -> None:
    """Copy the file at ``uri`` (a local path, ``file://``, ``http(s)://``, or any scheme
    TensorFlow's file system reads, e.g. ``gs://``) to ``target``; ``what`` names it in the
    one-line errors."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" not in uri:
        if not os.path.isfile(uri):
            raise UserError(f"{what} file {uri!r} does not exist")
        shutil.copyfile(uri, target)
        return
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(uri, timeout=HTTP_TIMEOUT_S) as response, \
                    open(target, "wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as exc:
            raise UserError(f"cannot download {what} {uri}: {exc}") from None
        return
    import tensorflow as tf

    try:
        tf.io.gfile.copy(uri, target, overwrite=True)
    except (tf.errors.OpError, NotImplementedError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read {what} {uri}: {first}") from None


def normalise_sha256(expected: str, what: str = "expected_sha256") -> str | None:
    """A SHA-256 hex digest in lower case, None for an empty one; a one-line error naming
    ``what`` for anything else."""
    expected = (expected or "").strip().lower()
    if not expected:
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise UserError(f"{what} {expected!r} is not a SHA-256 hex digest (64 hex digits)")
    return expected
