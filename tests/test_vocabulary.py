"""The evaluation columns are defined once (rslad_tf.common.vocabulary): every column has a
runner in the suite, a label, a place in the report's table and in the pipeline's steps,
so a new column cannot be half-added; and the eval JSON's typed record reads old files."""

from __future__ import annotations

import json

import pytest

from rslad_tf.common import vocabulary
from rslad_tf.common.errors import UserError
from rslad_tf.evaluation import report, suite
from rslad_tf.evaluation.result import SCHEMA_VERSION, EvalResult


def _every_column_eval(**extra) -> dict:
    accs = {c.json_key: 50.0 + i for i, c in enumerate(vocabulary.EVAL_COLUMNS)}
    return dict({"dataset": "digits", "model": "small_cnn", "method": "rslad",
                 "checkpoint": "best", "eps": 0.2, "n_examples": 8, "attacks": {},
                 "seconds": {}}, **accs, **extra)


def test_every_column_has_one_runner_and_is_accepted():
    assert set(suite.RUNNERS) == set(vocabulary.COLUMN_KEYS)
    for column in vocabulary.EVAL_COLUMNS:
        assert suite.validate_attacks([column.key], surrogate="s.keras") == [column.key]
    assert suite.validate_attacks(list(reversed(vocabulary.COLUMN_KEYS)), "s.keras") == \
        list(vocabulary.COLUMN_KEYS)


def test_columns_have_distinct_keys_labels_and_known_kinds():
    columns = vocabulary.EVAL_COLUMNS
    assert len({c.key for c in columns}) == len({c.label for c in columns}) == len(columns)
    kinds = (vocabulary.CLEAN, vocabulary.WHITE_BOX, vocabulary.TRANSFER, vocabulary.QUERY)
    for column in columns:
        assert column.label and column.kind in kinds
        assert column.json_key == f"{column.key}_acc"
        # A transfer column names the white-box column it crafts on the surrogate.
        if column.kind == vocabulary.TRANSFER:
            assert vocabulary.COLUMNS_BY_KEY[column.transfers].kind == vocabulary.WHITE_BOX
        else:
            assert column.transfers is None


def test_white_box_columns_but_autoattack_are_protocol_settings():
    from rslad_tf.attacks import PROTOCOL

    pgd_engine = [k for k in vocabulary.WHITE_BOX_ATTACKS if k != "autoattack"]
    assert set(pgd_engine) == set(PROTOCOL)
    for key in vocabulary.TRANSFER_COLUMNS:
        assert vocabulary.COLUMNS_BY_KEY[key].transfers in PROTOCOL


def test_every_column_appears_in_the_report_table():
    rows = report.build_table([_every_column_eval()])
    assert list(rows[0]["columns"]) == [c.label for c in vocabulary.EVAL_COLUMNS]
    header = report.render(rows, "md").splitlines()[0]
    for column in vocabulary.EVAL_COLUMNS:
        assert f"| {column.label} |" in header
        assert rows[0]["columns"][column.label]["mean"] == _every_column_eval()[column.json_key]


def test_pipeline_steps_split_the_columns_and_methods_keep_their_order():
    from components.common import BLACKBOX_ATTACKS, WHITEBOX_ATTACKS

    assert WHITEBOX_ATTACKS + BLACKBOX_ATTACKS == vocabulary.COLUMN_KEYS
    assert report.METHOD_ORDER == vocabulary.METHOD_NAMES
    assert report.METHOD_ORDER[:6] == vocabulary.PAPER_METHODS == \
        ("natural", "sat", "trades", "ard", "iad", "rslad")


def test_eval_result_round_trips_and_reads_files_without_a_schema_version():
    data = _every_column_eval(params=100, seed=0, batch_size=64, autoattack_impl="native",
                              checkpoint_path=None, preset="digits-rslad",
                              schema_version=SCHEMA_VERSION)
    record = EvalResult.from_json(data)
    assert record.accuracy["square"] == data["square_acc"]
    assert record.extra == {"preset": "digits-rslad"}
    assert record.to_json() == data
    old = {k: v for k, v in data.items() if k != "schema_version"}
    assert EvalResult.from_json(old).schema_version == 1
    # What the suite writes: its fields, an accuracy per column run, the version.
    written = EvalResult(dataset="digits", model="m", accuracy={"clean": 90.0}).to_json()
    assert written["clean_acc"] == 90.0 and written["schema_version"] == SCHEMA_VERSION
    assert not {"accuracy", "extra", "surrogate", "sanity",
                "autoattack_per_attack"} & set(written)


def test_report_reads_old_files_and_refuses_newer_schemas(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_every_column_eval()))
    assert report.load_evals([str(old)])[0]["clean_acc"] == 50.0
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(_every_column_eval(schema_version=SCHEMA_VERSION + 1)))
    with pytest.raises(UserError, match="schema version"):
        report.load_evals([str(newer)])
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"model": "m", "clean_acc": 1.0}))
    with pytest.raises(UserError, match="missing dataset"):
        report.load_evals([str(missing)])


@pytest.mark.parametrize("module,step", [("components.evaluate_whitebox", "evaluate_whitebox"),
                                         ("components.evaluate_blackbox", "evaluate_blackbox"),
                                         ("components.export_student", "export_student")])
def test_kfp_step_literals_are_the_vocabulary_columns(module, step):
    """kfp runs a wrapper's source alone, so its default is a literal: it must stay the
    columns its function takes from the vocabulary."""
    import importlib
    import inspect

    mod = importlib.import_module(module)
    default = inspect.signature(getattr(mod, step).python_func).parameters["attacks"].default
    assert default == mod.DEFAULT_ATTACKS
    assert set(default.split(",")) <= set(vocabulary.COLUMN_KEYS)
