"""Saving and loading `.keras` files.

Loading lives beside the methods because a saved file may hold a method model
(`RSLADModel` and the others are registered Keras classes): importing this module
registers them, so safe-mode loading can find every class the toolkit writes."""

from __future__ import annotations

import os

import keras

from rslad_tf.common.errors import UserError
from rslad_tf.common.fileio import check_keras_archive, sha256, write_atomically


def save_model(model, path: str) -> None:
    """Save a Keras model to ``path`` (a ``.keras`` file) atomically."""
    write_atomically(path, lambda tmp: model.save(tmp), suffix=".keras")


def load_model(path: str, *, what: str = "model", expected_sha256: str | None = None):
    """Load a ``.keras`` file in Keras' safe mode (no arbitrary code from lambdas).

    Raises `UserError` for a missing file, a checksum mismatch, a file that is not a
    ``.keras`` archive (`check_keras_archive`), or one that is not a Keras model.
    """
    if not os.path.isfile(path):
        raise UserError(f"{what} file {path!r} does not exist")
    if expected_sha256 is not None:
        actual = sha256(path)
        if actual.lower() != expected_sha256.lower():
            raise UserError(f"{what} file {path!r} has SHA-256 {actual}, expected "
                            f"{expected_sha256}; refusing to load it")
    check_keras_archive(path, what)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a model file"
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UserError(f"{what} file {path!r} is not a loadable Keras model ({reason})") from None
