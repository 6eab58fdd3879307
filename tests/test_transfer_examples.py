"""Transfer images crafted once (`rslad_tf.evaluation.transfer`): the suite's transfer
columns give the same numbers from a bundle as crafting live, the bundle is what they read,
and a bundle made with other settings or altered since is not used."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rslad_tf.common import fileio
from rslad_tf.data import load_numpy
from rslad_tf.evaluation import suite, transfer
from rslad_tf.methods import saving

N = 80
BATCH = 32  # 80 points: two full batches and a padded one
COLUMNS = ["transfer_pgd", "transfer_cw"]
EPS = 0.03  # small enough that the natural target keeps some points


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_digits_model):
    """The target (the session's trained model) and a surrogate (the target with its
    weights perturbed: another model, close enough for transfer to matter), as .keras."""
    import keras

    folder = tmp_path_factory.mktemp("transfer")
    target = str(folder / "target.keras")
    saving.save_model(trained_digits_model, target)
    surrogate = keras.models.clone_model(trained_digits_model)
    rng = np.random.default_rng(0)
    surrogate.set_weights([w + 0.05 * np.std(w) * rng.standard_normal(w.shape).astype(w.dtype)
                           for w in trained_digits_model.get_weights()])
    surrogate_path = str(folder / "surrogate.keras")
    saving.save_model(surrogate, surrogate_path)
    return target, surrogate_path


def _bundle(folder, surrogate_path, *, eps=EPS, seed=0, batch_size=BATCH, examples=None):
    x, y = load_numpy("digits", "test")
    x, y = x[:N], y[:N]
    surrogate = saving.load_model(surrogate_path)
    made_with = transfer.settings(COLUMNS, x=x, y=y, eps=eps, seed=seed, batch_size=batch_size,
                                  surrogate_sha256=fileio.sha256(surrogate_path))
    if examples is None:
        examples = transfer.craft(surrogate, x, y, COLUMNS, eps=eps, seed=seed,
                                  batch_size=batch_size)
    transfer.save(str(folder), examples, made_with)
    return examples




def _evaluate(target, surrogate_path, folder=None, log=None):
    return suite.evaluate(target, attacks=COLUMNS, surrogate=surrogate_path, n_examples=N,
                          batch_size=BATCH, eps=EPS, transfer_examples=folder, sanity_checks=False,
                          log=log)


def test_a_bundle_gives_the_numbers_of_crafting_live(tmp_path, files):
    target, surrogate_path = files
    live = _evaluate(target, surrogate_path)
    _bundle(tmp_path / "b", surrogate_path)
    read = _evaluate(target, surrogate_path, str(tmp_path / "b"))
    for column in COLUMNS:
        key = f"{column}_acc"
        assert read[key] == live[key], column
        assert read["attacks"][column]["crafted"].startswith("before this evaluation")
        assert "crafted" not in live["attacks"][column]
    assert 0 < live["transfer_pgd_acc"] < 100  # the attack does something, not everything


def test_the_bundle_is_what_the_columns_read(tmp_path, files):
    """A bundle with the right settings but other images (the clean ones) changes the
    columns to the clean accuracy: the images are read, not crafted again."""
    target, surrogate_path = files
    x, _ = load_numpy("digits", "test")
    _bundle(tmp_path / "clean", surrogate_path,
            examples={c: x[:N].copy() for c in COLUMNS})
    read = _evaluate(target, surrogate_path, str(tmp_path / "clean"))
    clean = suite.evaluate(target, attacks=["clean"], n_examples=N, batch_size=BATCH,
                           sanity_checks=False)["clean_acc"]
    assert read["transfer_pgd_acc"] == read["transfer_cw_acc"] == clean
    assert clean > _evaluate(target, surrogate_path)["transfer_pgd_acc"]


@pytest.mark.parametrize("change", [dict(eps=0.1), dict(seed=1), dict(batch_size=16)])
def test_a_bundle_made_otherwise_is_not_used(tmp_path, files, change):
    """Other eps, seed or batch size (which decides the random starts): the columns craft
    their own images, say why, and give the live numbers."""
    target, surrogate_path = files
    x, _ = load_numpy("digits", "test")
    _bundle(tmp_path / "other", surrogate_path, examples={c: x[:N].copy() for c in COLUMNS},
            **change)
    lines = []
    read = _evaluate(target, surrogate_path, str(tmp_path / "other"), log=lines.append)
    live = _evaluate(target, surrogate_path)
    assert [read[f"{c}_acc"] for c in COLUMNS] == [live[f"{c}_acc"] for c in COLUMNS]
    key = next(iter(change))
    assert sum(f"do not apply (its {key} is" in line for line in lines) == len(COLUMNS)


def test_another_surrogate_or_an_altered_bundle_is_not_used(tmp_path, files):
    target, surrogate_path = files
    x, _ = load_numpy("digits", "test")
    clean_images = {c: x[:N].copy() for c in COLUMNS}
    live = _evaluate(target, surrogate_path)
    # Made on the target's file instead of the surrogate's.
    _bundle(tmp_path / "wrong", target, examples=clean_images)
    lines = []
    read = _evaluate(target, surrogate_path, str(tmp_path / "wrong"), log=lines.append)
    assert read["transfer_pgd_acc"] == live["transfer_pgd_acc"]
    assert any("its surrogate_sha256 is" in line for line in lines)
    # Arrays changed after the bundle was written: no bundle at all.
    folder = tmp_path / "altered"
    _bundle(folder, surrogate_path)
    with open(folder / transfer.ARRAYS_FILE, "wb") as f:
        np.savez(f, **clean_images)
    assert transfer.load(str(folder)) is None
    assert _evaluate(target, surrogate_path, str(folder))["transfer_pgd_acc"] == \
        live["transfer_pgd_acc"]
    # A folder without a bundle crafts quietly; a second bundle is refused, not overwritten.
    assert transfer.load(str(tmp_path)) is None
    with pytest.raises(Exception, match="exists"):
        _bundle(tmp_path / "wrong", surrogate_path)
    assert os.path.isfile(tmp_path / "wrong" / transfer.SETTINGS_FILE)
