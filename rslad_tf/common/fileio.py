"""Files that are never half-written: atomic writes, checksums, safe model loading."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from rslad_tf.common.errors import UserError


def output_exists_error(path: str, option: str, error: type = UserError) -> UserError:
    """The one line every command gives when its output ``path`` (chosen by ``option``)
    is taken: ``error``, a `UserError` class."""
    return error(f"{path!r} already exists; choose another {option} (nothing is "
                 "overwritten)")


def refuse_existing(path: str, option: str, error: type = UserError) -> None:
    """The one "nothing is overwritten" check of every command that writes a result:
    raise `output_exists_error` when something already exists at ``path`` (a dangling
    link counts)."""
    if os.path.lexists(path):
        raise output_exists_error(path, option, error)


def holds_something(path: str) -> bool:
    """True when ``path`` is a file (or a link) or a directory with anything in it: the
    test of every output that must be a new or empty directory."""
    return os.path.lexists(path) and (not os.path.isdir(path) or bool(os.listdir(path)))


def write_atomically(path: str, write, suffix: str = "") -> None:
    """Write through ``write(tmp_path)`` to a temporary file beside ``path``, fsync it, then
    rename it over ``path``: a crash leaves either the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, write)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npz(path: str, arrays: dict) -> None:
    """`np.savez` through an open file (it would append ``.npz`` to a bare path)."""
    import numpy as np

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    write_atomically(path, write)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LEGACY_H5_SUFFIXES = (".h5", ".hdf5")


def check_keras_archive(path: str, what: str = "model") -> None:
    """`UserError` naming what ``path`` is when it cannot be a Keras model file: a
    ``.keras`` file is a zip archive holding ``config.json`` (legacy ``.h5`` files are
    left to Keras). Keras itself would report such a file as "File not found"."""
    import zipfile

    if path.lower().endswith(LEGACY_H5_SUFFIXES):
        return
    if not zipfile.is_zipfile(path):
        raise UserError(f"{what} file {path!r} is not a Keras .keras archive (zip); pass a "
                        "model saved with model.save('name.keras')")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"{what} file {path!r} is a damaged zip archive ({exc})") from None
    if "config.json" not in names:
        raise UserError(f"{what} file {path!r} is a zip archive but not a Keras .keras "
                        "archive (no config.json in it)")


def run_config_of(checkpoint: str | None) -> dict | None:
    """The ``config.json`` of the training run a checkpoint lies in
    (``RUN/checkpoints/x.keras``), or None when it lies in no readable run directory."""
    if not checkpoint:
        return None
    return read_json_object(os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))), "config.json"))


def read_json_object(path: str) -> dict | None:
    """The JSON object in the file ``path``; None when the file is missing, unreadable or
    holds something else than an object."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
