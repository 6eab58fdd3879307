"""Transfer examples crafted once.

A transfer column's adversarial images (``transfer_pgd``, ``transfer_cw``) depend on the
surrogate they are crafted on, the evaluated points and the attack's settings (eps, seed,
batch size), never on the model they are then shown to. A pipeline that evaluates many
students against one surrogate can therefore craft them once, next to the surrogate, and
let every evaluation read them: the evaluation uses them only when everything they depend
on is what it would have used itself (`mismatch`), and otherwise crafts its own.

A bundle is two files in a folder (the surrogate's Model artifact in the pipeline):
``transfer_examples.npz`` (one array per column, the points' order) and
``transfer_examples.json`` (what they were made from, `settings`).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from rslad_tf.common import fileio, vocabulary

FORMAT = "rslad_tf.transfer_examples/1"
ARRAYS_FILE = "transfer_examples.npz"
SETTINGS_FILE = "transfer_examples.json"


def points_sha256(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of the evaluated points (images as float32, labels as int64), in order."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(x, np.float32).tobytes())
    digest.update(np.ascontiguousarray(y, np.int64).tobytes())
    return digest.hexdigest()


def settings(columns, *, x, y, eps: float, seed: int, batch_size: int,
             surrogate_sha256: str) -> dict:
    """What the transfer images of ``columns`` on points ``(x, y)`` depend on: the
    surrogate file, the points, and each column's attack with its eps, seed and batch size
    (`rslad_tf.attacks.PROTOCOL`, so a change to the protocol invalidates old bundles)."""
    from rslad_tf.attacks import PROTOCOL

    attacks = {}
    for column in columns:
        protocol_attack = vocabulary.COLUMNS_BY_KEY[column].transfers
        attacks[column] = dict(PROTOCOL[protocol_attack].describe(float(eps)),
                               protocol_attack=protocol_attack)
    return {"format": FORMAT, "surrogate_sha256": surrogate_sha256,
            "n_examples": int(len(x)), "points_sha256": points_sha256(x, y),
            "eps": float(eps), "seed": int(seed), "batch_size": int(batch_size),
            "attacks": attacks}


def craft(surrogate, x, y, columns, *, eps: float, seed: int,
          batch_size: int) -> dict[str, np.ndarray]:
    """The transfer images of each column, crafted on ``surrogate`` exactly as the suite's
    transfer runner crafts them (`rslad_tf.evaluation.core.adversarial_examples`)."""
    from rslad_tf.attacks import PROTOCOL
    from rslad_tf.evaluation.core import adversarial_examples

    return {column: adversarial_examples(
        surrogate, x, y, attack=PROTOCOL[vocabulary.COLUMNS_BY_KEY[column].transfers],
        eps=float(eps), batch_size=int(batch_size), seed=int(seed)) for column in columns}


def save(folder: str, examples: dict[str, np.ndarray], made_with: dict) -> None:
    """Write a bundle into ``folder`` (created if needed; existing bundle files are
    refused, nothing is overwritten)."""
    os.makedirs(folder, exist_ok=True)
    arrays, info = os.path.join(folder, ARRAYS_FILE), os.path.join(folder, SETTINGS_FILE)
    fileio.refuse_existing(arrays, "folder")
    fileio.refuse_existing(info, "folder")
    with open(arrays, "wb") as f:
        np.savez(f, **examples)
    fileio.write_json(info, dict(made_with, arrays_sha256=fileio.sha256(arrays)))


def load(folder: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(settings, arrays) of the bundle in ``folder``; None when it holds none. A bundle
    whose arrays file changed since it was written counts as none."""
    arrays = os.path.join(folder, ARRAYS_FILE)
    made_with = fileio.read_json_object(os.path.join(folder, SETTINGS_FILE))
    if (made_with is None or not os.path.isfile(arrays)
            or made_with.get("arrays_sha256") != fileio.sha256(arrays)):
        return None
    with np.load(arrays) as data:
        return made_with, {name: data[name] for name in data.files}


def mismatch(made_with: dict, wanted: dict, column: str) -> str | None:
    """Why a bundle made with ``made_with`` cannot stand in for crafting ``column`` with the
    settings ``wanted`` (both from `settings`); None when it can."""
    wanted = json.loads(json.dumps(wanted))  # the form a bundle's JSON reads back in
    for key in ("format", "surrogate_sha256", "points_sha256", "eps", "seed", "batch_size"):
        if made_with.get(key) != wanted.get(key):
            return f"its {key} is {made_with.get(key)!r}, this evaluation's {wanted.get(key)!r}"
    if column not in (made_with.get("attacks") or {}):
        return f"it holds no {column} images"
    if made_with["attacks"][column] != wanted["attacks"][column]:
        return f"its {column} attack settings differ"
    return None
